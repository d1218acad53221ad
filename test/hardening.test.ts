// Issue #10 on one process (memory broker): every bad input gets its documented answer, every budget is
// finite by default and counted in bytes, tokens follow the policy, and names cannot alias each other.
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { defineMessage, FrameError, memoryBroker, type Broker } from '../lib/index.js'
import type { BrokerDelivery, BrokerSettings } from '../lib/brokers/broker.js'
import { bounded, connect, rejectedUpgrade, sign, startServer, until, type Frame } from './helpers/index.js'

const cjk = (n: number) => '界'.repeat(n)

t.test('#10 disconnectUser: an over-long reason is cut on a character boundary; a bad code rejects and leaves sockets alone', async (t) => {
  const server = await startServer(t, { presence: false })
  const alice = await connect(server, 'alice')
  await alice.join('lobby')
  await t.rejects(server.app.rooms.disconnectUser('alice', 1006, 'x'), { code: 'FST_ROOMS_INVALID_ARGUMENT', statusCode: 400, message: /code must be an integer close code/ })
  await t.rejects(server.app.rooms.disconnectUser('alice', 999.5), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  alice.send({ type: 'ping', id: 'still' })
  t.equal((await alice.nextOfType('pong')).id, 'still', 'the socket is untouched by a refused call')
  await server.app.rooms.disconnectUser('alice', 4001, cjk(50))
  const closed = await alice.closed
  t.same(closed, { code: 4001, reason: cjk(41) }, '41 three-byte characters: 123 bytes, the most a close frame carries')
  await until(() => server.app.rooms.stats().connections === 0, 'the socket is gone from the registry')
  t.same(await server.app.rooms.members('lobby'), [], 'and from presence: no zombie')
})

t.test('#10 ctx.connection.close with a code ws refuses: the handler gets a clear error, the socket is not left half-closed', async (t) => {
  const server = await startServer(t, {
    messages: {
      kick: defineMessage({ schema: Type.Object({}), handler: (ctx) => ctx.connection.close(1006, 'nope') }),
    },
  })
  const alice = await connect(server, 'alice')
  const answer = await alice.request({ type: 'kick', payload: {} })
  t.same(answer.payload.code, 'internal_error')
  t.ok(server.logs.some((line) => line.includes('close code an endpoint may send')), 'the host sees why in its log')
  alice.send({ type: 'ping', id: 'p' })
  t.equal((await alice.nextOfType('pong')).id, 'p')
})

t.test('#10 a broadcast no socket could receive is refused up front: nobody is closed, no seq is used', async (t) => {
  const server = await startServer(t, { presence: false, maxBufferedBytes: 64 * 1024 })
  const alice = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  await alice.join('lobby')
  await bob.join('lobby')
  await t.rejects(server.app.rooms.broadcast('lobby', 'big', { text: 'a'.repeat(70_000) }), { code: 'FST_ROOMS_PAYLOAD_TOO_LARGE', statusCode: 413 })
  // Counted in bytes: 22 000 CJK characters are 66 000 bytes, which a length check would let through.
  await t.rejects(server.app.rooms.broadcast('lobby', 'big', { text: cjk(22_000) }), { code: 'FST_ROOMS_PAYLOAD_TOO_LARGE' })
  await t.rejects(server.app.rooms.sendToUser('bob', 'big', { text: cjk(22_000) }), { code: 'FST_ROOMS_PAYLOAD_TOO_LARGE' })
  t.same(await server.app.rooms.broadcast('lobby', 'small', { text: cjk(100) }), { seq: 1 }, 'the refused publishes used no seq')
  for (const client of [alice, bob]) t.equal((await client.nextOfType('small')).seq, 1)
  t.equal(server.app.rooms.stats().slowConsumerCloses, 0)
  t.equal(server.app.rooms.stats().connections, 2, 'both members still connected')
})

t.test('#10 direct frames count bytes against maxBufferedBytes (a string length would undercount CJK 3×)', async (t) => {
  const server = await startServer(t, {
    maxBufferedBytes: 64 * 1024,
    messages: {
      shout: defineMessage({ schema: Type.Object({ n: Type.Integer() }), handler: (ctx, payload) => ctx.reply('shout', cjk(payload.n)) }),
    },
  })
  const alice = await connect(server, 'alice')
  t.equal((await alice.request({ type: 'shout', payload: { n: 100 } })).type, 'ack')
  t.equal((await alice.nextOfType('shout')).payload, cjk(100))
  const refused = await alice.request({ type: 'shout', payload: { n: 22_000 } })
  t.equal(refused.payload.code, 'internal_error', 'the handler\'s reply threw FST_ROOMS_PAYLOAD_TOO_LARGE')
  t.ok(server.logs.some((line) => line.includes('FST_ROOMS_PAYLOAD_TOO_LARGE')))
  alice.send({ type: 'ping', id: 'alive' })
  t.equal((await alice.nextOfType('pong')).id, 'alive', 'the socket was not closed 1013')
})

t.test('#10 the inbox is bounded in bytes while a handler waits', async (t) => {
  let release: () => void = () => {}
  const gate = new Promise<void>((resolve) => (release = resolve))
  const server = await startServer(t, {
    rateLimit: false,
    maxInboxBytes: 100_000,
    messages: {
      slow: defineMessage({ schema: Type.Object({ pad: Type.String() }), handler: async () => { await gate; return 'done' } }),
    },
  })
  const alice = await connect(server, 'alice')
  const pad = 'p'.repeat(30_000)
  for (let i = 1; i <= 5; i++) alice.send({ type: 'slow', id: i, payload: { pad } })
  // Frame 1 runs; 2, 3 and 4 wait (≈ 90 KB); 5 would pass 100 000 bytes.
  const refused = await alice.next((frame) => frame.id === 5)
  t.same({ type: refused.type, code: refused.payload.code, message: refused.payload.message },
    { type: 'error', code: 'rate_limited', message: 'too many frames waiting for earlier ones to finish' })
  release()
  for (let i = 1; i <= 4; i++) t.same((await alice.next((frame) => frame.id === i)).payload, 'done', `frame ${i} answered`)
})

t.test('#10 the memory broker holds all history to history.maxBytes: oldest rooms lose events first, their resumers get reset', async (t) => {
  const server = await startServer(t, { presence: false, history: { maxEvents: 1000, maxAgeMs: 300_000, maxBytes: 40_000 } })
  const text = 'x'.repeat(2000)
  for (let i = 0; i < 10; i++) await server.app.rooms.broadcast('old', 'chat', { text })
  const oldFull = await server.app.rooms.history('old')
  t.same({ events: oldFull.events.length, complete: oldFull.complete }, { events: 10, complete: true })
  for (let i = 0; i < 15; i++) await server.app.rooms.broadcast('new', 'chat', { text })
  const old = await server.app.rooms.history('old')
  const recent = await server.app.rooms.history('new')
  t.same({ seq: old.seq, complete: old.complete }, { seq: 10, complete: false }, 'the least recently published room gave up its events (its seq stays)')
  t.ok(old.events.length < 10)
  t.same({ events: recent.events.length, complete: recent.complete }, { events: 15, complete: true }, 'the active room keeps all of its history')
  const bytes = (old.events.length + recent.events.length) * 2100
  t.ok(bytes <= 40_000, `held ≈${bytes} bytes of frames, within the budget`)
  const resumer = await connect(server, 'alice')
  const ack = await resumer.request({ type: 'resume', payload: { rooms: { old: { seq: 0, epoch: old.epoch } } } })
  t.equal(ack.payload.rooms.old.result, 'reset')
  t.same((await resumer.nextOfType('reset')).payload, { seq: 10, epoch: old.epoch })
})

t.test('#10 maxConnectionsPerUser is finite by default (16)', async (t) => {
  const server = await startServer(t)
  const sockets = []
  for (let i = 0; i < 16; i++) sockets.push(await connect(server, 'alice'))
  const refused = await rejectedUpgrade(server, 'alice')
  t.equal(refused.status, 503)
  t.match(JSON.parse(refused.body), { message: 'Service unavailable: connection limit for this user reached' })
  await connect(server, 'bob')
})

t.test('#10 metric labels never come from the client: a peer\'s odd close code counts as other', async (t) => {
  const server = await startServer(t, { metrics: true })
  const alice = await connect(server, 'alice')
  alice.ws.close(4321)
  await alice.closed
  const bob = await connect(server, 'bob')
  bob.ws.close(1000)
  await bob.closed
  await until(() => server.app.rooms.stats().connections === 0)
  t.same(server.app.rooms.stats().closes, { 1000: 1, other: 1 })
  const { body } = await server.app.rooms.metrics()
  t.match(body, /rooms_closes_total\{code="other"\} 1/)
  t.notMatch(body, /4321/)
})

t.test('#10 frames are bounded in depth and keys before they are parsed; the byte rate is budgeted too', async (t) => {
  let runs = 0
  const server = await startServer(t, {
    rateLimit: { messagesPerSecond: 1000, burst: 1000, bytesPerSecond: 1, burstBytes: 65_536 },
    messages: { any: defineMessage({ schema: Type.Object({ value: Type.Unknown() }), handler: () => ++runs }) },
  })
  const alice = await connect(server, 'alice')
  const deep = '{"value":' + '['.repeat(40) + ']'.repeat(40) + '}'
  alice.send(`{"type":"any","id":"deep","payload":${deep}}`)
  const deepError = await alice.nextOfType('error')
  t.same(deepError.payload, { code: 'invalid_message', message: 'frame is nested deeper than 32 levels' })
  const keys: Record<string, number> = {}
  for (let i = 0; i < 2000; i++) keys[`k${i}`] = i
  alice.send({ type: 'any', id: 'wide', payload: { value: keys } })
  const wideError = await alice.nextOfType('error')
  t.same(wideError.payload, { code: 'invalid_message', message: 'frame has more than 1000 keys and array elements' })
  t.equal(runs, 0, 'no handler ran')
  // The byte bucket: 65 536 bytes at once, refilled at 1 byte/s. The two refused frames above used ~28 KB.
  alice.send({ type: 'any', id: 'fits', payload: { value: 'a'.repeat(3000) } })
  const fits = await alice.next((frame) => frame.id === 'fits')
  t.equal(fits.type, 'ack')
  alice.send({ type: 'any', id: 'over', payload: { value: 'a'.repeat(40_000) } })
  const over = await alice.next((frame) => frame.type === 'error' && frame.payload.code === 'rate_limited')
  t.same([over.payload.code, over.id], ['rate_limited', undefined], 'the byte budget is spent (a frame this large is refused unread, so without its id)')
  t.notOk(server.logs.some((line) => JSON.parse(line).level >= 50), 'client-caused failures are not logged as errors')
})

t.test('#10 tokens: exp required by default, lifetime bounded, a refresh cannot remove the deadline', async (t) => {
  const server = await startServer(t)
  const now = Math.floor(Date.now() / 1000)
  const noExp = await rejectedUpgrade(server, 'alice', { token: sign('alice', { exp: undefined }) })
  t.same([noExp.status, JSON.parse(noExp.body).message], [401, "Unauthorized: token has no exp (sign tokens with an expiry, e.g. @fastify/jwt's sign: { expiresIn: '15m' }, or set token.requireExp: false)"])
  const farAway = await rejectedUpgrade(server, 'alice', { token: sign('alice', { exp: now + 100 * 365 * 86_400 }) })
  t.same([farAway.status, JSON.parse(farAway.body).message], [401, 'Unauthorized: token exp is further away than the server allows'])
  const alice = await connect(server, 'alice', { token: sign('alice', { exp: now + 60 }) })
  const refresh = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: undefined }) } })
  t.same(refresh.payload, { code: 'forbidden', message: "token has no exp (sign tokens with an expiry, e.g. @fastify/jwt's sign: { expiresIn: '15m' }, or set token.requireExp: false)" })
  const longer = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: now + 400 * 86_400 }) } })
  t.same(longer.payload.code, 'forbidden', 'nor extend it past token.maxLifetimeMs')
  const fine = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: now + 120 }) } })
  t.same(fine.payload, { exp: now + 120 })
})

t.test('#10 token.requireExp: false admits a token without exp, for token.maxLifetimeMs at most', async (t) => {
  const server = await startServer(t, { token: { requireExp: false, maxLifetimeMs: 60_000 } })
  const before = Math.floor(Date.now() / 1000)
  const alice = await connect(server, 'alice', { token: sign('alice', { exp: undefined }) })
  const answer = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: undefined }) } })
  t.ok(answer.payload.exp >= before + 59 && answer.payload.exp <= before + 61, `the deadline is about a minute away (${answer.payload.exp - before} s)`)
})

t.test('#10 an auth refresh that drops a role leaves the rooms authorizeJoin now refuses, each named in a left frame', async (t) => {
  const server = await startServer(t, {
    presence: false,
    userFromToken: (payload) => ({ id: payload.sub as string, roles: payload.roles as string[] }),
    authorizeJoin: (user, room) => !room.startsWith('admin:') || (user.roles as string[] | undefined)?.includes('admin') === true,
    messages: { post: defineMessage({ schema: Type.Object({}), room: true, handler: () => 'posted' }) },
  })
  const alice = await connect(server, 'alice', { token: sign('alice', { roles: ['admin'] }) })
  await alice.join('admin:ops')
  await alice.join('admin:audit')
  await alice.join('lobby')
  const ack = await alice.request({ type: 'auth', payload: { token: sign('alice', { roles: [] }) } })
  t.equal(ack.type, 'ack')
  const left = alice.frames.filter((frame) => frame.type === 'left')
  t.same(left.map((frame) => ({ room: frame.room, payload: frame.payload })), [
    { room: 'admin:ops', payload: { reason: 'forbidden' } },
    { room: 'admin:audit', payload: { reason: 'forbidden' } },
  ], 'each refused room named before the ack')
  t.same((await alice.request({ type: 'post', room: 'admin:ops', payload: {} })).payload.code, 'not_in_room')
  t.same((await alice.request({ type: 'post', room: 'lobby', payload: {} })).payload, 'posted', 'rooms still allowed are kept')
  t.same(await server.app.rooms.members('admin:ops'), [])
})

t.test('#10 resume authorizes before it reads anything: a refused room reveals no seq', async (t) => {
  const server = await startServer(t, { presence: false, authorizeJoin: (_user, room) => room !== 'secret' })
  for (let i = 0; i < 6; i++) await server.app.rooms.broadcast('secret', 'note', { i })
  const { epoch } = await server.app.rooms.history('secret')
  const mallory = await connect(server, 'mallory')
  const answer = await mallory.request({ type: 'resume', payload: { rooms: { secret: { seq: 99, epoch } } } })
  t.same(answer.type, 'ack', 'no whole-frame error that would quote the room\'s seq')
  t.same(answer.payload.rooms.secret, { result: 'error', code: 'forbidden', message: 'not allowed to join "secret"' })
  t.notOk(JSON.stringify(mallory.frames).includes('its seq'), 'nothing about the room was sent')
})

t.test('#10 names that are not well-formed text or hold control characters are refused everywhere', async (t) => {
  const server = await startServer(t, { presence: false })
  const alice = await connect(server, 'alice')
  for (const room of ['team:\ud800', 'a\nb', 'bell\u0007']) {
    const answer = await alice.request({ type: 'join', room })
    t.same(answer.payload.details, { errors: [{ path: '/room', message: 'must be well-formed text without control characters' }] }, JSON.stringify(room))
  }
  t.same((await alice.request({ type: 'join', room: 'team:\ufffd' })).type, 'ack', 'U+FFFD itself is a fine character')
  await t.rejects(server.app.rooms.broadcast('team:\ud800', 'note', {}), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(server.app.rooms.sendToUser('victim\nother', 'note', {}), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(server.app.rooms.disconnectUser('victim2\n4000'), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(server.app.rooms.broadcast('lobby', 'note', {}, { except: 'a\nb' }), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /except/ })
  for (const sub of ['eve\n', 'eve\ud800', '']) {
    t.equal((await rejectedUpgrade(server, sub, { token: sign(sub) })).status, 401, `sub ${JSON.stringify(sub)} → 401`)
  }
})

t.test('#10 broadcast idempotencyKey: the same key publishes once and resolves the first seq', async (t) => {
  const server = await startServer(t, { presence: false })
  const alice = await connect(server, 'alice')
  await alice.join('orders')
  const first = await server.app.rooms.broadcast('orders', 'paid', { order: 7 }, { idempotencyKey: 'pay-7' })
  const retried = await server.app.rooms.broadcast('orders', 'paid', { order: 7 }, { idempotencyKey: 'pay-7' })
  const other = await server.app.rooms.broadcast('orders', 'paid', { order: 8 }, { idempotencyKey: 'pay-8' })
  t.same([first, retried, other], [{ seq: 1 }, { seq: 1 }, { seq: 2 }])
  t.equal((await alice.nextOfType('paid')).seq, 1)
  t.equal((await alice.nextOfType('paid')).seq, 2)
  t.equal(alice.frames.filter((frame) => frame.type === 'paid').length, 2, 'the retry delivered nothing')
  t.same(await server.app.rooms.broadcast('elsewhere', 'paid', {}, { idempotencyKey: 'pay-7' }), { seq: 1 }, 'keys are per room')
})

t.test('#10 a handler that throws a FrameError or fails on input is answered without an error-level log', async (t) => {
  const server = await startServer(t, {
    messages: { refuse: defineMessage({ schema: Type.Unknown(), handler: () => { throw new FrameError('nope', 'refused') } }) },
  })
  const alice = await connect(server, 'alice')
  t.same((await alice.request({ type: 'refuse', payload: {} })).payload, { code: 'nope', message: 'refused' })
  // Deep enough to overflow JSON.stringify in the retry fingerprint, had it been parsed.
  alice.send('{"type":"refuse","id":"deep","payload":' + '['.repeat(20_000) + ']'.repeat(20_000) + '}')
  t.same((await alice.nextOfType('error')).payload.code, 'invalid_message')
  t.notOk(server.logs.some((line) => JSON.parse(line).level >= 50))
})

t.test('#10 a raw socket that joins and is reset at once never leaves a ghost', async (t) => {
  const server = await startServer(t)
  const observer = await connect(server, 'observer')
  await observer.join('lobby')
  for (let i = 0; i < 20; i++) {
    const ws = new WebSocket(`${server.url}/ws`, { headers: { authorization: `Bearer ${sign('ghost')}` }, origin: 'http://app.test' })
    await bounded(new Promise((resolve) => ws.once('open', resolve)), 'a ghost socket opening')
    ws.send(JSON.stringify({ type: 'join', id: 1, room: 'lobby' }))
    ws.terminate()
  }
  await until(() => server.app.rooms.stats().connections === 1, 'the 20 sockets are gone')
  const presence: Frame[] = []
  await until(() => {
    presence.splice(0, presence.length, ...observer.frames.filter((frame) => frame.type === 'presence' && frame.payload.user.id === 'ghost'))
    return presence.length % 2 === 0
  }, 'every join announced has its leave')
  presence.forEach((frame, i) => t.equal(frame.payload.action, i % 2 === 0 ? 'join' : 'leave', `presence ${i} in order`))
  t.same(await server.app.rooms.members('lobby'), [{ id: 'observer' }])
})

t.test('#10 a live stream that lags behind history (as Redis pub/sub can) never sends a resumed or joined socket a seq twice', async (t) => {
  const inner = memoryBroker()
  let lagging: Array<() => void> | undefined
  const methods = ['publish', 'position', 'peekPosition', 'history', 'subscribe', 'unsubscribe', 'presenceJoin', 'presenceLeave', 'presence', 'rooms', 'sendToUser', 'changeMembership', 'disconnectUser', 'close'] as const
  const broker = Object.fromEntries(methods.map((method) => [method, (...args: unknown[]) => (inner[method] as (...a: unknown[]) => unknown)(...args)])) as unknown as Broker
  Object.assign(broker, {
    name: 'lagging',
    start: (delivery: BrokerDelivery, settings: BrokerSettings) => inner.start({
      ...delivery,
      roomEvent: (...args: Parameters<BrokerDelivery['roomEvent']>) => {
        if (lagging === undefined) delivery.roomEvent(...args)
        else lagging.push(() => delivery.roomEvent(...args))
      },
      userMessage: delivery.userMessage.bind(delivery),
      userDisconnect: delivery.userDisconnect.bind(delivery),
      roomReset: delivery.roomReset.bind(delivery),
      presenceChanged: delivery.presenceChanged.bind(delivery),
      serverMembership: delivery.serverMembership.bind(delivery),
    }, settings),
  })
  const server = await startServer(t, { presence: false, broker })
  const first = await connect(server, 'alice')
  const { payload: joined } = await first.join('feed')
  for (let i = 1; i <= 3; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  await until(() => first.frames.filter((frame) => frame.type === 'item').length === 3)
  lagging = []
  for (let i = 4; i <= 6; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  const resumer = await connect(server, 'alice')
  const resumed = await resumer.request({ type: 'resume', payload: { rooms: { feed: { seq: 3, epoch: joined.epoch } } } })
  t.same(resumed.payload.rooms.feed, { result: 'replayed', seq: 6, epoch: joined.epoch, replayed: 3 })
  const joiner = await connect(server, 'bob')
  t.equal((await joiner.join('feed')).payload.seq, 6)
  const late = lagging
  lagging = undefined
  for (const deliver of late) deliver()
  await server.app.rooms.broadcast('feed', 'item', { i: 7 })
  await resumer.next((frame) => frame.seq === 7)
  await joiner.next((frame) => frame.seq === 7)
  t.same(resumer.frames.filter((frame) => frame.type === 'item').map((frame) => frame.seq), [4, 5, 6, 7], 'the replay, then only newer live events')
  t.same(joiner.frames.filter((frame) => frame.type === 'item').map((frame) => frame.seq), [7], 'after the ack, only seq > ack.seq')
  t.same(first.frames.filter((frame) => frame.type === 'item').map((frame) => frame.seq), [1, 2, 3, 4, 5, 6, 7], 'a member without a fence gets the late events')
})

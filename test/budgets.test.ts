// Every budget a client can fill is finite by default and counted in bytes where bytes grow: a broadcast
// no socket could receive, direct frames, the inbox, history, sockets per user, frame shape and rate,
// metric labels.
import t from 'tap'
import { TokenBucket } from '../lib/socket/token-bucket.js'
import { connect, startServer, until, rejectedUpgrade } from './helpers/index.js'
import Type from 'typebox'
import { defineMessage } from '../lib/index.js'

const cjk = (n: number) => '界'.repeat(n)

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

t.test('#11 the token bucket never holds more than its burst, however long it was idle', async (t) => {
  const bucket = new TokenBucket(10, 5)
  const start = Date.now()
  for (let i = 0; i < 5; i++) t.ok(bucket.take(start), `take ${i + 1} of the burst`)
  t.notOk(bucket.take(start), 'the sixth at once is refused')
  // An hour idle would refill 36000 tokens without the cap.
  const later = start + 3_600_000
  for (let i = 0; i < 5; i++) t.ok(bucket.take(later))
  t.notOk(bucket.take(later), 'still only the burst after a long idle')
  t.ok(bucket.take(later + 100), 'one token per 100 ms at 10/s')
  t.notOk(bucket.take(later + 100))
  t.notOk(bucket.take(later + 100, 2), 'an amount larger than what is there is refused whole')
})

// Issue #13: hooks (onConnect before the first frame, onDisconnect once) and server-side joins and leaves,
// with the memory broker and across two processes on Redis.
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { redisBroker } from '../lib/brokers/redis.js'
import { createClient } from '../lib/client/index.js'
import { defineMessage, ErrorCode, FrameError, type RoomsOptions } from '../lib/index.js'
import { componentAvailable } from './helpers/components.js'
import { bounded, Client, connect, ORIGIN, sign, startServer, until } from './helpers/index.js'
import { startProxy } from './helpers/proxy.js'
import { redisMissing, startRedis } from './helpers/redis.js'

const record = (log: string[]) => defineMessage({ schema: Type.Object({ n: Type.Number() }), handler: (_ctx, payload) => { log.push(`frame ${payload.n}`); return payload.n } })

t.test('#13 onConnect runs after admission and before the first frame; frames sent meanwhile wait, in order', async (t) => {
  const log: string[] = []
  let release!: () => void
  const gate = new Promise<void>((resolve) => (release = resolve))
  const server = await startServer(t, {
    presence: false,
    messages: { note: record(log) },
    onConnect: async (ctx) => {
      log.push(`connect ${ctx.user.id}`)
      await gate
      log.push('connect done')
    },
  })
  const client = await connect(server, 'alice')
  for (let n = 1; n <= 3; n++) client.send({ type: 'note', id: n, payload: { n } })
  await until(() => log.length === 1, 'onConnect started')
  t.same(log, ['connect alice'], 'no frame ran while onConnect runs')
  release()
  for (let n = 1; n <= 3; n++) t.equal((await client.next((frame) => frame.id === n, `ack ${n}`)).payload, n)
  t.same(log, ['connect alice', 'connect done', 'frame 1', 'frame 2', 'frame 3'])
})

t.test('#13 onConnect may join rooms server-side: a joined frame with the position, then the room\'s events', async (t) => {
  const server = await startServer(t, {
    presence: false,
    authorizeJoin: () => false, // not consulted for server-side joins
    onConnect: async (ctx) => { await ctx.join(`user:${ctx.user.id}`) },
  })
  const client = await connect(server, 'alice')
  const joined = await client.nextOfType('joined')
  t.match(joined, { type: 'joined', room: 'user:alice', payload: { seq: 0 } })
  t.type(joined.payload.epoch, 'string')
  t.same(await server.app.rooms.broadcast('user:alice', 'notice', { n: 1 }), { seq: 1 })
  t.match(await client.nextOfType('notice'), { room: 'user:alice', seq: 1, payload: { n: 1 } })
  t.equal((await client.request({ type: 'join', room: 'user:bob' })).payload.code, 'forbidden', 'authorizeJoin still guards client joins')
})

t.test('#13 onConnect failures: a FrameError closes 1008 with its message, a throw or a hang 1011; others carry on', async (t) => {
  const server = await startServer(t, {
    hookTimeoutMs: 200,
    onConnect: async (ctx) => {
      if (ctx.user.id === 'banned') throw new FrameError(ErrorCode.forbidden, 'you are banned')
      if (ctx.user.id === 'buggy') throw new Error('hook bug')
      if (ctx.user.id === 'stuck') await new Promise(() => {})
    },
  })
  const fine = await connect(server, 'fine')
  t.same(await (await connect(server, 'banned')).closed, { code: 1008, reason: 'you are banned' })
  t.same(await (await connect(server, 'buggy')).closed, { code: 1011, reason: 'internal error' })
  t.same(await (await connect(server, 'stuck')).closed, { code: 1011, reason: 'internal error' })
  t.ok(server.logs.some((line) => line.includes('onConnect failed') && line.includes('hook bug')))
  t.ok(server.logs.some((line) => line.includes('onConnect did not finish in time')))
  fine.send({ type: 'ping', id: 'p' })
  t.equal((await fine.nextOfType('pong')).id, 'p', 'another socket is unaffected')
})

t.test('#13 onDisconnect runs once per socket with the close code; a throwing or hanging one is contained', async (t) => {
  const closes: Array<[string, number, string]> = []
  const server = await startServer(t, {
    hookTimeoutMs: 200,
    onDisconnect: async (ctx, { code, reason }) => {
      closes.push([ctx.user.id, code, reason])
      if (ctx.user.id === 'thrower') throw new Error('disconnect bug')
      if (ctx.user.id === 'hanger') await new Promise(() => {})
    },
  })
  const alice = await connect(server, 'alice')
  await alice.close(4000)
  await until(() => closes.length === 1, 'onDisconnect ran')
  t.same(closes, [['alice', 4000, '']])
  await (await connect(server, 'thrower')).close(1000)
  await (await connect(server, 'hanger')).close(1000)
  await until(() => closes.length === 3, 'both ran')
  await until(() => server.logs.some((line) => line.includes('onDisconnect failed')) && server.logs.some((line) => line.includes('onDisconnect did not finish in time')), 'both logged')
  const bob = await connect(server, 'bob')
  await server.app.rooms.disconnectUser('bob', 4001, 'bye')
  await bob.closed
  await until(() => closes.length === 4, 'the server-initiated close too')
  t.same(closes.at(-1), ['bob', 4001, 'bye'])
})

t.test('#13 fastify.rooms.join/leave by user and by connection, authorizeJoin not consulted; bad targets refused', async (t) => {
  const server = await startServer(t, { presence: false, authorizeJoin: () => false })
  const a1 = await connect(server, 'alice')
  const a2 = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  await server.app.rooms.join({ userId: 'alice' }, 'vip')
  for (const socket of [a1, a2]) t.match(await socket.nextOfType('joined'), { room: 'vip', payload: { seq: 0 } })
  const bobId = (bob.frames[0]!.payload as { connectionId: string }).connectionId
  await server.app.rooms.join({ connectionId: bobId }, 'vip')
  t.match(await bob.nextOfType('joined'), { room: 'vip' })
  t.same(await server.app.rooms.broadcast('vip', 'perk', { n: 1 }), { seq: 1 })
  for (const socket of [a1, a2, bob]) t.match(await socket.nextOfType('perk'), { seq: 1 })
  await server.app.rooms.leave({ userId: 'alice' }, 'vip')
  for (const socket of [a1, a2]) t.match(await socket.nextOfType('left'), { room: 'vip', payload: { reason: 'server' } })
  await server.app.rooms.broadcast('vip', 'perk', { n: 2 })
  t.match(await bob.next((frame) => frame.type === 'perk' && frame.seq === 2, 'perk 2'), { seq: 2 })
  t.equal(a1.frames.filter((frame) => frame.type === 'perk').length, 1, 'alice left: no second perk')
  for (const target of [{}, { userId: '' }, { connectionId: 'x\n' }, { userId: 'a', connectionId: 'b' }, null]) {
    await t.rejects(server.app.rooms.join(target as never, 'vip'), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  }
  await t.rejects(server.app.rooms.join({ userId: 'alice' }, ''), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
})

class OriginWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

/** Our client for alice, through a proxy the test can cut, reconnecting at once. */
async function aliceBehindProxy (t: { teardown(fn: () => unknown): void }, port: number) {
  const proxy = await startProxy(port)
  t.teardown(() => proxy.close())
  const client = createClient({ url: `ws://127.0.0.1:${proxy.port}/ws`, getToken: () => sign('alice'), WebSocket: OriginWebSocket, backoff: { initialMs: 5, maxMs: 20 } })
  t.teardown(() => client.close())
  return { proxy, client }
}

t.test('#13 the client tracks a server-joined room and resumes it after a reconnect, with no gap', async (t) => {
  const server = await startServer(t, { presence: false, handshakeRateLimit: false, onConnect: async (ctx) => { if (ctx.user.id === 'alice') await ctx.join('feed') } })
  const { proxy, client } = await aliceBehindProxy(t, server.port)
  const seqs: number[] = []
  client.on('tick', (frame) => seqs.push(frame.seq!))
  await bounded(new Promise((resolve) => client.on('joined', resolve)), 'the joined frame')
  t.same(client.rooms, ['feed'])
  await server.app.rooms.broadcast('feed', 'tick', {})
  await until(() => seqs.length === 1)
  proxy.cut()
  await server.app.rooms.broadcast('feed', 'tick', {})
  await server.app.rooms.broadcast('feed', 'tick', {})
  await until(() => seqs.length === 3, 'the missed ticks after the reconnect')
  t.same(seqs, [1, 2, 3], 'each tick once, in order')
  t.same(client.position('feed')?.seq, 3)
})

t.test('chaos finding: our client never shows a gap before the reset that explains it (onConnect re-joins and publishes before the resume is read)', async (t) => {
  let reconnects = 0
  const server = await startServer(t, {
    presence: false,
    handshakeRateLimit: false,
    onConnect: async (ctx) => {
      await ctx.join('feed')
      // A live event to the re-joined socket before its resume is read: the server must answer the resume with a reset.
      if (reconnects++ > 0) await ctx.rooms.broadcast('feed', 'tick', {})
    },
  })
  const { proxy, client } = await aliceBehindProxy(t, server.port)
  const seen: string[] = []
  client.on('tick', (frame) => seen.push(`tick ${frame.seq}`))
  client.on('reset', (reset) => seen.push(`reset ${reset.seq}`))
  await bounded(new Promise((resolve) => client.on('joined', resolve)), 'the joined frame')
  await server.app.rooms.broadcast('feed', 'tick', {})
  await until(() => seen.length === 1)
  proxy.cut()
  // Missed while offline; on the reconnect onConnect publishes seq 4 to the re-joined socket at once.
  await server.app.rooms.broadcast('feed', 'tick', {})
  await server.app.rooms.broadcast('feed', 'tick', {})
  await until(() => seen.includes('reset 4'), 'the resume answered with a reset')
  await server.app.rooms.broadcast('feed', 'tick', {})
  await until(() => seen.includes('tick 5'))
  t.same(seen, ['tick 1', 'reset 4', 'tick 5'], 'seq 4 (past the gap) is covered by the reset, never shown before it')
  t.same(client.position('feed')?.seq, 5)
})

t.test('#13 raw protocol: a resume of a room onConnect re-joined replays exactly what the socket missed', async (t) => {
  const server = await startServer(t, { presence: false, onConnect: async (ctx) => { await ctx.join('feed') } })
  const first = await connect(server, 'alice')
  const { epoch } = (await first.nextOfType('joined')).payload as { epoch: string }
  for (let n = 1; n <= 3; n++) await server.app.rooms.broadcast('feed', 'tick', { n })
  await first.next((frame) => frame.seq === 3, 'seq 3')
  await first.close(1000)
  for (let n = 4; n <= 5; n++) await server.app.rooms.broadcast('feed', 'tick', { n })
  const second = await connect(server, 'alice')
  second.send({ type: 'resume', id: 'r', payload: { rooms: { feed: { seq: 3, epoch } } } })
  const answer = await second.next((frame) => frame.id === 'r', 'the resume answer')
  t.match(answer.payload, { rooms: { feed: { result: 'replayed', seq: 5, replayed: 2 } } })
  await server.app.rooms.broadcast('feed', 'tick', { n: 6 })
  await second.next((frame) => frame.seq === 6, 'seq 6')
  t.same(second.frames.filter((frame) => frame.type === 'tick').map((frame) => frame.seq), [4, 5, 6], 'each missed seq once, in order, then live')
  t.match(second.frames.find((frame) => frame.type === 'joined'), { room: 'feed', payload: { seq: 5, epoch } })
})

if (componentAvailable(t, redisMissing(), 'Redis lifecycle')) {
  t.test('#13 Redis: a server-side join by user reaches the user\'s sockets on both processes; leave too', async (t) => {
    const redis = await startRedis(t)
    const options: Partial<RoomsOptions> = { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) }
    const a = await startServer(t, options)
    const b = await startServer(t, { ...options, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const onA: Client = await connect(a, 'alice')
    const onB: Client = await connect(b, 'alice')
    await a.app.rooms.join({ userId: 'alice' }, 'vip')
    for (const socket of [onA, onB]) t.match(await socket.nextOfType('joined'), { room: 'vip', payload: { seq: 0 } })
    await b.app.rooms.broadcast('vip', 'perk', {})
    for (const socket of [onA, onB]) t.match(await socket.nextOfType('perk'), { seq: 1 })
    const onBId = (onB.frames[0]!.payload as { connectionId: string }).connectionId
    await a.app.rooms.leave({ connectionId: onBId }, 'vip')
    t.match(await onB.nextOfType('left'), { room: 'vip', payload: { reason: 'server' } })
    await a.app.rooms.broadcast('vip', 'perk', {})
    t.match(await onA.next((frame) => frame.type === 'perk' && frame.seq === 2, 'perk 2 on A'), { seq: 2 })
    t.equal(onB.frames.filter((frame) => frame.type === 'perk').length, 1, 'B\'s socket left')
  })

  t.test('#13 Redis: a room joined server-side survives a reconnect to the other process, resumed with no gap', async (t) => {
    const redis = await startRedis(t)
    const a = await startServer(t, { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const b = await startServer(t, { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const onA = await connect(a, 'alice')
    await b.app.rooms.join({ userId: 'alice' }, 'orders')
    const { seq, epoch } = (await onA.nextOfType('joined')).payload as { seq: number; epoch: string }
    await b.app.rooms.broadcast('orders', 'order', { n: 1 })
    await onA.next((frame) => frame.type === 'order', 'order 1')
    await onA.close(1001)
    await a.app.rooms.broadcast('orders', 'order', { n: 2 })
    const onB = await connect(b, 'alice')
    onB.send({ type: 'resume', id: 'r', payload: { rooms: { orders: { seq: seq + 1, epoch } } } })
    t.match((await onB.next((frame) => frame.id === 'r', 'resume answer')).payload, { rooms: { orders: { result: 'replayed', replayed: 1 } } })
    t.same(onB.frames.filter((frame) => frame.type === 'order').map((frame) => frame.payload), [{ n: 2 }], 'the missed order, once')
  })
}

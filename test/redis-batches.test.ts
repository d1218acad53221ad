// The Redis broker's publishes of one event-loop turn travel as one script call per group (every room on one
// Redis, each room on a cluster), with one fan-out message per room: seqs, order, idempotency and history
// stay exactly as they were one publish at a time.
import { Redis } from 'ioredis'
import t from 'tap'
import { redisBroker } from '../lib/brokers/redis.js'
import { MAX_BATCH_EVENTS } from '../lib/brokers/redis/publish-batches.js'
import { connect, range, seqsOf, startServer, until, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { redisMissing, startRedis, type RedisServer } from './helpers/redis.js'
import { startRedisCluster } from './helpers/redis-cluster.js'

async function instance (t: Parameters<typeof startServer>[0], redis: RedisServer, options: Parameters<typeof startServer>[1] = {}): Promise<TestServer> {
  return startServer(t, { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }), ...options })
}

async function scriptCalls (redis: Redis): Promise<number> {
  const stats = String(await redis.info('commandstats'))
  return Number(/cmdstat_evalsha:calls=(\d+)/.exec(stats)?.[1] ?? 0) + Number(/cmdstat_eval:calls=(\d+)/.exec(stats)?.[1] ?? 0)
}

if (componentAvailable(t, redisMissing(), 'Redis publish batches')) {
  t.test('#26 one turn\'s broadcasts to three rooms are one script call; each room\'s seqs are exact and in call order on both processes', async (t) => {
    const redis = await startRedis(t)
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const a = await instance(t, redis)
    const b = await instance(t, redis)
    const alice = await connect(a, 'alice')
    const bob = await connect(b, 'bob')
    for (const room of ['r1', 'r2', 'r3']) {
      await alice.join(room)
      await bob.join(room)
    }
    await a.app.rooms.broadcast('r1', 'n', { i: 0 })
    await inspect.config('RESETSTAT')
    const published = await Promise.all(range(1, 30).map((i) => a.app.rooms.broadcast(`r${(i % 3) + 1}`, 'n', { i })))
    t.equal(await scriptCalls(inspect), 1, '30 publishes, one script call')
    t.same(published.filter((_, index) => (index + 1) % 3 === 0).map((position) => position.seq), range(2, 11), 'r1: seqs after the first one, in call order')
    t.same(published.filter((_, index) => (index + 1) % 3 === 1).map((position) => position.seq), range(1, 10), 'r2')
    for (const client of [alice, bob]) {
      await until(() => seqsOf(client, 'n').length === 31, '31 events')
      t.same(seqsOf(client, 'n', 'r1'), range(1, 11))
      t.same(client.frames.filter((frame) => frame.room === 'r2').map((frame) => frame.payload.i), [1, 4, 7, 10, 13, 16, 19, 22, 25, 28], 'payloads in call order')
      t.same(seqsOf(client, 'n', 'r3'), range(1, 10))
    }
  })

  t.test('#26 idempotency inside a batch: a key twice in one turn publishes once; a key used before returns its first position', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    const alice = await connect(a, 'alice')
    await alice.join('r')
    const before = await a.app.rooms.broadcast('r', 'n', { i: 'before' }, { idempotencyKey: 'k0' })
    const [first, plain, again, old] = await Promise.all([
      a.app.rooms.broadcast('r', 'n', { i: 'first' }, { idempotencyKey: 'k1' }),
      a.app.rooms.broadcast('r', 'n', { i: 'plain' }),
      a.app.rooms.broadcast('r', 'n', { i: 'again' }, { idempotencyKey: 'k1' }),
      a.app.rooms.broadcast('r', 'n', { i: 'old' }, { idempotencyKey: 'k0' }),
    ])
    t.same([before.seq, first.seq, plain.seq, again.seq, old.seq], [1, 2, 3, 2, 1])
    await a.app.rooms.broadcast('r', 'n', { i: 'last' })
    await until(() => seqsOf(alice, 'n').length === 4, 'four events')
    t.same(alice.frames.filter((frame) => frame.type === 'n').map((frame) => [frame.seq, frame.payload.i]), [[1, 'before'], [2, 'first'], [3, 'plain'], [4, 'last']], 'duplicates publish nothing')
  })

  t.test('#26 more than a batch holds in one turn: several calls, every seq once and in order', async (t) => {
    const redis = await startRedis(t)
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const a = await instance(t, redis)
    const alice = await connect(a, 'alice')
    await alice.join('r')
    await a.app.rooms.broadcast('r', 'n', { i: 0 })
    await inspect.config('RESETSTAT')
    const count = MAX_BATCH_EVENTS * 2 + 10
    const published = await Promise.all(range(1, count).map((i) => a.app.rooms.broadcast('r', 'n', { i })))
    t.same(published.map((position) => position.seq), range(2, count + 1))
    t.equal(await scriptCalls(inspect), 3, 'full batches go at once, the rest at the end of the turn')
    await until(() => seqsOf(alice, 'n').length === count + 1, 'every event')
    t.same(seqsOf(alice, 'n'), range(1, count + 1))
    t.same(alice.frames.filter((frame) => frame.type === 'n').map((frame) => frame.payload.i), range(0, count))
  })

  t.test('#26 a streamed event published in the same turn as broadcasts comes after them', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    const alice = await connect(a, 'alice')
    await alice.join('r')
    const first = a.app.rooms.broadcast('r', 'n', { i: 1 })
    const second = a.app.rooms.broadcast('r', 'n', { i: 2 })
    const stream = a.app.rooms.stream('r', 'answer', { q: 'x' })
    const third = a.app.rooms.broadcast('r', 'n', { i: 3 })
    const writer = await stream
    t.same([(await first).seq, (await second).seq, writer.seq, (await third).seq], [1, 2, 3, 4])
    await writer.end()
    await until(() => seqsOf(alice, 'n').length === 3 && seqsOf(alice, 'answer').length === 1, 'all four')
    t.same(alice.frames.filter((frame) => frame.type === 'n' || frame.type === 'answer').map((frame) => frame.seq), [1, 2, 3, 4])
  })

  t.test('#26 history keeps maxEvents exactly for readers though Redis trims in whole nodes', async (t) => {
    const redis = await startRedis(t)
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const a = await instance(t, redis, { history: { maxEvents: 5, maxAgeMs: 60_000 } })
    for (let i = 1; i <= 40; i++) await a.app.rooms.broadcast('r', 'n', { i })
    t.ok(await inspect.xlen('rooms:{r}:history') > 5, 'Redis still holds older entries (trimmed by node)')
    t.same((await a.app.rooms.history('r')).events.map((event) => event.seq), range(36, 40), 'history() returns the last five')
    const { epoch } = await a.app.rooms.position('r')
    const late = await connect(a, 'bob')
    const tooOld = await late.request({ type: 'resume', payload: { rooms: { r: { seq: 34, epoch } } } })
    t.same(tooOld.payload.rooms.r, { result: 'reset', seq: 40, epoch }, 'one event past maxEvents: reset, as before')
    const recent = await connect(a, 'carol')
    const inRange = await recent.request({ type: 'resume', payload: { rooms: { r: { seq: 35, epoch } } } })
    t.same(inRange.payload.rooms.r, { result: 'replayed', seq: 40, epoch, replayed: 5 })
    t.same(seqsOf(recent, 'n'), range(36, 40))
  })

  t.test('#26 history written before batching ([s, seq, f, frame] entries) is still replayed', async (t) => {
    const redis = await startRedis(t)
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const a = await instance(t, redis)
    await a.app.rooms.broadcast('r', 'n', { i: 1 })
    const { epoch } = await a.app.rooms.position('r')
    const frame = JSON.stringify({ type: 'n', room: 'r', seq: 2, payload: { i: 2 }, traceId: '0af7651916cd43dd8448eb211c80319c', time: Date.now() })
    await inspect.xadd('rooms:{r}:history', '*', 's', '2', 'f', frame)
    await inspect.hset('rooms:{r}:meta', 'seq', 2)
    await a.app.rooms.broadcast('r', 'n', { i: 3 })
    const bob = await connect(a, 'bob')
    const ack = await bob.request({ type: 'resume', payload: { rooms: { r: { seq: 0, epoch } } } })
    t.same(ack.payload.rooms.r, { result: 'replayed', seq: 3, epoch, replayed: 3 })
    t.same(bob.frames.filter((f) => f.type === 'n').map((f) => [f.seq, f.payload.i]), [[1, 1], [2, 2], [3, 3]])
  })

  t.test('#26 a fan-out message with two records delivers both in order; one with a malformed record is dropped whole and the gap filled from history', async (t) => {
    const redis = await startRedis(t)
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const a = await instance(t, redis)
    const alice = await connect(a, 'alice')
    const { epoch } = (await alice.join('r')).payload
    await a.app.rooms.broadcast('r', 'n', { i: 1 })
    await until(() => seqsOf(alice, 'n').length === 1, 'seq 1')
    // Seqs 2 and 3 stored by hand; their message names them in two records.
    await inspect.hset('rooms:{r}:meta', 'seq', 3)
    const time = Date.now()
    // The same text in history and in the message: a process compares what it delivered with history.
    const frame = (seq: number) => JSON.stringify({ type: 'n', room: 'r', seq, payload: { i: seq }, traceId: '0af7651916cd43dd8448eb211c80319c', time })
    for (const seq of [2, 3]) await inspect.xadd('rooms:{r}:history', '*', 's', String(seq), 'f', frame(seq))
    const record = (seq: number) => `\nn\n${Date.now()}\n${seq}\n${epoch}\n${frame(seq)}`
    t.equal(await inspect.publish('rooms:ev:r', `${record(2)}\n${record(3)}`), 1)
    await until(() => seqsOf(alice, 'n').length === 3, 'both records')
    // Seqs 4 and 5: the second record is cut short, so the message goes; seq 6 shows the gap.
    await inspect.hset('rooms:{r}:meta', 'seq', 5)
    for (const seq of [4, 5]) await inspect.xadd('rooms:{r}:history', '*', 's', String(seq), 'f', frame(seq))
    t.equal(await inspect.publish('rooms:ev:r', `${record(4)}\n\nn\n${Date.now()}\n5`), 1)
    await a.app.rooms.broadcast('r', 'n', { i: 6 })
    await until(() => seqsOf(alice, 'n').length === 6, 'six')
    t.same(seqsOf(alice, 'n'), range(1, 6), 'every seq once, in order')
    t.notOk(alice.frames.some((f) => f.type === 'reset'), 'no reset')
  })

  t.test('#26 Redis stopped: every publish of a waiting batch (two rooms, one call) rejects with FST_ROOMS_BROKER', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    await a.app.rooms.broadcast('r', 'n', { i: 0 })
    await redis.stop()
    const outcomes = await Promise.allSettled(range(1, 5).map((i) => a.app.rooms.broadcast(`r${i % 2}`, 'n', { i })))
    t.same(outcomes.map((outcome) => outcome.status === 'rejected' ? (outcome.reason as { code: string }).code : 'fulfilled'), Array(5).fill('FST_ROOMS_BROKER'))
  })
}

if (componentAvailable(t, redisMissing(), 'Redis Cluster publish batches')) {
  t.test('#26 cluster: one turn\'s broadcasts are one script call per room (their keys share a slot), on sharded channels', async (t) => {
    const cluster = await startRedisCluster(t)
    const a = await startServer(t, { presence: false, broker: redisBroker({ cluster: cluster.startupNodes, processTtlMs: 600 }) })
    const alice = await connect(a, 'alice')
    for (const room of ['x', 'y']) await alice.join(room)
    const nodes = cluster.startupNodes.map((node) => new Redis(node.port, node.host))
    t.teardown(() => { for (const node of nodes) node.disconnect() })
    await a.app.rooms.broadcast('x', 'n', {})
    await a.app.rooms.broadcast('y', 'n', {})
    for (const node of nodes) await node.config('RESETSTAT')
    const published = await Promise.all(range(1, 20).map((i) => a.app.rooms.broadcast(i % 2 === 0 ? 'x' : 'y', 'n', { i })))
    let calls = 0
    for (const node of nodes) calls += await scriptCalls(node)
    t.equal(calls, 2, 'one per room')
    t.same(published.map((position) => position.seq), range(1, 20).map((i) => Math.floor((i - 1) / 2) + 2))
    await until(() => seqsOf(alice, 'n').length === 22, 'all')
    t.same(seqsOf(alice, 'n', 'x'), range(1, 11))
    t.same(seqsOf(alice, 'n', 'y'), range(1, 11))
  })
}

// Issue #20: big rooms and their reads — a join answers with a bounded member list in a room of any size,
// joins and resumes read O(1) or O(what is missing) from Redis, presence-only rooms neither lose their
// position under sitting members nor push other rooms' history out.
import { Redis } from 'ioredis'
import t from 'tap'
import Type from 'typebox'
import { defineMessage } from '../lib/index.js'
import { memoryBroker } from '../lib/brokers/memory.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { componentAvailable } from './helpers/components.js'
import { connect, startServer, until } from './helpers/index.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { startRedisCluster } from './helpers/redis-cluster.js'

const INFO_1K = JSON.stringify({ bio: 'x'.repeat(1000) })

t.test('#20 a join of a 1,100-member room with 1 KB of presence data each: a bounded ack and memberCount, the joiner stays', async (t) => {
  const broker = memoryBroker()
  const server = await startServer(t, { broker, presenceInfo: () => ({ bio: 'me' }) })
  for (let n = 0; n < 1100; n++) await broker.presenceJoin('town', `u${n}`, `c${n}`, INFO_1K)
  const client = await connect(server, 'joiner')
  const ack = await client.request({ type: 'join', room: 'town' })
  t.equal(ack.type, 'ack')
  t.equal(ack.payload.memberCount, 1101, 'how many are in')
  t.ok(ack.payload.members.length > 0 && ack.payload.members.length < 100, `${ack.payload.members.length} members named`)
  t.ok(Buffer.byteLength(JSON.stringify(ack)) <= 70_000, 'the ack stays within 64 KiB of members')
  t.same(ack.payload.members[0], { id: 'u0', info: { bio: 'x'.repeat(1000) } }, 'named with their data')
  client.send({ type: 'ping', id: 'alive' })
  t.equal((await client.next((frame) => frame.id === 'alive')).type, 'pong', 'not closed 1013')
})

t.test('#20 a join of a 30,000-member room of ids only: 100 members and memberCount; a small room still gets everyone', async (t) => {
  const broker = memoryBroker()
  const server = await startServer(t, { broker })
  for (let n = 0; n < 30_000; n++) await broker.presenceJoin('stadium', `fan${n}`, `c${n}`)
  const client = await connect(server, 'late')
  const ack = await client.request({ type: 'join', room: 'stadium' })
  t.same([ack.type, ack.payload.members.length, ack.payload.memberCount], ['ack', 100, 30_001])
  const small = await client.request({ type: 'join', room: 'cafe' })
  t.same(small.payload.members, [{ id: 'late' }], 'everyone, and no memberCount')
  t.equal(small.payload.memberCount, undefined)
})

t.test('#20 memory broker: join/leave churn of presence-only rooms never evicts a hosted room\'s history', async (t) => {
  const server = await startServer(t, { history: { maxEvents: 1000, maxAgeMs: 300_000, maxBytes: 64 * 1024 }, rateLimit: false })
  for (let n = 1; n <= 20; n++) await server.app.rooms.broadcast('news', 'story', { n, body: 'y'.repeat(500) })
  const churner = await connect(server, 'churn')
  for (let n = 0; n < 300; n++) {
    await churner.join(`r${n}`)
    await churner.request({ type: 'leave', room: `r${n}` })
  }
  const reader = await connect(server, 'reader')
  const position = await server.app.rooms.history('news')
  const resumed = await reader.request({ type: 'resume', payload: { rooms: { news: { seq: 0, epoch: position.epoch } } } })
  t.equal(resumed.payload.rooms.news.result, 'replayed', 'the hosted room\'s history is whole')
  t.equal(resumed.payload.rooms.news.replayed, 20)
})

if (componentAvailable(t, redisMissing(), 'big rooms on Redis')) {
  t.test('#20 Redis: a join of a maxMembers room and of a count room reads no member list; a resume of an up-to-date room reads no history', async (t) => {
    const redis = await startRedis(t)
    const server = await startServer(t, {
      broker: redisBroker({ url: redis.url }),
      rateLimit: false,
      presence: false,
      namespaces: { capped: { maxMembers: 50_000 }, counted: { presence: 'count' } },
    })
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.quit())
    for (const room of ['capped:hall', 'counted:hall']) {
      const pipeline = inspect.pipeline()
      for (let n = 0; n < 5000; n++) pipeline.hset(`rooms:{${room}}:users`, `member-number-${n}`, '1')
      await pipeline.exec()
    }
    const outBytes = async () => Number(/total_net_output_bytes:(\d+)/.exec(await inspect.info('stats'))![1])
    const client = await connect(server, 'newcomer')
    let before = await outBytes()
    const capped = await client.request({ type: 'join', room: 'capped:hall' })
    const cappedBytes = await outBytes() - before
    t.equal(capped.type, 'ack')
    before = await outBytes()
    const counted = await client.request({ type: 'join', room: 'counted:hall' })
    const countedBytes = await outBytes() - before
    t.equal(counted.payload.count, 5001)
    // 5,000 ids read once are ~95 KB; the INFO reply itself is a few KB.
    t.ok(cappedBytes < 30_000, `Redis sent ${cappedBytes} bytes for the capped join`)
    t.ok(countedBytes < 30_000, `Redis sent ${countedBytes} bytes for the count join`)

    for (let n = 1; n <= 200; n++) await server.app.rooms.broadcast('log', 'line', { n, text: 'z'.repeat(1000) })
    const position = await server.app.rooms.history('log')
    const reader = await connect(server, 'reader')
    before = await outBytes()
    const resumed = await reader.request({ type: 'resume', payload: { rooms: { log: { seq: 200, epoch: position.epoch } } } })
    const upToDate = await outBytes() - before
    t.same([resumed.payload.rooms.log.result, resumed.payload.rooms.log.replayed], ['replayed', 0])
    t.ok(upToDate < 30_000, `an up-to-date resume: Redis sent ${upToDate} bytes (the room keeps ~220 KB)`)
    const behind = await connect(server, 'behind')
    const partial = await behind.request({ type: 'resume', payload: { rooms: { log: { seq: 195, epoch: position.epoch } } } })
    t.same([partial.payload.rooms.log.result, partial.payload.rooms.log.replayed], ['replayed', 5], 'five behind: exactly the five')
    const lines = behind.frames.filter((frame) => frame.type === 'line').map((frame) => frame.seq)
    t.same(lines, [196, 197, 198, 199, 200], 'in order')
  })

  t.test('#20 Redis: a presence-only room keeps its epoch while members sit in it past idleRoomTtlMs', async (t) => {
    const redis = await startRedis(t)
    const server = await startServer(t, { broker: redisBroker({ url: redis.url, idleRoomTtlMs: 400, processTtlMs: 150 }) })
    const alice = await connect(server, 'alice')
    const joined = await alice.join('quiet')
    const epoch = joined.payload.epoch
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.quit())
    const deadline = Date.now() + 1200
    await until(() => Date.now() > deadline, 'three idle TTLs passed')
    t.equal(await inspect.exists('rooms:{quiet}:meta'), 1, 'the room\'s position is still in Redis')
    const bob = await connect(server, 'bob')
    const ack = await bob.join('quiet')
    t.equal(ack.payload.epoch, epoch, 'the same epoch: nobody is reset')
    bob.send({ type: 'ping', id: 'p' })
    await bob.next((frame) => frame.id === 'p')
    t.notOk(alice.frames.some((frame) => frame.type === 'reset'), 'alice got no reset')
  })

  t.test('#20 Redis Cluster: rooms() lists rooms only, whatever frame ids clients answer with', async (t) => {
    const cluster = await startRedisCluster(t)
    const server = await startServer(t, {
      broker: redisBroker({ cluster: cluster.startupNodes }),
      messages: { note: defineMessage({ schema: Type.Optional(Type.Null()), handler: () => ({ ok: true }) }) },
    })
    const client = await connect(server, 'mallory')
    await client.join('real')
    const answer = await client.request({ type: 'note', payload: null }, 'x}:users')
    t.same(answer.payload, { ok: true })
    t.same(await server.app.rooms.rooms(), ['real'], 'no room spelled by a frame id')
  })
}

// Streamed events across processes on Redis: appends written on one server reach members on the other in
// order; clients move between servers mid-stream; a Redis restart mid-stream follows the `reset` rules.
import t from 'tap'
import { redisBroker } from '../lib/brokers/redis.js'
import type { RoomsOptions } from '../lib/index.js'
import { connect, startServer, until, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { redisMissing, startRedis, type RedisServer } from './helpers/redis.js'
import { checkScenario, streamScenario } from './helpers/stream-scenario.js'
import { follow, StreamFollower } from './helpers/stream-follower.js'
import { startServerProcess } from './helpers/server-process.js'
import { startRedisCluster } from './helpers/redis-cluster.js'

async function instance (t: Parameters<typeof startServer>[0], redis: RedisServer, options: Partial<RoomsOptions> = {}): Promise<TestServer> {
  return startServer(t, { broker: redisBroker({ url: redis.url, processTtlMs: 600, commandTimeoutMs: 1000 }), presence: false, handshakeRateLimit: false, ...options })
}

if (componentAvailable(t, redisMissing(), 'streamed events on Redis')) {
  t.test('two servers on Redis: 3000 tokens at 100/s written on one, clients dropped and resumed on either (seed 7): every text byte-identical, one history entry', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    const b = await instance(t, redis)
    const result = await streamScenario({ servers: [a, b], seed: 7, count: 3000, perSecond: 100, transport: 'websocket' })
    checkScenario(t, result)
    for (const server of [a, b]) {
      const history = await server.app.rooms.history('conversation')
      t.equal(history.events.length, 1, 'one history entry, on either server')
      t.same(history.events[0]!.stream, { id: result.streamId, state: 'done', text: result.source })
    }
  })

  t.test('Redis restarted mid-stream: members get a reset and the stream ends aborted (lost); the writer\'s end rejects; a new stream works', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis, { streamIdleMs: 1500 })
    const b = await instance(t, redis, { streamIdleMs: 1500 })
    const client = await connect(b, 'dan')
    const follower = new StreamFollower('talk')
    follow(client.ws, follower)
    await client.join('talk')
    const stream = await a.app.rooms.stream('talk', 'answer', {})
    stream.append('before the restart ')
    await until(() => follower.texts.get(stream.id) === 'before the restart ', 'the first text on the other server')
    await redis.stop()
    await redis.start()
    // The writer's next append finds its stream gone with Redis's keys.
    const ended = stream.end()
    await t.rejects(ended, { code: 'FST_ROOMS_STREAM_ENDED' })
    t.equal(stream.state, 'aborted')
    await client.nextOfType('reset')
    await until(() => follower.states.get(stream.id) === 'aborted', 'the stream ended for the member')
    t.equal(follower.reasons.get(stream.id), 'lost')
    t.equal(follower.texts.get(stream.id), 'before the restart ', 'what it had stays')
    t.same(follower.errors, [])
    const next = await a.app.rooms.stream('talk', 'answer', {})
    next.append('after')
    await next.end()
    await until(() => follower.states.get(next.id) === 'done', 'a new stream after the restart')
    t.equal(follower.texts.get(next.id), 'after')
  })

  t.test('the writer\'s process killed (-9) mid-stream: members on the other server get the stored text, then the stream aborted (idle) once, after twice streamIdleMs', async (t) => {
    const redis = await startRedis(t)
    const writer = await startServerProcess(t, redis, { STREAM_IDLE_MS: '400' })
    const b = await instance(t, redis, { streamIdleMs: 400 })
    const asker = await connect(writer.url, 'asker')
    await asker.join('talk')
    const member = await connect(b, 'member')
    const follower = new StreamFollower('talk')
    follow(member.ws, follower)
    await member.join('talk')
    const started = await asker.request({ type: 'talk', room: 'talk', payload: { count: 100_000 } })
    const id = started.payload.id as string
    await until(() => (follower.texts.get(id)?.length ?? 0) >= 40, 'some text on the other server')
    writer.child.kill('SIGKILL')
    await new Promise((resolve) => writer.child.once('exit', resolve))
    await until(() => follower.states.get(id) === 'aborted', 'the stream ended on the other server')
    t.equal(follower.reasons.get(id), 'idle')
    t.same(follower.errors, [], 'no byte twice, none missing')
    const text = follower.texts.get(id)!
    t.equal(text, 'tok '.repeat(text.length / 4), 'what it got is whole tokens of the source')
    const history = await b.app.rooms.history('talk')
    t.same(history.events.find((event) => event.stream?.id === id)!.stream, { id, state: 'aborted', text, reason: 'idle' }, 'stored as the member has it')
  })

  t.test('on a Redis Cluster: a stream written on one server reaches a late joiner and a resumer on the other, whole (its scripts touch the room\'s slot only, or the cluster would refuse them)', async (t) => {
    const cluster = await startRedisCluster(t)
    const options = { broker: redisBroker({ cluster: cluster.startupNodes, processTtlMs: 600 }), presence: false as const, handshakeRateLimit: false as const }
    const a = await startServer(t, options)
    const b = await startServer(t, { ...options, broker: redisBroker({ cluster: cluster.startupNodes, processTtlMs: 600 }) })
    const early = await connect(b, 'early')
    const follower = new StreamFollower('slot-room')
    follow(early.ws, follower)
    await early.join('slot-room')
    const stream = await a.app.rooms.stream('slot-room', 'answer', {})
    stream.append('one ')
    await until(() => follower.texts.get(stream.id) === 'one ', 'the first text on the other server')
    const position = follower.position()
    await early.close()
    stream.append('two ')
    const late = await connect(b, 'late')
    const lateFollower = new StreamFollower('slot-room')
    follow(late.ws, lateFollower)
    await late.join('slot-room')
    const again = await connect(b, 'early')
    follow(again.ws, follower)
    await again.request({ type: 'resume', payload: { rooms: { 'slot-room': position } } })
    stream.append('three')
    await stream.end()
    await until(() => follower.states.get(stream.id) === 'done' && lateFollower.states.get(stream.id) === 'done', 'both at the end')
    t.equal(follower.texts.get(stream.id), 'one two three')
    t.equal(lateFollower.texts.get(stream.id), 'one two three')
    t.same([...follower.errors, ...lateFollower.errors], [])
  })
}

// The Redis broker against a real redis-server: several Fastify instances (and child processes) share rooms.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import t from 'tap'
import Fastify from 'fastify'
import Type from 'typebox'
import rooms, { defineMessage, type RoomsOptions } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { connect, ORIGIN, range, retryUntil, SECRET, seqsOf, startServer, until, type Frame, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { redisMissing, startRedis, type RedisServer } from './helpers/redis.js'

async function instance (t: Parameters<typeof startServer>[0], redis: RedisServer, options: Partial<RoomsOptions> = {}): Promise<TestServer> {
  return startServer(t, { broker: redisBroker({ url: redis.url, processTtlMs: 600 }), ...options })
}

function inspector (t: { teardown(fn: () => unknown): void }, redis: RedisServer): Redis {
  const client = new Redis(redis.url)
  t.teardown(() => client.disconnect())
  return client
}

if (componentAvailable(t, redisMissing(), 'Redis broker')) {
  t.test('register fails with a clear error when Redis cannot be reached', async (t) => {
    const redis = await startRedis(t)
    await redis.stop()
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(
      (async () => {
        await app.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], broker: redisBroker({ url: redis.url, connectTimeoutMs: 500 }) })
        await app.ready()
      })(),
      { code: 'FST_ROOMS_BROKER', message: new RegExp(`cannot reach Redis at redis://127.0.0.1:${redis.port}`) }
    )
  })

  t.test('a broadcast on any process reaches members on every process, in one seq order', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis, { presence: false })
    const b = await instance(t, redis, { presence: false })
    const alice = await connect(a, 'alice')
    const bob = await connect(b, 'bob')
    await alice.join('lobby')
    await bob.join('lobby')
    const seqs: number[] = []
    for (let i = 0; i < 20; i++) seqs.push((await (i % 2 === 0 ? a : b).app.rooms.broadcast('lobby', 'note', { i })).seq)
    t.same(seqs, range(1, 20), 'seq is per room across processes')
    await until(() => seqsOf(alice, 'note').length === 20 && seqsOf(bob, 'note').length === 20, 'both got 20')
    t.same(seqsOf(alice, 'note'), range(1, 20))
    t.same(seqsOf(bob, 'note'), range(1, 20))
    t.same(alice.frames.filter((f) => f.type === 'note').map((f) => f.payload.i), range(0, 19))
  })

  t.test('presence, members, count and rooms are the same from every process', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    const b = await instance(t, redis)
    const alice = await connect(a, 'alice')
    const bob = await connect(b, 'bob')
    await alice.join('lobby')
    const joined = await bob.join('lobby')
    t.same(joined.payload.members.map((m: { id: string }) => m.id).sort(), ['alice', 'bob'])
    t.same((await alice.nextOfType('presence')).payload.user.id, 'alice')
    t.same((await alice.nextOfType('presence')).payload, { action: 'join', user: { id: 'bob' } })
    for (const server of [a, b]) {
      t.same((await server.app.rooms.members('lobby')).map((m) => m.id).sort(), ['alice', 'bob'])
      t.equal(await server.app.rooms.count('lobby'), 2)
      t.same(await server.app.rooms.rooms(), ['lobby'])
    }
    await bob.close()
    t.same((await alice.nextOfType('presence')).payload, { action: 'leave', user: { id: 'bob' } })
    t.same(await a.app.rooms.members('lobby'), [{ id: 'alice' }])
  })

  t.test('resume on another process replays from the shared history', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis, { presence: false })
    const b = await instance(t, redis, { presence: false })
    const first = await connect(a, 'alice')
    const { payload: joined } = await first.join('feed')
    for (let i = 1; i <= 3; i++) await a.app.rooms.broadcast('feed', 'item', { i })
    await until(() => seqsOf(first, 'item').length === 3)
    await first.close()
    for (let i = 4; i <= 8; i++) await b.app.rooms.broadcast('feed', 'item', { i })
    const second = await connect(b, 'alice')
    const ack = await second.request({ type: 'resume', payload: { rooms: { feed: { seq: 3, epoch: joined.epoch } } } })
    t.same(ack.payload.rooms.feed, { result: 'replayed', seq: 8, epoch: joined.epoch, replayed: 5 })
    t.same(seqsOf(second, 'item'), range(4, 8))
    const history = await a.app.rooms.history('feed', { after: 6 })
    t.same(history.events.map((e) => e.payload), [{ i: 7 }, { i: 8 }])
  })

  t.test('sendToUser and disconnectUser reach the user on every process', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    const b = await instance(t, redis)
    const onA = await connect(a, 'alice')
    const onB = await connect(b, 'alice')
    await b.app.rooms.sendToUser('alice', 'notice', { n: 1 })
    t.same((await onA.nextOfType('notice')).payload, { n: 1 })
    t.same((await onB.nextOfType('notice')).payload, { n: 1 })
    await a.app.rooms.disconnectUser('alice', 1008, 'banned')
    t.same(await onA.closed, { code: 1008, reason: 'banned' })
    t.same(await onB.closed, { code: 1008, reason: 'banned' })
  })

  t.test('a process subscribes only to rooms it has local members in', async (t) => {
    const redis = await startRedis(t)
    const inspect = inspector(t, redis)
    const a = await instance(t, redis)
    const b = await instance(t, redis)
    const alice = await connect(a, 'alice')
    await connect(b, 'bob')
    await alice.join('only-a')
    t.same(await inspect.pubsub('NUMSUB', 'rooms:ev:only-a'), ['rooms:ev:only-a', 1], 'one subscriber: process A')
    t.same((await inspect.pubsub('CHANNELS', 'rooms:ev:*')), ['rooms:ev:only-a'])
    await alice.request({ type: 'leave', room: 'only-a' })
    t.same(await inspect.pubsub('NUMSUB', 'rooms:ev:only-a'), ['rooms:ev:only-a', 0], 'unsubscribed after the last local member left')
  })

  t.test('a dropped subscriber catches up from history: no gap', async (t) => {
    const redis = await startRedis(t)
    const inspect = inspector(t, redis)
    const a = await instance(t, redis, { presence: false })
    const b = await instance(t, redis, { presence: false })
    const alice = await connect(a, 'alice')
    await alice.join('feed')
    await b.app.rooms.broadcast('feed', 'item', { i: 1 })
    await until(() => seqsOf(alice, 'item').length === 1)
    // Cut every pubsub connection; publish at once, while the subscribers reconnect.
    await inspect.client('KILL', 'TYPE', 'pubsub')
    for (let i = 2; i <= 10; i++) await retryUntil(() => b.app.rooms.broadcast('feed', 'item', { i }), 10_000, 'publish')
    await until(() => seqsOf(alice, 'item').length >= 10, 'alice got everything')
    t.same(seqsOf(alice, 'item'), range(1, 10))
  })

  t.test('Redis goes away: broadcast rejects with 503, sockets stay open; when it is back, rooms recover with a reset', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    const alice = await connect(a, 'alice')
    const joined = await alice.join('lobby')
    await alice.nextOfType('presence')
    await redis.stop()
    await t.rejects(a.app.rooms.broadcast('lobby', 'note', {}), { code: 'FST_ROOMS_BROKER', statusCode: 503, message: /Redis unavailable/ })
    alice.send({ type: 'ping', id: 'during-outage' })
    t.equal((await alice.nextOfType('pong')).id, 'during-outage', 'the socket is still served')
    const during = await alice.request({ type: 'join', room: 'other' })
    t.equal(during.payload.code, 'unavailable', 'a join that needs Redis fails cleanly, with the retryable code')
    await redis.start() // empty: the room's seq and epoch are gone
    const { seq } = await retryUntil(() => a.app.rooms.broadcast('lobby', 'note', { after: true }), 10_000, 'broadcast after restart')
    const reset = await alice.nextOfType('reset')
    t.equal(reset.room, 'lobby')
    t.not(reset.payload.epoch, joined.payload.epoch, 'a new epoch')
    t.ok(reset.payload.seq < seq, 'the reset comes before the first event of the new epoch')
    const note = await alice.nextOfType('note')
    t.same({ seq: note.seq, payload: note.payload }, { seq, payload: { after: true } })
    t.same(await retryUntil(async () => {
      const members = await a.app.rooms.members('lobby')
      if (members.length === 0) throw new Error('presence not restored yet')
      return members
    }, 10_000, 'presence restored'), [{ id: 'alice' }])
  })

  t.test('a retried id is answered once across processes, even while the first attempt still runs', async (t) => {
    const redis = await startRedis(t)
    let runs = 0
    let release: () => void = () => {}
    const gate = { wait: Promise.resolve() }
    const messages = {
      order: defineMessage({
        schema: Type.Object({ item: Type.String() }),
        handler: async (_ctx, payload) => {
          runs++
          await gate.wait
          return { item: payload.item, run: runs }
        },
      }),
    }
    const a = await instance(t, redis, { messages })
    const b = await instance(t, redis, { messages })
    const onA = await connect(a, 'alice')
    t.same((await onA.request({ type: 'order', payload: { item: 'tea' } }, 'o-1')).payload, { item: 'tea', run: 1 })
    await onA.close()
    const onB = await connect(b, 'alice')
    t.same((await onB.request({ type: 'order', payload: { item: 'tea' } }, 'o-1')).payload, { item: 'tea', run: 1 }, 'the answer stored by process A')
    t.equal(runs, 1)
    // The first attempt is still running on B when the retry reaches A: A waits for B's answer.
    gate.wait = new Promise<void>((resolve) => (release = resolve))
    onB.send({ type: 'order', id: 'o-2', payload: { item: 'cake' } })
    await until(() => runs === 2, 'the first attempt started')
    const retry = await connect(a, 'alice')
    const inspect = inspector(t, redis)
    const scriptCalls = async () => Number(/cmdstat_evalsha:calls=(\d+)/.exec(await inspect.info('commandstats'))?.[1] ?? 0)
    const before = await scriptCalls()
    const retried = retry.request({ type: 'order', payload: { item: 'cake' } }, 'o-2')
    // A has claimed (found it pending) and polled at least once before the first attempt finishes.
    while ((await scriptCalls()) < before + 2) await new Promise((resolve) => setImmediate(resolve))
    release()
    t.same((await retried).payload, { item: 'cake', run: 2 })
    t.same((await onB.next((f) => f.id === 'o-2')).payload, { item: 'cake', run: 2 })
    t.equal(runs, 2, 'the handler ran once for o-2')
    // Another payload under the same id is a new frame.
    t.same((await retry.request({ type: 'order', payload: { item: 'pie' } }, 'o-2')).payload, { item: 'pie', run: 3 })
  })

  t.test('close() leaves no connection and no key of its own behind', async (t) => {
    const redis = await startRedis(t)
    const inspect = inspector(t, redis)
    const a = await instance(t, redis)
    const b = await instance(t, redis)
    const alice = await connect(a, 'alice')
    const bob = await connect(b, 'bob')
    await alice.join('lobby')
    await bob.join('lobby')
    await a.app.rooms.broadcast('lobby', 'note', {})
    await a.app.close()
    await b.app.close()
    const keys = (await inspect.keys('*')).sort()
    t.same(keys, ['rooms:{lobby}:history', 'rooms:{lobby}:meta'], 'only the room history and seq remain')
    const clients = (await inspect.client('LIST') as string).trim().split('\n')
    t.equal(clients.length, 1, 'only the inspecting connection is left')
  })

  t.test('separate processes: broadcast across them; a SIGKILLed process is removed from presence', async (t) => {
    const redis = await startRedis(t)
    const fixture = fileURLToPath(new URL('./fixtures/redis-server.ts', import.meta.url))
    const spawnServer = async () => {
      const child = spawn(process.execPath, ['--import=tsx', fixture], {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: { ...process.env, REDIS_URL: redis.url, PROCESS_TTL_MS: '600' },
      })
      t.teardown(() => {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
      })
      let output = ''
      child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()))
      while (!output.includes('\n')) await once(child.stdout!, 'data')
      return { child, url: `ws://127.0.0.1:${Number(output.split('\n')[0])}` }
    }
    const [one, two] = await Promise.all([spawnServer(), spawnServer()])
    const alice = await connect(one.url, 'alice')
    const bob = await connect(two.url, 'bob')
    await alice.join('lobby')
    await bob.join('lobby')
    t.same((await bob.request({ type: 'say', room: 'lobby', payload: { text: 'hi from two' } })).payload, { seq: 3 })
    t.same((await alice.nextOfType('said')).payload, { text: 'hi from two' })
    const exited = once(one.child, 'exit')
    one.child.kill('SIGKILL')
    await exited
    const leave = await bob.next((f: Frame) => f.type === 'presence' && f.payload.action === 'leave', 'presence leave')
    t.same(leave.payload, { action: 'leave', user: { id: 'alice' } })
    t.equal(leave.seq, 4)
  })
}

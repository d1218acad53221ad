// The Redis broker under faults, on a real redis-server: no message can crash a process, a client cannot
// fill Redis, a hung Redis gets a bounded, retryable answer, a lost or late fan-out message is filled from
// history, and the wire promises hold across processes for raw clients.
import { spawn } from 'node:child_process'
import { Redis } from 'ioredis'
import t from 'tap'
import Type from 'typebox'
import { defineMessage, type RoomsOptions } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { bounded, connect, rawClient, retryUntil, startServer, until, type TestServer, range, type Client } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { redisMissing, startRedis, type RedisServer } from './helpers/redis.js'
import { startServerProcess } from './helpers/server-process.js'
import { PUBLISH_BATCH } from '../lib/brokers/redis/scripts.js'
import { roomEventFrameParts } from '../lib/protocol/event-frames.js'

async function instance (t: Parameters<typeof startServer>[0], redis: RedisServer, options: Partial<RoomsOptions> = {}, broker: Parameters<typeof redisBroker>[0] = {}): Promise<TestServer> {
  return startServer(t, { broker: redisBroker({ url: redis.url, processTtlMs: 600, ...broker }), ...options })
}

function inspector (t: { teardown(fn: () => unknown): void }, redis: RedisServer): Redis {
  const client = new Redis(redis.url)
  t.teardown(() => client.disconnect())
  return client
}

const seqsOf = (client: Client) => client.frames.filter((frame) => frame.type === 'tick').map((frame) => frame.seq)

if (componentAvailable(t, redisMissing(), 'Redis under faults')) {
  t.test('#10 disconnectUser with a 41+ character CJK reason closes the user everywhere and kills no process', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis)
    const b = await instance(t, redis)
    const onA = await connect(a, 'alice')
    const onB = await connect(b, 'alice')
    await a.app.rooms.disconnectUser('alice', 4000, '界'.repeat(60))
    t.same(await onA.closed, { code: 4000, reason: '界'.repeat(41) })
    t.same(await onB.closed, { code: 4000, reason: '界'.repeat(41) })
    const bob = await connect(b, 'bob')
    bob.send({ type: 'ping', id: 'alive' })
    t.equal((await bob.nextOfType('pong')).id, 'alive', 'process B lives')
    t.same(await a.app.rooms.broadcast('lobby', 'note', {}), { seq: 1 }, 'process A lives')
  })

  t.test('#10 malformed messages on the broker\'s channels are logged and dropped; the process lives', async (t) => {
    const redis = await startRedis(t)
    const inspect = inspector(t, redis)
    const a = await instance(t, redis)
    const alice = await connect(a, 'alice')
    await alice.join('lobby')
    await alice.nextOfType('presence')
    for (const message of ['not json', '["m"]', '["d","alice","x","y"]', '{"k":1}', '[]']) await inspect.publish('rooms:users', message)
    for (const message of ['garbage', '\n\n\n\n\n', 'x\nnote\nNaN\ne\n1\n{}', '']) await inspect.publish('rooms:ev:lobby', message)
    await a.app.rooms.sendToUser('alice', 'notice', { ok: true })
    t.same((await alice.nextOfType('notice')).payload, { ok: true }, 'user messages still flow')
    t.equal((await a.app.rooms.broadcast('lobby', 'note', {})).seq, 2)
    t.equal((await alice.nextOfType('note')).seq, 2, 'room events still flow')
    const dropped = a.logs.filter((line) => line.includes('dropped a Redis message'))
    t.equal(dropped.length, 9, 'each bad message logged once')
    t.ok(dropped.every((line) => JSON.parse(line).level === 40), 'at warn')
  })

  t.test('#10 a room that only ever carried presence holds keys for idleRoomTtlMs; a host event keeps it roomTtlMs', async (t) => {
    const redis = await startRedis(t)
    const inspect = inspector(t, redis)
    // 42 frames in a row: more than the default burst.
    const a = await instance(t, redis, { rateLimit: false }, { idleRoomTtlMs: 60_000, roomTtlMs: 3_600_000 })
    const alice = await connect(a, 'alice')
    for (let i = 0; i < 20; i++) {
      await alice.join(`fresh-${i}`)
      await alice.request({ type: 'leave', room: `fresh-${i}` })
    }
    // Each leave's presence event is published before its ack.
    const keys = (await inspect.keys('rooms:{fresh-*')).sort()
    t.equal(keys.length, 40, 'meta and history per churned room, nothing else')
    for (const key of keys) {
      const ttl = await inspect.pttl(key)
      t.ok(ttl > 0 && ttl <= 60_000, `${key} expires within idleRoomTtlMs (${ttl} ms)`)
    }
    await alice.join('chat')
    await a.app.rooms.broadcast('chat', 'note', { text: 'kept' })
    t.ok(await inspect.pttl('rooms:{chat}:meta') > 3_000_000, 'a room with a host event keeps its seq for roomTtlMs')
    t.ok(await inspect.pttl('rooms:{chat}:history') <= 301_000, 'its events for history.maxAgeMs at most')
  })

  t.test('#10 answers kept in Redis obey retryWindow.maxIdsPerUser across processes', async (t) => {
    const redis = await startRedis(t)
    const inspect = inspector(t, redis)
    const options = {
      rateLimit: false as const,
      retryWindow: { maxIdsPerUser: 20, windowMs: 60_000 },
      messages: { order: defineMessage({ schema: Type.Object({}), handler: () => 'ok' }) },
    }
    const a = await instance(t, redis, options)
    const b = await instance(t, redis, options)
    const onA = await connect(a, 'alice')
    const onB = await connect(b, 'alice')
    for (let i = 0; i < 60; i++) t.equal((await (i % 2 === 0 ? onA : onB).request({ type: 'order', payload: {} }, `id-${i}`)).payload, 'ok')
    const answers = (await inspect.keys('rooms:{answer:*')).filter((key) => !key.endsWith(':ids'))
    t.equal(answers.length, 20, 'the 20 newest answers, not 60')
    t.equal(await inspect.zcard('rooms:{answer:5:alice}:ids'), 20)
    t.ok(await inspect.exists(`rooms:{answer:5:alice}:a.${Buffer.from('sid-59').toString('base64url')}`), 'the newest is kept')
    t.notOk(await inspect.exists(`rooms:{answer:5:alice}:a.${Buffer.from('sid-0').toString('base64url')}`), 'the oldest is gone')
  })

  t.test('#10 Redis hung (SIGSTOP): bounded, retryable answers; everything works again when it answers', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis, {}, { commandTimeoutMs: 300 })
    const alice = await connect(a, 'alice')
    await alice.join('lobby')
    await alice.nextOfType('presence')
    const pid = Number((await inspector(t, redis).info('server')).match(/process_id:(\d+)/)![1])
    process.kill(pid, 'SIGSTOP')
    let resumed = false
    const resume = () => {
      if (!resumed) process.kill(pid, 'SIGCONT')
      resumed = true
    }
    t.teardown(resume)
    const started = Date.now()
    await t.rejects(a.app.rooms.broadcast('lobby', 'note', {}), { code: 'FST_ROOMS_BROKER_TIMEOUT', statusCode: 503 })
    t.ok(Date.now() - started < 5000, 'rejected after the command timeout, not when Redis wakes up')
    const join = await alice.request({ type: 'join', room: 'other' })
    t.same(join.payload.code, 'unavailable', 'a frame that needs Redis gets the retryable code')
    alice.send({ type: 'ping', id: 'hung' })
    t.equal((await alice.nextOfType('pong')).id, 'hung', 'frames that need no Redis are still served')
    resume()
    const again = await retryUntil(() => a.app.rooms.broadcast('lobby', 'note', { after: true }))
    t.equal((await alice.next((frame) => frame.type === 'note' && frame.seq === again.seq)).payload.after, true)
    t.equal((await alice.request({ type: 'join', room: 'other' })).type, 'ack')
  })

  t.test('chaos finding: a leave while Redis hangs is acked (the socket has left) and its presence entry goes once Redis answers', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis, {}, { commandTimeoutMs: 300 })
    const alice = await connect(a, 'alice')
    await alice.join('lobby')
    const bob = await connect(a, 'bob')
    await bob.join('lobby')
    await alice.next((frame) => frame.type === 'presence' && frame.payload.user.id === 'bob')
    redis.pause()
    let paused = true
    t.teardown(() => { if (paused) redis.resume() })
    const answer = await alice.request({ type: 'leave', room: 'lobby' })
    t.same({ type: answer.type, payload: answer.payload }, { type: 'ack', payload: { room: 'lobby' } }, 'the leave took effect, so it is acked, not answered unavailable')
    const again = await alice.request({ type: 'leave', room: 'lobby' })
    t.equal(again.payload.code, 'not_in_room', 'and the socket is out of the room')
    redis.resume()
    paused = false
    const leave = await bob.next((frame) => frame.type === 'presence' && frame.payload.user.id === 'alice' && frame.payload.action === 'leave', 'alice\'s presence leave')
    t.equal(leave.room, 'lobby')
    t.same(await a.app.rooms.members('lobby'), [{ id: 'bob' }], 'no ghost left in Redis')
  })

  t.test('#10 broadcast idempotencyKey publishes once across processes', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis, { presence: false })
    const b = await instance(t, redis, { presence: false })
    const alice = await connect(a, 'alice')
    await alice.join('orders')
    const first = await a.app.rooms.broadcast('orders', 'paid', { order: 7 }, { idempotencyKey: 'pay-7' })
    const retried = await b.app.rooms.broadcast('orders', 'paid', { order: 7 }, { idempotencyKey: 'pay-7' })
    const next = await b.app.rooms.broadcast('orders', 'paid', { order: 8 })
    t.same([first, retried, next], [{ seq: 1 }, { seq: 1 }, { seq: 2 }])
    await alice.next((frame) => frame.type === 'paid' && frame.seq === 2)
    t.same(alice.frames.filter((frame) => frame.type === 'paid').map((frame) => frame.seq), [1, 2])
  })

  t.test('#10 raw clients dropping and resuming on the other process while events flow: each seq at most once, no gap', async (t) => {
    const redis = await startRedis(t)
    // Two server processes (separate event loops, as in production), published to by raw sockets on both.
    const servers = await Promise.all([0, 1].map(() => serverProcess(t, redis, { HANDSHAKE_RATE_LIMIT: 'off' })))
    const publishers = await Promise.all(Array.from({ length: 10 }, (_, i) => rawClient(servers[i % 2]!, `p${i}`)))
    for (const { ws } of publishers) ws.send(JSON.stringify({ type: 'join', id: 'pj', room: 'feed' }))
    await until(() => publishers.every(({ frames }) => frames.some((frame) => frame.id === 'pj')), 'publishers joined')
    // 10 sockets just under the default 20 frames/s each: about 190 publishes a second, bounded in time.
    const timers = publishers.map(({ ws }) => setInterval(() => ws.send(JSON.stringify({ type: 'say', room: 'feed', payload: { text: 'x' } })), 53))
    t.teardown(() => timers.forEach(clearInterval))
    let duplicates = 0
    let gaps = 0
    let resumes = 0
    const deadline = Date.now() + 5000
    await Promise.all([0, 1, 2, 3].map(async (worker) => {
      let position: { seq: number; epoch: string } | undefined
      for (let hop = 0; Date.now() < deadline && hop < 300; hop++) {
        const { ws, frames } = await rawClient(servers[(hop + worker) % 2]!, `u${worker}`)
        ws.send(JSON.stringify(position === undefined
          ? { type: 'join', id: 'j', room: 'feed' }
          : { type: 'resume', id: 'r', payload: { rooms: { feed: position } } }))
        if (position !== undefined) resumes++
        // Stay for a few events, then cut the socket mid-stream.
        await until(() => frames.filter((frame) => frame.type === 'said').length >= 3, 'events flow')
        ws.terminate()
        const seen = new Set<number>()
        let epoch = position?.epoch
        // After a resume the replay starts right after the position; after a join, right after the ack's seq.
        let last = position?.seq
        for (const frame of frames) {
          if (frame.type === 'ack' && frame.id === 'j') {
            epoch = frame.payload.epoch
            // Events past ack.seq may arrive just before the ack (the live stream and the position read
            // travel on different Redis connections): they must run on from ack.seq without a hole.
            const early = [...seen].filter((seq) => seq > frame.payload.seq).sort((x, y) => x - y)
            early.forEach((seq, i) => {
              if (seq !== frame.payload.seq + 1 + i) gaps++
            })
            last = early.length > 0 ? early[early.length - 1]! : frame.payload.seq
          } else if (frame.type === 'reset') {
            epoch = frame.payload.epoch
            last = frame.payload.seq
          } else if (frame.type === 'said' || frame.type === 'presence') {
            if (seen.has(frame.seq!)) duplicates++
            seen.add(frame.seq!)
            if (last === undefined) continue
            if (frame.seq !== last + 1) gaps++
            last = frame.seq!
          }
        }
        if (epoch !== undefined && last !== undefined) position = { seq: last, epoch }
      }
    }))
    timers.forEach(clearInterval)
    t.ok(resumes > 50, `${resumes} resumes on the other process while events flowed`)
    t.equal(duplicates, 0, 'no seq twice on one connection')
    t.equal(gaps, 0, 'no seq skipped')
  })

  t.test('#10 presence on Redis: a join followed at once by a TCP reset is announced join, then leave', async (t) => {
    const redis = await startRedis(t)
    const a = await instance(t, redis, { handshakeRateLimit: false })
    const observer = await connect(a, 'observer')
    await observer.join('lobby')
    await observer.nextOfType('presence')
    for (let i = 0; i < 30; i++) {
      const { ws } = await rawClient(a, `ghost${i}`)
      ws.send(JSON.stringify({ type: 'join', id: 1, room: 'lobby' }))
      ws.terminate()
    }
    await until(() => a.app.rooms.stats().connections === 1, 'the raw sockets are gone')
    const ghostActions = (): Map<string, string[]> => {
      const byUser = new Map<string, string[]>()
      for (const frame of observer.frames) {
        if (frame.type !== 'presence' || !frame.payload.user.id.startsWith('ghost')) continue
        byUser.set(frame.payload.user.id, [...byUser.get(frame.payload.user.id) ?? [], frame.payload.action])
      }
      return byUser
    }
    // Settled when every ghost that was announced has been announced an even number of times (a total
    // that is even is not enough: two joins whose leaves are still on their way also add up to even).
    await until(() => [...ghostActions().values()].every((actions) => actions.length % 2 === 0), 'announcements settle')
    for (const [user, actions] of ghostActions()) t.same(actions, ['join', 'leave'], user)
    await until(() => true)
    t.same(await a.app.rooms.members('lobby'), [{ id: 'observer' }], 'no ghost in members()')
  })

  t.test('#10 a SIGKILLed process whose members sat in rooms with odd names is reaped cleanly', async (t) => {
    const redis = await startRedis(t)
    const inspect = inspector(t, redis)
    const survivor = await instance(t, redis)
    const fixture = new URL('./fixtures/redis-server.ts', import.meta.url).pathname
    const child = spawn(process.execPath, ['--import=tsx', fixture], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, REDIS_URL: redis.url, PROCESS_TTL_MS: '600' } })
    t.teardown(() => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
    })
    let output = ''
    await bounded(new Promise<void>((resolve) => child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes('\n')) resolve()
    })), 'the server process listening')
    const url = `ws://127.0.0.1:${Number(output.split('\n')[0])}`
    const odd = 'room "with" {braces} and spaces'
    const victim = await connect(url, 'victim')
    await victim.join(odd)
    t.same(await survivor.app.rooms.members(odd), [{ id: 'victim' }])
    child.kill('SIGKILL')
    await until(() => child.signalCode !== null, 'child killed')
    await retryUntil(async () => {
      if ((await survivor.app.rooms.members(odd)).length > 0) throw new Error('not reaped yet')
    })
    t.same(await inspect.keys('rooms:member:*'), [], 'the dead process\'s presence entries are gone')
  })
}

/** A server in its own process (test/fixtures/redis-server.ts); resolves with its ws:// base URL. */
async function serverProcess (t: { teardown(fn: () => unknown): void }, redis: RedisServer, env: Record<string, string> = {}): Promise<string> {
  return (await startServerProcess(t, redis, env)).url
}

if (componentAvailable(t, redisMissing(), 'Redis: lost and late fan-out messages')) {
  t.test('#11 Redis: a fan-out message lost while connected is noticed at the next one and filled from history', async (t) => {
    const redis = await startRedis(t)
    const server = await startServer(t, { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const raw = await connect(server, 'alice')
    await raw.join('lobby')
    await server.app.rooms.broadcast('lobby', 'tick', { n: 1 })
    await raw.next((frame) => frame.seq === 1, 'seq 1')
    // Seq 2 is stored as a publish stores it, but its pub/sub message goes to a channel nobody hears.
    const direct = new Redis(redis.url)
    t.teardown(() => direct.disconnect())
    const [head, tail] = roomEventFrameParts({ type: 'tick', room: 'lobby', payloadJson: '{"n":2}', traceId: 'lost-trace' }, Date.now())
    const lost = await direct.eval(PUBLISH_BATCH, 2, 'rooms:{lobby}:meta', 'rooms:{lobby}:history',
      86_400_000, 120_000, 300_000, 'PUBLISH', 1, 'unused-epoch', 1000, 300_000, 'rooms:ev:nobody-listens', 1, '1', `\ntick\n${Date.now()}\n`, head, tail, 0) as [number, string]
    t.equal(lost[0], 2)
    await server.app.rooms.broadcast('lobby', 'tick', { n: 3 })
    await raw.next((frame) => frame.seq === 3, 'seq 3')
    t.same(seqsOf(raw), [1, 2, 3], 'seq 2 arrives from history before seq 3, once')
    t.same(raw.frames.filter((frame) => frame.type === 'tick').map((frame) => frame.payload), [{ n: 1 }, { n: 2 }, { n: 3 }])
  })

  t.test('#11 Redis: events published while the subscriber is away are caught up from history, in order (holding live events meanwhile: delivery-edges.test.ts)', async (t) => {
    const redis = await startRedis(t)
    const server = await startServer(t, { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const raw = await connect(server, 'alice')
    await raw.join('lobby')
    for (let n = 1; n <= 5; n++) await server.app.rooms.broadcast('lobby', 'tick', { n })
    await raw.next((frame) => frame.seq === 5, 'seq 5')
    const admin = new Redis(redis.url)
    t.teardown(() => admin.disconnect())
    // Cut the subscriber; the last events are published before it is back, and nothing is published after,
    // so only the catch-up after the reconnect can deliver them.
    const killed = await admin.client('KILL', 'TYPE', 'pubsub') as number
    t.equal(killed, 1, 'the one subscriber was cut')
    for (let n = 6; n <= 10; n++) await server.app.rooms.broadcast('lobby', 'tick', { n })
    await raw.next((frame) => frame.seq === 10, 'seq 10 after the reconnect')
    await until(() => seqsOf(raw).length >= 10)
    t.same(seqsOf(raw), range(1, 10), 'every seq once, in order')
  })
}

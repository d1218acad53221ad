// Issue #15: the Redis broker on a real Redis Cluster (three masters the tests start themselves, stopped by
// PID): every key and channel of a room in its slot, sharded pub/sub, and every guarantee of the
// single-instance broker — order and seq across processes, history and exact resume, presence and its
// reaping, exactly-once answers, user-directed messages, Redis going away — checked with raw clients.
import { Cluster, Redis } from 'ioredis'
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { defineMessage, type RoomsOptions } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { bounded, connect, ORIGIN, range, rawClient, retryUntil, seqsOf, startServer, until, type Frame, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { startProxy } from './helpers/proxy.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { startRedisCluster, type RedisClusterHandle } from './helpers/redis-cluster.js'
import { spawn } from 'node:child_process'
import { freePort } from './helpers/components.js'
import { startServerProcess } from './helpers/server-process.js'

async function instance (t: Parameters<typeof startServer>[0], cluster: RedisClusterHandle, options: Partial<RoomsOptions> = {}): Promise<TestServer> {
  return startServer(t, { broker: redisBroker({ cluster: cluster.startupNodes, processTtlMs: 600 }), ...options })
}

/** A cluster client for looking at keys and channels, node by node. */
function inspector (t: { teardown(fn: () => unknown): void }, cluster: RedisClusterHandle): Cluster {
  const client = new Cluster(cluster.startupNodes)
  t.teardown(() => client.disconnect())
  return client
}

async function allKeys (inspect: Cluster): Promise<string[]> {
  const keys: string[] = []
  for (const node of inspect.nodes('master')) keys.push(...await node.keys('*'))
  return keys.sort()
}

/** Subscribers of `channel` on one node (`PUBSUB NUMSUB` or `SHARDNUMSUB`). */
async function subscribers (port: number, command: 'NUMSUB' | 'SHARDNUMSUB', channel: string): Promise<number> {
  const client = new Redis({ port, host: '127.0.0.1' })
  try {
    return (await client.call('PUBSUB', command, channel) as [string, number])[1]
  } finally {
    client.disconnect()
  }
}

/** A raw client joins `room`; resolves with the join's ack. */
async function rawJoin (client: { ws: WebSocket; frames: Frame[] }, room: string): Promise<Frame> {
  client.ws.send(JSON.stringify({ type: 'join', id: 'j', room }))
  await until(() => client.frames.some((frame) => frame.type === 'ack' && frame.id === 'j'), `joined ${room}`)
  return client.frames.find((frame) => frame.type === 'ack' && frame.id === 'j')!
}

if (componentAvailable(t, redisMissing(), 'Redis Cluster')) {
  t.test('#15 two processes on a cluster: order and seq across processes; every key and channel of a room in its slot; sharded pub/sub only', async (t) => {
    const cluster = await startRedisCluster(t)
    const inspect = inspector(t, cluster)
    const a = await instance(t, cluster, { presence: false })
    const b = await instance(t, cluster, { presence: false })
    const onA = await rawClient(a, 'alice')
    const onB = await rawClient(b, 'bob')
    await Promise.all([onA, onB].map((client) => rawJoin(client, 'chat')))
    // Publishes from both processes interleave; each room still has one order.
    for (let i = 0; i < 40; i++) await (i % 2 === 0 ? a : b).app.rooms.broadcast('chat', 'note', { i })
    await until(() => [onA, onB].every((client) => seqsOf(client.frames, 'note').length === 40), 'every event on both')
    for (const client of [onA, onB]) {
      t.same(seqsOf(client.frames, 'note'), range(1, 40), 'seq 1…40, once each, in order')
      t.same(client.frames.filter((frame) => frame.type === 'note').map((frame) => frame.payload.i), range(0, 39), 'in publish order')
    }
    const keys = await allKeys(inspect)
    const kinds = keys.filter((key) => key.startsWith('rooms:{chat}:')).map((key) => key.slice('rooms:{chat}:'.length).replace(/^proc:.*/, 'proc:<process>'))
    t.same([...new Set(kinds)].sort(), ['history', 'meta', 'presence', 'proc:<process>', 'users'], 'the room\'s keys, all hash-tagged')
    t.same(keys.filter((key) => !key.startsWith('rooms:{chat}:') && !/^rooms:proc(s|:[0-9a-f-]+)$/.test(key)), [], 'nothing else but the processes\' heartbeats (no global room set, no per-process index)')
    const owner = await cluster.masterOf('rooms:{chat}:meta')
    t.equal(await subscribers(owner.port, 'SHARDNUMSUB', 'rooms:{chat}:ev'), 2, 'both processes subscribed on the shard that owns the room')
    for (const node of cluster.nodes.filter((node) => node !== owner)) t.equal(await subscribers(node.port, 'SHARDNUMSUB', 'rooms:{chat}:ev'), 0, `no subscription on ${node.port}`)
    t.equal(await subscribers(owner.port, 'NUMSUB', 'rooms:ev:chat'), 0, 'no classic room channel')
    const publishes = await Promise.all(cluster.nodes.map(async (node) => {
      const client = new Redis({ port: node.port, host: '127.0.0.1' })
      try {
        return /cmdstat_publish:calls=(\d+)/.exec(String(await client.info('commandstats')))?.[1] ?? '0'
      } finally {
        client.disconnect()
      }
    }))
    t.same(publishes, ['0', '0', '0'], 'no classic PUBLISH anywhere (it would be copied to every node)')
    t.same(await a.app.rooms.rooms(), ['chat'], 'rooms() finds the room on its master')
  })

  t.test('#15 an ioredis Cluster client of the host selects the cluster mode; the plugin duplicates it and leaves it open', async (t) => {
    const cluster = await startRedisCluster(t)
    const client = new Cluster(cluster.startupNodes)
    t.teardown(() => client.disconnect())
    const app = await startServer(t, { presence: false, broker: redisBroker({ client }) })
    const reader = await rawClient(app, 'jill')
    await rawJoin(reader, 'own')
    t.same(await app.app.rooms.broadcast('own', 'note', {}), { seq: 1 })
    await until(() => seqsOf(reader.frames, 'note').length === 1, 'delivered on the sharded channel')
    t.equal(await client.exists('rooms:{own}:meta'), 1, 'through the host\'s cluster')
    await app.app.close()
    t.equal(client.status, 'ready', 'the host\'s client is still open after close')
  })

  t.test('#15 history and exact resume across processes on a cluster: a raw client cut mid-stream resumes on the other process with no gap and no duplicate', async (t) => {
    const cluster = await startRedisCluster(t)
    const a = await instance(t, cluster, { presence: false })
    const b = await instance(t, cluster, { presence: false })
    const first = await rawClient(b, 'carol')
    const { epoch } = (await rawJoin(first, 'feed')).payload
    for (let i = 0; i < 5; i++) await a.app.rooms.broadcast('feed', 'tick', { i })
    await until(() => seqsOf(first.frames, 'tick').length === 5, 'five live')
    first.ws.terminate()
    for (let i = 5; i < 20; i++) await a.app.rooms.broadcast('feed', 'tick', { i })
    const again = await rawClient(a, 'carol')
    again.ws.send(JSON.stringify({ type: 'resume', id: 'r', payload: { rooms: { feed: { seq: 5, epoch } } } }))
    await until(() => seqsOf(again.frames, 'tick').length === 15, 'the replay')
    t.equal(again.frames.find((frame) => frame.type === 'ack')?.payload.rooms.feed.result, 'replayed')
    await b.app.rooms.broadcast('feed', 'tick', { i: 20 })
    await until(() => seqsOf(again.frames, 'tick').length === 16, 'then live')
    t.same([...seqsOf(first.frames, 'tick'), ...seqsOf(again.frames, 'tick')], range(1, 21), 'every event exactly once')
    t.same((await b.app.rooms.history('feed')).events.map((event) => event.seq), range(1, 21), 'history() reads the room\'s stream')
  })

  t.test('#15 presence on a cluster: joins and leaves across processes; a SIGKILLed process is reaped by a survivor, leaving no key behind', async (t) => {
    const cluster = await startRedisCluster(t)
    const inspect = inspector(t, cluster)
    const survivor = await instance(t, cluster)
    const child = await startServerProcess(t, { url: '' }, { REDIS_CLUSTER_NODES: cluster.startupNodes.map((node) => `${node.host}:${node.port}`).join(',') })
    const odd = 'room "with" {braces} and spaces'
    const observer = await connect(survivor, 'observer')
    await observer.join(odd)
    const victim = await connect(child.url, 'victim')
    await victim.join(odd)
    const victimPresence = () => observer.next((frame) => frame.type === 'presence' && frame.payload.user.id === 'victim', 'victim presence')
    t.same((await victimPresence()).payload, { action: 'join', user: { id: 'victim' } })
    t.same(await survivor.app.rooms.members(odd), [{ id: 'observer' }, { id: 'victim' }])
    t.ok((await allKeys(inspect)).some((key) => key.endsWith('}:proc:' + (key.split(':proc:')[1] ?? '')) && key.includes('{room "with" {braces')), 'the victim\'s entries sit in the room\'s slot')
    child.child.kill('SIGKILL')
    const leave = await victimPresence()
    t.same(leave.payload, { action: 'leave', user: { id: 'victim' } })
    t.same(await survivor.app.rooms.members(odd), [{ id: 'observer' }])
    await retryUntil(async () => {
      const left = (await allKeys(inspect)).filter((key) => key.includes(':proc:') && !key.startsWith('rooms:proc:'))
      if (left.length !== 1) throw new Error(`entries left: ${left.join(', ')}`)
    })
    const entries = (await allKeys(inspect)).filter((key) => key.includes('}:proc:'))
    t.equal(entries.length, 1, 'only the survivor\'s own entries remain')
    await observer.request({ type: 'leave', room: odd })
    await retryUntil(async () => {
      if ((await allKeys(inspect)).some((key) => key.includes('{room "with" {braces') && !key.endsWith(':meta') && !key.endsWith(':history'))) throw new Error('presence keys remain')
    })
    t.same(await survivor.app.rooms.rooms(), [], 'no room has members')
  })

  t.test('#15 exactly-once answers across processes on a cluster; sendToUser, disconnectUser and server-side joins reach the user\'s process on the user\'s shard channel', async (t) => {
    const cluster = await startRedisCluster(t)
    let runs = 0
    const options: Partial<RoomsOptions> = {
      presence: false,
      messages: {
        order: defineMessage({ schema: Type.Object({ item: Type.String() }), handler: (_ctx, payload) => ({ order: ++runs, item: payload.item }) }),
      },
    }
    const a = await instance(t, cluster, options)
    const b = await instance(t, cluster, options)
    const first = await connect(a, 'dave')
    t.same((await first.request({ type: 'order', payload: { item: 'book' } }, 'o-1')).payload, { order: 1, item: 'book' })
    first.ws.terminate()
    const retry = await connect(b, 'dave')
    t.same((await retry.request({ type: 'order', payload: { item: 'book' } }, 'o-1')).payload, { order: 1, item: 'book' }, 'the retry on the other process gets the first answer')
    t.equal(runs, 1, 'the handler ran once')

    const owner = await cluster.masterOf('rooms:{user:4:erin}:u')
    const subscribed = () => subscribers(owner.port, 'SHARDNUMSUB', 'rooms:{user:4:erin}:u')
    t.equal(await subscribed(), 0, 'no one subscribes for a user with no socket')
    const erin = await connect(b, 'erin')
    erin.send({ type: 'ping', id: 'p' })
    await erin.nextOfType('pong')
    t.equal(await subscribed(), 1, 'the process with her socket subscribes to her shard channel')
    await a.app.rooms.sendToUser('erin', 'notice', { text: 'hi' })
    t.same((await erin.nextOfType('notice')).payload, { text: 'hi' })
    await a.app.rooms.join({ userId: 'erin' }, 'vip')
    t.equal((await erin.nextOfType('joined')).room, 'vip', 'a server-side join by user reaches her process')
    const connectionId = erin.frames.find((frame) => frame.type === 'welcome')!.payload.connectionId
    await a.app.rooms.join({ connectionId }, 'ops')
    t.equal((await erin.nextOfType('joined')).room, 'ops', 'and one by connection id')
    await a.app.rooms.broadcast('vip', 'note', {})
    t.equal((await erin.nextOfType('note')).room, 'vip')
    await a.app.rooms.disconnectUser('erin', 4001, 'bye')
    t.same(await erin.closed, { code: 4001, reason: 'bye' })
    await retryUntil(async () => {
      if (await subscribed() !== 0) throw new Error('still subscribed')
    })
    t.pass('her channel is dropped with her last socket')
  })

  t.test('#15 the example on a cluster: two example processes with REDIS_CLUSTER_NODES chat across', async (t) => {
    const cluster = await startRedisCluster(t)
    const nodes = cluster.startupNodes.map((node) => `${node.host}:${node.port}`).join(',')
    const servers = await Promise.all([0, 1].map(async () => {
      const port = await freePort()
      const child = spawn(process.execPath, ['--import=tsx', new URL('../example/server.ts', import.meta.url).pathname], {
        stdio: ['ignore', 'pipe', 'inherit'],
        env: { ...process.env, PORT: String(port), JWT_SECRET: 'cluster-example-secret', ALLOWED_ORIGINS: ORIGIN, REDIS_CLUSTER_NODES: nodes },
      })
      t.teardown(() => { child.kill('SIGKILL') })
      let output = ''
      await bounded(new Promise<void>((resolve, reject) => {
        child.once('exit', (code) => reject(new Error(`example exited with ${code}: ${output}`)))
        child.stdout!.on('data', (chunk: Buffer) => {
          output += chunk.toString()
          if (output.includes('chat example ready')) resolve()
        })
      }), 'the example listening', 20_000)
      t.match(output, '"broker":"redis cluster"')
      return `127.0.0.1:${port}`
    }))
    const token = async (server: string, name: string) => ((await (await fetch(`http://${server}/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) })).json()) as { token: string }).token
    const alice = await connect(`ws://${servers[0]}`, 'alice', { token: await token(servers[0]!, 'alice') })
    const bob = await connect(`ws://${servers[1]}`, 'bob', { token: await token(servers[1]!, 'bob') })
    await alice.join('lobby')
    await bob.join('lobby')
    const response = await fetch(`http://${servers[1]}/rooms/lobby/announce`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${await token(servers[1]!, 'bob')}` }, body: JSON.stringify({ text: 'hello from process two' }) })
    t.equal(response.status, 200)
    t.same((await alice.nextOfType('announcement')).payload, { from: 'bob', text: 'hello from process two' }, 'an announcement on one process reaches a member on the other')
  })

  t.test('#15 the whole cluster going away: broadcasts fail fast (FST_ROOMS_BROKER), sockets stay open; when it is back, publishing resumes and members get a reset for the lost stream', async (t) => {
    const cluster = await startRedisCluster(t)
    const a = await instance(t, cluster, { presence: false })
    const watcher = await rawClient(a, 'frank')
    await rawJoin(watcher, 'news')
    await a.app.rooms.broadcast('news', 'story', { n: 1 })
    await until(() => seqsOf(watcher.frames, 'story').length === 1, 'the first story')
    await Promise.all(cluster.nodes.map((node) => node.kill()))
    const failed = await a.app.rooms.broadcast('news', 'story', { n: 2 }).then(() => undefined, (err: { code?: string }) => err.code)
    t.match(failed, /^FST_ROOMS_BROKER(_TIMEOUT)?$/, `a broadcast while the cluster is down is refused (${failed})`)
    t.equal(watcher.ws.readyState, WebSocket.OPEN, 'the socket stays open')
    // The nodes come back empty (no persistence) with their cluster configuration.
    await Promise.all(cluster.nodes.map((node) => node.start()))
    await cluster.healthy()
    const position = await retryUntil(() => a.app.rooms.broadcast('news', 'story', { n: 3 }), 30_000)
    t.equal(position.seq, 1, 'the room starts again in a new epoch')
    await until(() => watcher.frames.some((frame) => frame.type === 'reset'), 'a reset')
    const reset = watcher.frames.find((frame) => frame.type === 'reset')!
    t.not(reset.payload.epoch, watcher.frames.find((frame) => frame.type === 'ack')!.payload.epoch, 'with the new epoch')
    await until(() => watcher.frames.some((frame) => frame.type === 'story' && frame.payload.n === 3), 'the story after the outage')
  })
}

if (componentAvailable(t, redisMissing(), 'Redis Cluster failover')) {
  t.test('#15 failover: a master killed while publishing; its replica takes over, publishing resumes without a restart, and raw clients get every acknowledged event or a reset', async (t) => {
    const cluster = await startRedisCluster(t, { replicas: 1 })
    const a = await instance(t, cluster, { presence: false })
    const b = await instance(t, cluster, { presence: false })
    const readers = [await rawClient(a, 'gina'), await rawClient(b, 'hank')]
    await Promise.all(readers.map((reader) => rawJoin(reader, 'live')))
    const master = await cluster.masterOf('rooms:{live}:meta')
    const acked: Array<{ seq: number; epoch: string; n: number }> = []
    let failures = 0
    let killedAt: number | undefined
    const started = Date.now()
    // Bounded: 3000 publishes or 40 s; the master dies after the 50th acknowledged one.
    for (let n = 0; n < 3000 && Date.now() - started < 40_000; n++) {
      try {
        const { seq } = await a.app.rooms.broadcast('live', 'tick', { n })
        acked.push({ seq, epoch: '', n })
      } catch {
        failures++
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
      if (acked.length === 50 && killedAt === undefined) {
        await master.kill()
        killedAt = acked.length
      }
      if (killedAt !== undefined && acked.length >= killedAt + 50) break
    }
    t.ok(killedAt !== undefined && acked.length >= killedAt + 50, `publishing resumed after the failover (${acked.length - (killedAt ?? 0)} acknowledged after it, ${failures} refused while it ran)`)
    const last = acked.at(-1)!
    for (const reader of readers) {
      await until(() => reader.frames.some((frame) => frame.type === 'tick' && frame.payload.n === last.n), 'the last acknowledged event reaches every reader')
      // Walk the frames as a client would: within an epoch, seqs run on by one; a reset starts anew.
      let epoch = reader.frames.find((frame) => frame.type === 'ack')!.payload.epoch as string
      let lastSeq = reader.frames.find((frame) => frame.type === 'ack')!.payload.seq as number
      const received = new Set<number>()
      const resets: Array<{ from: string; lastSeq: number }> = []
      let broken = 0
      for (const frame of reader.frames) {
        if (frame.type === 'reset') {
          resets.push({ from: epoch, lastSeq })
          epoch = frame.payload.epoch
          lastSeq = frame.payload.seq
        } else if (frame.type === 'tick') {
          if (frame.seq !== lastSeq + 1) broken++
          lastSeq = frame.seq!
          received.add(frame.payload.n)
        }
      }
      t.equal(broken, 0, 'no gap and no duplicate within an epoch')
      // An acknowledged event that never arrived must lie past the point a reset moved the reader on from.
      const silent = acked.filter((event) => !received.has(event.n) && !resets.some((reset) => reset.lastSeq < event.seq))
      t.same(silent, [], `no acknowledged event lost without a reset (${resets.length} reset(s), ${acked.length - acked.filter((event) => received.has(event.n)).length} not delivered)`)
    }
    t.equal(master.running, false)
  })
}

if (componentAvailable(t, redisMissing(), 'Redis stream regression')) {
  t.test('#15 a room whose Redis lost events a process delivered (as after a failover before replication) gets a new epoch: members reset, never handed the reused seqs', async (t) => {
    const redis = await startRedis(t)
    const proxy = await startProxy(redis.port)
    t.teardown(() => proxy.close())
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    // A reaches Redis through the proxy (its connections can be stalled, then cut); B publishes directly.
    const a = await startServer(t, { broker: redisBroker({ url: `redis://127.0.0.1:${proxy.port}`, processTtlMs: 600 }), presence: false })
    const b = await startServer(t, { broker: redisBroker({ url: redis.url, processTtlMs: 600 }), presence: false })
    const reader = await rawClient(a, 'ivan')
    const { epoch } = (await rawJoin(reader, 'r')).payload
    for (let n = 0; n < 10; n++) await b.app.rooms.broadcast('r', 'tick', { n })
    await until(() => seqsOf(reader.frames, 'tick').length === 10, 'ten delivered')
    proxy.stall()
    // What a failover before replication leaves: the room's seq and stream as they were three events ago.
    await inspect.hset('rooms:{r}:meta', 'seq', 7)
    for (const [id, fields] of await inspect.xrange('rooms:{r}:history', '-', '+')) if (Number(fields[1]) > 7) await inspect.xdel('rooms:{r}:history', id)
    // The new run hands out 8…11 again, for other events, while A hears nothing.
    for (let n = 10; n < 14; n++) t.same(await b.app.rooms.broadcast('r', 'tick', { n }), { seq: n - 2 })
    proxy.cut()
    await until(() => reader.frames.some((frame) => frame.type === 'reset'), 'a reset')
    const reset = reader.frames.find((frame) => frame.type === 'reset')!
    t.not(reset.payload.epoch, epoch, 'a new epoch')
    t.equal(reset.payload.seq, 11, 'at the room\'s position')
    t.same(reader.frames.filter((frame) => frame.type === 'tick').map((frame) => [frame.seq, frame.payload.n]), range(1, 10).map((seq) => [seq, seq - 1]), 'none of the reused seqs was handed out')
    t.same(await inspect.hmget('rooms:{r}:meta', 'seq', 'epoch'), ['11', reset.payload.epoch], 'Redis has the new epoch')
    t.equal(await inspect.exists('rooms:{r}:history'), 0, 'the broken run\'s history is gone')
    t.ok(a.logs.some((line) => line.includes('"level":40') && line.includes('lost events this process had delivered')), 'a warn line says so')
    await b.app.rooms.broadcast('r', 'tick', { n: 14 })
    await until(() => reader.frames.some((frame) => frame.type === 'tick' && frame.payload.n === 14), 'live again')
    t.equal(reader.frames.find((frame) => frame.type === 'tick' && frame.payload.n === 14)?.seq, 12)
    const resumer = await rawClient(b, 'ivan')
    resumer.ws.send(JSON.stringify({ type: 'resume', id: 'r', payload: { rooms: { r: { seq: 10, epoch } } } }))
    await until(() => resumer.frames.some((frame) => frame.type === 'reset'), 'the resumer is reset too')
    t.match(resumer.frames.find((frame) => frame.type === 'reset'), { room: 'r', payload: { seq: 12, epoch: reset.payload.epoch } }, 'at the new epoch\'s position')
  })
}

// Publishing through PostgreSQL, side by side in one run: the Postgres broker (one hot room; 100 rooms;
// each publish in its own BEGIN … COMMIT as a host's route would), the Redis broker, and Socket.IO 4.8
// with @socket.io/postgres-adapter. Two servers per target in this process: the publisher's and a member's
// (a raw WebSocket joined to the room), so every event crosses the database (or Redis) once. Reported:
// publishes/s end to end (publish start to the last delivery; 8 in flight for ours, Socket.IO's emit
// cannot be awaited: one per event-loop turn), publish→delivery p50/p99 at saturation and at 100 publishes/s, and the database server's CPU
// per publish (every PostgreSQL process's utime + stime from /proc). `npm run bench:postgres` starts its
// own PostgreSQL and redis-server on free loopback ports and stops them by PID. Never asserted in tests.
import { readFileSync, readdirSync } from 'node:fs'
import http from 'node:http'
import { performance } from 'node:perf_hooks'
import { createAdapter } from '@socket.io/postgres-adapter'
import Fastify, { type FastifyInstance } from 'fastify'
import { createSigner } from 'fast-jwt'
import pg from 'pg'
import { Server } from 'socket.io'
import WebSocket from 'ws'
import rooms from '../lib/index.js'
import { postgresBroker } from '../lib/brokers/postgres.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { freePort } from '../test/helpers/components.js'
import { startPostgres } from '../test/helpers/postgres.js'
import { spawnRedisServer, stopProcess } from '../test/helpers/redis.js'

const PUBLISHES = Number(process.argv.find((arg) => arg.startsWith('--publishes='))?.slice(12) ?? 3000)
const IN_FLIGHT = 8
/** `--only=redis` runs the targets whose name has that word (e.g. the Redis broker's publish → delivery latency). */
const ONLY = process.argv.find((arg) => arg.startsWith('--only='))?.slice(7)
const wanted = (target: string) => ONLY === undefined || target.toLowerCase().includes(ONLY.toLowerCase())
const SECRET = 'bench-secret-0123456789'
const sign = createSigner({ key: SECRET, expiresIn: 3_600_000 })
const now = () => performance.timeOrigin + performance.now()

interface Result { target: string; publishesPerSecond: number; nodeCpuUsPerPublish: number; deliveredPct: number; p50ms: number; p99ms: number; lightP50ms: number; lightP99ms: number; dbCpuUsPerPublish: number | '' }

function percentile (sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]!
}

/** CPU seconds of a process and its children (the postmaster's backends), from /proc. */
function treeCpuSeconds (rootPid: number): number {
  const ticks = 100
  let total = 0
  const pids = [rootPid]
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (Number(fields[1]) === rootPid) pids.push(Number(entry))
    } catch { /* gone */ }
  }
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      total += (Number(fields[11]) + Number(fields[12])) / ticks
    } catch { /* gone */ }
  }
  return total
}

async function pluginServer (broker: Parameters<typeof rooms>[1]['broker']): Promise<FastifyInstance> {
  const app = Fastify()
  await app.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: '*', presence: false, broker, handshakeRateLimit: false, rateLimit: false, maxRoomsPerConnection: 200 })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return app
}

/** A raw protocol member of `rooms` on `port`; calls onEvent with each event's publish time. */
async function member (port: number, roomNames: string[], onEvent: (sentAt: number) => void): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, ['rooms.v1', `bearer.${sign({ sub: 'reader' })}`], { origin: 'http://bench.test' })
  let acks = 0
  await new Promise<void>((resolve, reject) => {
    ws.once('error', reject)
    ws.on('message', (data) => {
      const frame = JSON.parse(data.toString()) as { type: string; payload?: { t?: number } }
      if (frame.type === 'welcome') for (const room of roomNames) ws.send(JSON.stringify({ type: 'join', id: room, room }))
      else if (frame.type === 'ack' && ++acks === roomNames.length) resolve()
      else if (frame.type === 'ev') onEvent(frame.payload!.t!)
      else if (frame.type === 'error') reject(new Error(JSON.stringify(frame)))
    })
  })
  return ws
}

async function measure (target: string, publish: (index: number, payload: { t: number; text: string }) => Promise<unknown>, received: () => number[], dbPid: number | undefined): Promise<Result> {
  const text = 'x'.repeat(100)
  // Saturation: 8 publishes in flight, back to back.
  const cpuBefore = dbPid === undefined ? 0 : treeCpuSeconds(dbPid)
  const nodeBefore = process.cpuUsage()
  const started = now()
  let next = 0
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < PUBLISHES) await publish(next++, { t: now(), text })
  }))
  const deadline = Date.now() + 30_000
  while (received().length < PUBLISHES && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5))
  // End to end: until the last delivery (Socket.IO's emit returns before its NOTIFY is sent).
  const delivered = now()
  const cpu = dbPid === undefined ? 0 : treeCpuSeconds(dbPid) - cpuBefore
  const node = process.cpuUsage(nodeBefore)
  const saturated = [...received()].sort((a, b) => a - b)
  const deliveredPct = Math.round((saturated.length / PUBLISHES) * 1000) / 10
  const seconds = (delivered - started) / 1000
  // 100 publishes/s for 3 s.
  const light = received().length
  for (let i = 0; i < 300; i++) {
    void publish(PUBLISHES + i, { t: now(), text })
    await new Promise((resolve) => setTimeout(resolve, 10))
  }
  const lightDeadline = Date.now() + 10_000
  while (received().length < light + 300 && Date.now() < lightDeadline) await new Promise((resolve) => setTimeout(resolve, 20))
  const lightSorted = received().slice(light).sort((a, b) => a - b)
  return {
    target,
    publishesPerSecond: Math.round(saturated.length / seconds),
    nodeCpuUsPerPublish: Math.round((node.user + node.system) / PUBLISHES),
    deliveredPct,
    p50ms: round(percentile(saturated, 0.5)),
    p99ms: round(percentile(saturated, 0.99)),
    lightP50ms: round(percentile(lightSorted, 0.5)),
    lightP99ms: round(percentile(lightSorted, 0.99)),
    dbCpuUsPerPublish: dbPid === undefined ? '' : Math.round((cpu / PUBLISHES) * 1e6 * 10) / 10,
  }
}

const round = (value: number) => Math.round(value * 100) / 100

async function runPlugin (target: string, make: () => Parameters<typeof rooms>[1]['broker'], roomCount: number, dbPid: number | undefined, pool?: pg.Pool): Promise<Result> {
  const publisher = await pluginServer(make())
  const reader = await pluginServer(make())
  const latencies: number[] = []
  const roomNames = Array.from({ length: roomCount }, (_, i) => `room-${i}`)
  const ws = await member((reader.server.address() as import('node:net').AddressInfo).port, roomNames, (sentAt) => latencies.push(now() - sentAt))
  const publish = pool === undefined
    ? (index: number, payload: object) => publisher.rooms.broadcast(roomNames[index % roomCount]!, 'ev', payload)
    : async (index: number, payload: object) => {
      const client = await pool.connect()
      try {
        await client.query('BEGIN')
        await publisher.rooms.broadcast(roomNames[index % roomCount]!, 'ev', payload, { transaction: client })
        await client.query('COMMIT')
      } finally {
        client.release()
      }
    }
  const result = await measure(target, publish, () => latencies, dbPid)
  ws.close()
  await publisher.close()
  await reader.close()
  return result
}

async function runSocketIo (pool: pg.Pool, dbPid: number): Promise<Result> {
  await pool.query('CREATE TABLE IF NOT EXISTS socket_io_attachments (id bigserial UNIQUE, created_at timestamptz DEFAULT NOW(), payload bytea)')
  const servers = await Promise.all([0, 1].map(async () => {
    const server = http.createServer()
    const io = new Server(server, { transports: ['websocket'], serveClient: false })
    io.adapter(createAdapter(pool))
    io.on('connection', (socket) => {
      void socket.join('room-0')
      socket.emit('welcome')
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    return { server, io, port: (server.address() as import('node:net').AddressInfo).port }
  }))
  const latencies: number[] = []
  const ws = new WebSocket(`ws://127.0.0.1:${servers[1]!.port}/socket.io/?EIO=4&transport=websocket`)
  await new Promise<void>((resolve, reject) => {
    ws.once('error', reject)
    ws.on('message', (data) => {
      const text = data.toString()
      if (text.startsWith('0')) ws.send('40')
      else if (text === '2') ws.send('3')
      else if (text.startsWith('42["welcome"')) resolve()
      else if (text.startsWith('42["ev"')) latencies.push(now() - (JSON.parse(text.slice(2)) as [string, { t: number }])[1].t)
    })
  })
  // emit() returns at once (the adapter NOTIFYs in the background): awaiting a turn keeps the loop fair.
  const result = await measure('socket.io + postgres-adapter', async (_index, payload) => {
    servers[0]!.io.to('room-0').emit('ev', payload)
    await new Promise((resolve) => setImmediate(resolve))
  }, () => latencies, dbPid)
  ws.close()
  for (const { io } of servers) io.close()
  return result
}

const teardowns: Array<() => unknown> = []
const t = { teardown: (fn: () => unknown) => { teardowns.push(fn) } }
try {
  const db = await startPostgres(t)
  const redisPort = await freePort()
  const redis = await spawnRedisServer(['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], 'redis-server')
  teardowns.push(() => stopProcess(redis, 'SIGTERM', 'redis-server'))
  const pool = new pg.Pool({ connectionString: db.url, max: 20 })
  teardowns.push(() => pool.end())
  const dbPid = db.pid()!
  const results: Result[] = []
  const onPostgres = () => postgresBroker({ connectionString: db.url, poolSize: 10 })
  if (wanted('plugin, Postgres broker, one room')) results.push(await runPlugin('plugin, Postgres broker, one room', onPostgres, 1, dbPid))
  if (wanted('plugin, Postgres broker, 100 rooms')) results.push(await runPlugin('plugin, Postgres broker, 100 rooms', onPostgres, 100, dbPid))
  if (wanted('plugin, Postgres broker, in BEGIN … COMMIT')) results.push(await runPlugin('plugin, Postgres broker, in BEGIN … COMMIT', onPostgres, 1, dbPid, pool))
  if (wanted('plugin, Redis broker, one room')) results.push(await runPlugin('plugin, Redis broker, one room', () => redisBroker({ url: `redis://127.0.0.1:${redisPort}` }), 1, undefined))
  if (wanted('socket.io + postgres-adapter')) results.push(await runSocketIo(pool, dbPid))
  console.log(`${PUBLISHES} publishes per target (${IN_FLIGHT} in flight for the plugin); Node ${process.version}; one process, loopback`)
  console.log('| target | publishes/s | delivered % | p50 ms | p99 ms | p50 ms at 100/s | p99 ms at 100/s | PostgreSQL CPU µs per publish | Node CPU µs per publish (both servers and the member) |')
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const r of results) console.log(`| ${r.target} | ${r.publishesPerSecond} | ${r.deliveredPct} | ${r.p50ms} | ${r.p99ms} | ${r.lightP50ms} | ${r.lightP99ms} | ${r.dbCpuUsPerPublish} | ${r.nodeCpuUsPerPublish} |`)
} catch (err) {
  console.error(err)
  process.exitCode = 1
} finally {
  for (const teardown of teardowns.reverse()) await teardown()
}

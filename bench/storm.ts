// The reconnect storm: as many clients of our own client as this machine's open-file limit lets one server
// process hold (20,000 per process here: 19,700 clients), in 100 rooms on Redis, with events published all
// along from another process. Then every connection drops at once — the server restarted (SIGTERM, a new
// process on the same port: a deploy) or every TCP connection cut (no close frame) — and the bench reports
// how long until every client is open again, how many handshakes were refused (503 from load shedding,
// retried after Retry-After), events lost (must be 0: each client's seqs after the fault are exactly the
// room's, or a reset covers them), duplicates, and the server's peak RSS and CPU meanwhile.
// `npm run bench:storm -- [--clients=N] [--faults=restart,cut] [--shedding=on|off]` (STORM_BACKLOG=4096: the
// server's listen backlog; STORM_CPU_PROF=<dir>: its CPU profile); it starts its own redis-server and
// processes on free loopback ports and stops them by PID. The clients share this machine with the server.
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { readFileSync } from 'node:fs'
import net from 'node:net'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import rooms from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import type { Command, Report } from './storm/clients.js'
import { freePort } from '../test/helpers/components.js'

const arg = (name: string) => process.argv.find((value) => value.startsWith(`--${name}=`))?.slice(name.length + 3)
const FD_LIMIT = Number(spawnSync('sh', ['-c', 'ulimit -n']).stdout.toString().trim())
const CLIENTS = Number(arg('clients') ?? Math.min(20_000, FD_LIMIT - 300))
const ROOMS = 100
const CLIENT_PROCESSES = 4
/** Events per second over all rooms, published from a process of its own kind (no sockets). */
const RATE = Number(arg('rate') ?? 100)
const FAULTS = (arg('faults') ?? 'restart,cut').split(',')
const SHEDDING = arg('shedding') ?? 'on'
/** `socketio`: Socket.IO 4.8 with connection-state recovery, on the cut only (its recovery state lives in the process a restart loses). */
const TARGETS = (arg('targets') ?? 'plugin').split(',')
/** How long after the last client is open again the publisher keeps going, then everything is checked. */
const SETTLE_MS = 3000
/** A fault not recovered from within this long is reported as such. */
const RECOVERY_LIMIT_MS = 180_000

const serverScripts = { plugin: fileURLToPath(new URL('./servers/storm.ts', import.meta.url)), socketio: fileURLToPath(new URL('./servers/storm-socketio.ts', import.meta.url)) }
const clientScripts = { plugin: fileURLToPath(new URL('./storm/clients.ts', import.meta.url)), socketio: fileURLToPath(new URL('./storm/socketio-clients.ts', import.meta.url)) }
let target: 'plugin' | 'socketio' = 'plugin'

async function startServer (port: number, redisUrl: string): Promise<ChildProcess> {
  const serverScript = serverScripts[target]
  // STORM_CPU_PROF=<dir>: the server writes a CPU profile there when it exits.
  const profile = process.env.STORM_CPU_PROF === undefined ? [] : ['--cpu-prof', `--cpu-prof-dir=${process.env.STORM_CPU_PROF}`]
  const child = spawn(process.execPath, [...profile, '--import', 'tsx', serverScript], { env: { ...process.env, PORT: String(port), REDIS_URL: redisUrl, STORM_SHEDDING: SHEDDING, STORM_RATE: String(RATE), STORM_BACKLOG: process.env.STORM_BACKLOG ?? '511' }, stdio: ['ignore', 'pipe', 'inherit'] })
  const [line] = await Promise.race([
    once(child.stdout!, 'data'),
    new Promise<never>((_resolve, reject) => setTimeout(() => reject(new Error('the storm server did not start within 30 s')), 30_000)),
  ])
  if (!/^\d+/.test(String(line))) throw new Error(`the storm server said ${String(line)}`)
  child.stdout!.resume()
  return child
}

/** CPU seconds and RSS of a process, from /proc. */
function usage (pid: number): { cpuSeconds: number; rssBytes: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
    return { cpuSeconds: (Number(fields[11]) + Number(fields[12])) / 100, rssBytes: Number(fields[21]) * 4096 }
  } catch {
    return { cpuSeconds: 0, rssBytes: 0 }
  }
}

function ask<T> (child: ChildProcess, command: Command, type: string, ms = 180_000): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${type} from a client process within ${ms} ms`)), ms)
    const onMessage = (message: { type: string } & T) => {
      if (message.type !== type) return
      clearTimeout(timer)
      child.off('message', onMessage)
      resolve(message)
    }
    child.on('message', onMessage)
    child.send(command)
  })
}

async function run (fault: string): Promise<Record<string, unknown>> {
  const redisPort = await freePort()
  const redis = spawn('redis-server', ['--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  const redisUrl = `redis://127.0.0.1:${redisPort}`
  const children: ChildProcess[] = [redis]
  try {
    for (let i = 0; i < 50; i++) {
      const up = await new Promise<boolean>((resolve) => net.connect(redisPort, '127.0.0.1').once('connect', function (this: net.Socket) { this.destroy(); resolve(true) }).once('error', () => resolve(false)))
      if (up) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const port = await freePort()
    let server = await startServer(port, redisUrl)
    children.push(server)
    // The publisher: a process of the same app without sockets, publishing to every room in turn (Socket.IO's
    // server publishes itself: its recovery needs the in-memory adapter).
    const publisher = Fastify({ logger: false })
    await publisher.register(rooms, { jwt: { secret: 'unused-secret-0123456789' }, allowedOrigins: '*', presence: false, broker: redisBroker({ url: redisUrl }) })
    await publisher.ready()
    const lastSeq = new Map<string, number>()
    let publishFailures = 0
    let next = 0
    const publishing = setInterval(() => {
      if (target !== 'plugin') return
      for (let i = 0; i < RATE / 20; i++) {
        const room = `room-${next++ % ROOMS}`
        publisher.rooms.broadcast(room, 'event', { n: next }).then(({ seq }) => {
          lastSeq.set(room, Math.max(lastSeq.get(room) ?? 0, seq))
        }, () => { publishFailures++ })
      }
    }, 50)
    const shares = Array.from({ length: CLIENT_PROCESSES }, () => [] as Array<[number, string]>)
    for (let user = 0; user < CLIENTS; user++) shares[user % CLIENT_PROCESSES]!.push([user, `room-${user % ROOMS}`])
    const clients = shares.map(() => fork(clientScripts[target], [], { execArgv: ['--import', 'tsx', '--max-old-space-size=4096'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
    children.push(...clients)
    const connectStarted = performance.now()
    await Promise.all(clients.map((child, i) => ask(child, { cmd: 'start', port, clients: shares[i]! }, 'started', 600_000)))
    const connectMs = performance.now() - connectStarted
    // Steady state past the client's stableAfterMs (10 s: its backoff starts over, as after hours online), then the fault.
    await new Promise((resolve) => setTimeout(resolve, 11_000))
    await Promise.all(clients.map((child) => ask(child, { cmd: 'mark' }, 'marked')))
    const faultAt = performance.now()
    let peakRss = 0
    let cpuBefore = 0
    const sampled = (pid: number) => {
      const now = usage(pid)
      peakRss = Math.max(peakRss, now.rssBytes)
      return now
    }
    if (fault === 'restart') {
      cpuBefore = 0
      server.kill('SIGTERM')
      await once(server, 'exit')
      server = await startServer(port, redisUrl)
      children.push(server)
    } else {
      cpuBefore = usage(server.pid!).cpuSeconds
      const answer = await fetch(`http://127.0.0.1:${port}/bench/cut`, { method: 'POST' })
      if (!answer.ok) throw new Error(`cut: ${answer.status}`)
    }
    // Sample the (new) server while the clients come back; done when every client is open again.
    let allOpenMs = -1
    const deadline = faultAt + RECOVERY_LIMIT_MS
    let connections = 0
    while (performance.now() < deadline) {
      sampled(server.pid!)
      const stats = await fetch(`http://127.0.0.1:${port}/bench/stats`).then((response) => response.json() as Promise<{ connections: number }>).catch(() => ({ connections: 0 }))
      connections = stats.connections
      if (connections >= CLIENTS) {
        allOpenMs = performance.now() - faultAt
        break
      }
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
    const cpuSeconds = usage(server.pid!).cpuSeconds - cpuBefore
    await new Promise((resolve) => setTimeout(resolve, SETTLE_MS))
    clearInterval(publishing)
    if (target === 'socketio') await fetch(`http://127.0.0.1:${port}/bench/stop`, { method: 'POST' })
    // Whatever is in flight lands, then every client says what it got.
    await new Promise((resolve) => setTimeout(resolve, 2000))
    if (target === 'socketio') {
      const { last } = await fetch(`http://127.0.0.1:${port}/bench/stats`).then((response) => response.json() as Promise<{ last: Record<string, number> }>)
      for (const [room, n] of Object.entries(last)) lastSeq.set(room, n)
    }
    // Every open client must end with every event of its room after where it stood (or a reset covering
    // them). Replays still on their way are given time: the check repeats every 2 s while what is missing
    // shrinks (at most 30 s); a client not open at the end is owed its events, not counted as losing them.
    const check = async () => {
      const reports = await Promise.all(clients.map((child) => ask<{ report: Report }>(child, { cmd: 'report' }, 'report').then((message) => message.report)))
      const result = { lost: 0, duplicates: 0, resets: 0, outOfOrder: 0, notBack: 0, undeliveredNotBack: 0, reopened: [] as number[], refusals: {} as Record<string, number> }
      for (const report of reports) {
        for (const [code, count] of Object.entries(report.refusals)) result.refusals[code] = (result.refusals[code] ?? 0) + count
        for (const client of report.clients) {
          result.resets += client.resets.length
          const final = lastSeq.get(client.room) ?? 0
          let highest = client.markedSeq
          for (const seq of client.seqs) highest = Math.max(highest, seq)
          if (client.reopenedMs < 0 || !client.openNow) {
            result.notBack++
            result.undeliveredNotBack += final - highest
            continue
          }
          result.reopened.push(client.reopenedMs)
          const seen = new Set<number>()
          let previous = client.markedSeq
          for (const seq of client.seqs) {
            if (seen.has(seq)) result.duplicates++
            else if (seq <= previous) result.outOfOrder++
            seen.add(seq)
            previous = Math.max(previous, seq)
          }
          // A reset says the events up to its seq cannot be replayed: those are covered, not lost.
          let coveredUpTo = client.markedSeq
          for (const seq of client.resets) coveredUpTo = Math.max(coveredUpTo, seq)
          for (let seq = coveredUpTo + 1; seq <= final; seq++) if (!seen.has(seq)) result.lost++
        }
      }
      return result
    }
    let outcome = await check()
    for (let waited = 0; outcome.lost > 0 && waited < 30_000; waited += 2000) {
      await new Promise((resolve) => setTimeout(resolve, 2000))
      const again = await check()
      const shrinking = again.lost < outcome.lost
      outcome = again
      if (!shrinking) break
    }
    const { lost, duplicates, resets, outOfOrder, notBack, undeliveredNotBack, reopened, refusals } = outcome
    reopened.sort((a, b) => a - b)
    const server2 = usage(server.pid!)
    for (const child of clients) child.send({ cmd: 'close' } satisfies Command)
    await publisher.close()
    if (process.env.STORM_CPU_PROF !== undefined) {
      server.kill('SIGTERM')
      await once(server, 'exit')
    }
    return {
      target,
      fault,
      clients: CLIENTS,
      shedding: SHEDDING,
      listenBacklog: Number(process.env.STORM_BACKLOG ?? 511),
      initialConnectS: Number((connectMs / 1000).toFixed(1)),
      allOpenAgainS: allOpenMs < 0 ? `not within ${RECOVERY_LIMIT_MS / 1000} s (${connections} open)` : Number((allOpenMs / 1000).toFixed(2)),
      reopenedP50S: Number(((reopened[Math.floor(reopened.length * 0.5)] ?? 0) / 1000).toFixed(2)),
      reopenedP99S: Number(((reopened[Math.floor(reopened.length * 0.99)] ?? 0) / 1000).toFixed(2)),
      notBack,
      undeliveredToClientsNotBack: undeliveredNotBack,
      refused: refusals,
      eventsLost: lost,
      duplicates,
      outOfOrder,
      resets,
      publishFailures,
      peakRssMB: Math.round(peakRss / 1e6),
      serverCpuSecondsToRecover: Number(cpuSeconds.toFixed(1)),
      serverRssAfterMB: Math.round(server2.rssBytes / 1e6),
    }
  } finally {
    for (const child of children.reverse()) child.kill('SIGKILL')
  }
}

console.log(`reconnect storm: ${CLIENTS} clients (our own client; Socket.IO's protocol for Socket.IO) (open-file limit ${FD_LIMIT} per process), ${ROOMS} rooms, ${RATE} events/s, Redis; Node ${process.version}`)
for (const name of TARGETS) {
  target = name as 'plugin' | 'socketio'
  for (const fault of FAULTS) {
    if (target === 'socketio' && fault !== 'cut') continue
    console.log(JSON.stringify(await run(fault)))
  }
}
process.exit(0)

// Side-by-side benchmark: fastify-rooms vs a naive raw ws server vs Socket.IO 4, same load clients, same run.
// `npm run bench` (full, several minutes) or `npm run bench -- --quick` (a smoke run under a minute).
// Servers run pinned to core 0, load clients and this orchestrator to core 1 (when taskset exists).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdirSync, writeFileSync } from 'node:fs'
import http from 'node:http'
import { cpus } from 'node:os'
import { fileURLToPath } from 'node:url'
import type { ConnectCommand, Target } from './client.js'
import { emptyHistogram, merge, quantile, type HistogramData } from './histogram.js'

const quick = process.argv.includes('--quick')
const only = process.argv.find((arg) => arg.startsWith('--targets='))?.slice('--targets='.length).split(',') as Target[] | undefined
const TARGETS: Target[] = only ?? ['plugin', 'ws', 'socketio']
/** --scenarios=fanout,rooms,handshakes,compression,sse,density (default all but density); --fanout=10000 (sizes); --profile (node --cpu-prof for servers). */
const argument = (name: string) => process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3)
const SCENARIOS = argument('scenarios')?.split(',') ?? ['fanout', 'rooms', 'handshakes', 'compression', 'sse']
/** The density scenario's heartbeat (the plugin's `heartbeatMs`; raw ws pings on the same interval), short enough to see ticks. */
const DENSITY_HEARTBEAT_MS = 5000
const PROFILE = process.argv.includes('--profile')
const CONFIG: { fanout: number[]; repeats: number; durationMs: number; drainMs: number; rooms: { count: number; members: number }; handshakes: number; idle: number; clients: number; compression: number } = quick
  ? { fanout: [200], repeats: 1, durationMs: 1000, drainMs: 1000, rooms: { count: 20, members: 10 }, handshakes: 300, idle: 500, clients: 2, compression: 200 }
  : { fanout: [1000, 5000, 10000], repeats: 3, durationMs: 4000, drainMs: 4000, rooms: { count: 1000, members: 10 }, handshakes: 3000, idle: 5000, clients: 2, compression: 1000 }
/** Sub-saturation: 50k deliveries/s whatever C (50 msg/s at C = 1000, the rate the issue's figures use). */
const SUB_SATURATION_DELIVERIES_PER_SECOND = 50_000
const PAYLOAD_PAD = 'x'.repeat(100)
/** The compression scenario's rate: 10k deliveries/s (10 msg/s of 4 KiB at C = 1000), below every target's ceiling. */
const COMPRESSION_DELIVERIES_PER_SECOND = 10_000

/**
 * About 4 KiB of chat-like JSON (ids, names, sentences, timestamps), what a chat room's event carries; 64
 * different ones in turn, so that no event repeats one still in a 32 KiB deflate window (which would flatter
 * per-socket context takeover far beyond real traffic).
 */
const CHAT_LOGS = (() => {
  const words = ['the', 'deploy', 'is', 'green', 'again', 'after', 'we', 'rolled', 'back', 'cache', 'latency', 'spike', 'on', 'eu-west', 'looks', 'fine', 'now', 'ship', 'it', 'tomorrow', 'review', 'please', 'merged', 'thanks', 'queue', 'retry', 'metrics', 'dashboard', 'alert', 'resolved']
  const names = ['Ada', 'Grace', 'Linus', 'Barbara', 'Ken', 'Margaret', 'Dennis', 'Frances']
  let seed = 7
  const random = (n: number) => Math.floor(((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648) * n)
  let at = 1_764_590_400_000
  let id = 10_000
  return Array.from({ length: 64 }, () => {
    const messages: Array<{ id: string; user: { id: string; name: string }; text: string; at: number }> = []
    while (JSON.stringify(messages).length < 3900) {
      const text = Array.from({ length: 6 + random(10) }, () => words[random(words.length)]).join(' ')
      const user = random(names.length)
      messages.push({ id: `m${id++}`, user: { id: `u${user}`, name: names[user]! }, text, at: (at += random(5000)) })
    }
    return messages
  })
})()

if (argument('fanout') !== undefined) CONFIG.fanout = argument('fanout')!.split(',').map(Number)
const here = (path: string) => fileURLToPath(new URL(path, import.meta.url))
const pinned = spawnSync('taskset', ['--version']).status === 0 && cpus().length >= 2
if (pinned) spawnSync('taskset', ['-p', '-c', '1', String(process.pid)])
const node = (core: number, script: string, extra: string[] = []) =>
  pinned ? ['taskset', ['-c', String(core), process.execPath, ...extra, '--import=tsx', script]] as const : [process.execPath, [...extra, '--import=tsx', script]] as const

interface Server {
  port: number
  stats(gc?: boolean): Promise<{ cpuMicros: number; rss: number; heapUsed: number; connections: number; egressBytes: number }>
  stop(): Promise<void>
}

async function startServer (target: Target, env: Record<string, string> = {}): Promise<Server> {
  const profile = PROFILE ? ['--cpu-prof', `--cpu-prof-dir=${here(`./results/profiles/${target}`)}`] : []
  // The SSE fallback is the plugin's own server with `sse` on.
  const script = target === 'plugin-sse' ? 'plugin' : target
  if (target === 'plugin-sse') env = { ...env, BENCH_SSE: '1' }
  const [command, args] = node(0, here(`./servers/${script}.ts`), ['--expose-gc', ...profile])
  const child = spawn(command, args, { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } })
  let output = ''
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes('\n')) resolve()
    })
    child.once('exit', (code) => reject(new Error(`${target} server exited with ${code}`)))
  })
  const port = Number(output.trim())
  return {
    port,
    stats: async (gc = false) => (await fetch(`http://127.0.0.1:${port}/stats${gc ? '?gc=1' : ''}`)).json() as never,
    stop: async () => {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      // SIGTERM lets a profiled server write its profile on the way out.
      child.kill(PROFILE ? 'SIGTERM' : 'SIGKILL')
      await exited
    },
  }
}

class Clients {
  private readonly children: ChildProcess[] = []
  constructor (count: number) {
    for (let i = 0; i < count; i++) {
      const [command, args] = node(1, here('./client.ts'))
      this.children.push(spawn(command, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
    }
  }

  private ask<T>(child: ChildProcess, message: object, reply: string): Promise<T> {
    return new Promise((resolve) => {
      const listener = (answer: { cmd: string }) => {
        if (answer.cmd !== reply) return
        child.off('message', listener)
        resolve(answer as T)
      }
      child.on('message', listener)
      child.send(message)
    })
  }

  /** Opens the connections, spread over the client processes; resolves with the time taken and failures. */
  async connect (target: Target, port: number, connections: Array<[number, string]>, concurrency = 50, spreadSources = false): Promise<{ ms: number; failed: number }> {
    const shares = this.children.map((_, i) => connections.filter((_, j) => j % this.children.length === i))
    // Each child times its own connecting (its boot does not count); the slowest one is the wall time.
    const answers = await Promise.all(this.children.map((child, i) =>
      this.ask<{ ms: number; failed: number }>(child, { cmd: 'connect', target, port, connections: shares[i]!, concurrency, spreadSources } satisfies ConnectCommand, 'connected')))
    return { ms: Math.max(...answers.map((answer) => answer.ms)), failed: answers.reduce((sum, answer) => sum + answer.failed, 0) }
  }

  async reset (): Promise<void> {
    await Promise.all(this.children.map((child) => this.ask(child, { cmd: 'reset' }, 'reset')))
  }

  async histogram (): Promise<HistogramData> {
    const total = emptyHistogram()
    for (const child of this.children) merge(total, (await this.ask<{ histogram: HistogramData }>(child, { cmd: 'report' }, 'report')).histogram)
    return total
  }

  async close (): Promise<void> {
    await Promise.all(this.children.map((child) => {
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.send({ cmd: 'close' })
      return exited
    }))
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

// http.request with a keep-alive agent: fetch costs the publisher more per request than the servers spend.
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 })

type PayloadKind = 'small' | 'chat'

function publish (port: number, room: string, n: number, kind: PayloadKind): Promise<void> {
  const sentAt = performance.timeOrigin + performance.now()
  const body = JSON.stringify({ room, payload: kind === 'small' ? { n, sentAt, pad: PAYLOAD_PAD } : { n, sentAt, messages: CHAT_LOGS[n % CHAT_LOGS.length] } })
  return new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, path: '/publish', method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (response) => {
      response.resume()
      response.on('end', resolve)
    })
    request.on('error', reject)
    request.end(body)
  })
}

/**
 * Publishes for durationMs, at `rate` per second (open loop, at most 64 in flight) or, with rate Infinity,
 * back to back with 8 in flight (saturation). Returns how many were published.
 */
async function publishFor (port: number, rooms: () => string, rate: number, durationMs: number, kind: PayloadKind): Promise<number> {
  const inFlight = new Set<Promise<unknown>>()
  const limit = rate === Infinity ? 8 : 64
  const started = performance.now()
  let published = 0
  while (performance.now() - started < durationMs) {
    if (rate !== Infinity) {
      const due = started + (published * 1000) / rate
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
    }
    while (inFlight.size >= limit) await Promise.race(inFlight)
    const request = publish(port, rooms(), published++, kind).catch(() => {})
    inFlight.add(request)
    void request.finally(() => inFlight.delete(request))
  }
  await Promise.all(inFlight)
  return published
}

/** Waits until `expected` deliveries arrived or drainMs passed without all of them. */
async function drain (clients: Clients, expected: number): Promise<HistogramData> {
  const deadline = performance.now() + CONFIG.drainMs
  let histogram = await clients.histogram()
  while (histogram.count < expected && performance.now() < deadline) {
    await sleep(100)
    histogram = await clients.histogram()
  }
  return histogram
}

interface Row {
  scenario: string
  target: string
  connections: number
  [metric: string]: number | string
}

const rows: Row[] = []
const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

function summarize (scenario: string, target: string, connections: number, runs: Array<Record<string, number>>): Row {
  const row: Row = { scenario, target, connections, repeats: runs.length }
  for (const key of Object.keys(runs[0]!)) row[key] = median(runs.map((run) => run[key]!))
  rows.push(row)
  console.log(JSON.stringify(row))
  return row
}

async function measure (server: Server, clients: Clients, members: number, rooms: () => string, rate: number, kind: PayloadKind = 'small'): Promise<Record<string, number>> {
  await clients.reset()
  const before = await server.stats()
  const started = performance.now()
  const published = await publishFor(server.port, rooms, rate, CONFIG.durationMs, kind)
  const publishMs = performance.now() - started
  const atEnd = await clients.histogram()
  const histogram = await drain(clients, published * members)
  const after = await server.stats()
  const expected = published * members
  return {
    publishedPerSecond: published / (publishMs / 1000),
    deliveriesPerSecond: atEnd.count / (publishMs / 1000),
    deliveredPct: (100 * histogram.count) / expected,
    p50ms: quantile(histogram, 0.5),
    p99ms: quantile(histogram, 0.99),
    maxMs: histogram.max,
    cpuUsPerDelivery: (after.cpuMicros - before.cpuMicros) / Math.max(1, histogram.count),
    egressBytesPerDelivery: (after.egressBytes - before.egressBytes) / Math.max(1, histogram.count),
    rssBeforeMB: before.rss / 1_048_576,
    rssMB: after.rss / 1_048_576,
  }
}

async function fanout (target: Target, connections: number): Promise<void> {
  const server = await startServer(target)
  const clients = new Clients(CONFIG.clients)
  try {
    const opened = await clients.connect(target, server.port, Array.from({ length: connections }, (_, i) => [i, 'fan'] as [number, string]))
    if (opened.failed > 0) console.warn(`${target}: ${opened.failed} of ${connections} connections failed`)
    const rate = SUB_SATURATION_DELIVERIES_PER_SECOND / connections
    const sub: Array<Record<string, number>> = []
    const saturated: Array<Record<string, number>> = []
    for (let i = 0; i < CONFIG.repeats; i++) {
      sub.push(await measure(server, clients, connections, () => 'fan', rate))
      saturated.push(await measure(server, clients, connections, () => 'fan', Infinity))
    }
    summarize(`fanout ${rate.toFixed(1)} msg/s`, target, connections, sub)
    const saturation = summarize('fanout saturation', target, connections, saturated)
    if (connections === CONFIG.fanout[0]) {
      // Overload: half and 1.5× the saturation publish rate; memory must stay bounded.
      const satRate = Number(saturation.publishedPerSecond)
      const half = await measure(server, clients, connections, () => 'fan', satRate / 2)
      const over = await measure(server, clients, connections, () => 'fan', satRate * 1.5)
      summarize('overload 0.5× saturation', target, connections, [half])
      summarize('overload 1.5× saturation', target, connections, [{ ...over, rssVsHalf: over.rssMB! / half.rssMB! }])
    }
  } finally {
    await clients.close()
    await server.stop()
  }
}

async function manyRooms (target: Target): Promise<void> {
  const { count, members } = CONFIG.rooms
  const server = await startServer(target)
  const clients = new Clients(CONFIG.clients)
  try {
    await clients.connect(target, server.port, Array.from({ length: count * members }, (_, i) => [i, `room-${i % count}`] as [number, string]))
    let next = 0
    const runs: Array<Record<string, number>> = []
    for (let i = 0; i < CONFIG.repeats; i++) {
      runs.push(await measure(server, clients, members, () => `room-${next++ % count}`, SUB_SATURATION_DELIVERIES_PER_SECOND / members))
    }
    summarize(`${count} rooms × ${members}`, target, count * members, runs)
  } finally {
    await clients.close()
    await server.stop()
  }
}

async function handshakesAndMemory (target: Target): Promise<void> {
  const runs: Array<Record<string, number>> = []
  for (let i = 0; i < CONFIG.repeats; i++) {
    const server = await startServer(target)
    const clients = new Clients(CONFIG.clients)
    try {
      // Room '' = no join: the handshake alone (for the plugin: Origin check, JWT verify, welcome).
      const { ms, failed } = await clients.connect(target, server.port, Array.from({ length: CONFIG.handshakes }, (_, j) => [j, ''] as [number, string]), 25)
      runs.push({ handshakesPerSecond: (CONFIG.handshakes - failed) / (ms / 1000), failed })
    } finally {
      await clients.close()
      await server.stop()
    }
  }
  summarize('handshakes', target, CONFIG.handshakes, runs)

  const memory: Array<Record<string, number>> = []
  for (let i = 0; i < CONFIG.repeats; i++) {
    const server = await startServer(target)
    const clients = new Clients(CONFIG.clients)
    try {
      const before = await server.stats(true)
      await clients.connect(target, server.port, Array.from({ length: CONFIG.idle }, (_, j) => [j, 'idle'] as [number, string]))
      await sleep(500)
      const after = await server.stats(true)
      memory.push({ kbPerConnection: (after.rss - before.rss) / 1024 / CONFIG.idle, heapKbPerConnection: (after.heapUsed - before.heapUsed) / 1024 / CONFIG.idle })
    } finally {
      await clients.close()
      await server.stop()
    }
  }
  summarize('idle memory', target, CONFIG.idle, memory)
}

/** The open-file limit this process (and so each server it starts) runs under: `ulimit -n`. */
function openFileLimit (): number {
  const limit = Number(spawnSync('sh', ['-c', 'ulimit -n']).stdout.toString().trim())
  return Number.isFinite(limit) ? limit : 1024
}

/**
 * As many authenticated, joined, idle sockets on one server process as its open-file limit allows (300 left
 * for the process's own files), each from its own loopback address; then memory per socket, one broadcast to
 * all of them (delivered %, p50/p99 to the last socket), and the CPU of the idle server over two heartbeats.
 */
async function density (target: Target): Promise<void> {
  const limit = openFileLimit()
  const connections = quick ? 2000 : Math.max(1000, limit - 300)
  const server = await startServer(target, { BENCH_HEARTBEAT_MS: String(DENSITY_HEARTBEAT_MS) })
  const clients = new Clients(CONFIG.clients)
  try {
    const before = await server.stats(true)
    const opened = await clients.connect(target, server.port, Array.from({ length: connections }, (_, i) => [i, 'dense'] as [number, string]), 50, true)
    if (opened.failed > 0) console.warn(`${target}: ${opened.failed} of ${connections} connections failed`)
    await sleep(1000)
    const after = await server.stats(true)
    const open = connections - opened.failed
    const idleFrom = await server.stats()
    await sleep(2 * DENSITY_HEARTBEAT_MS)
    const idleTo = await server.stats()
    await clients.reset()
    await publish(server.port, 'dense', 0, 'small')
    const histogram = await drain(clients, open)
    summarize('density', target, connections, [{
      openFileLimit: limit,
      opened: open,
      kbPerConnection: (after.rss - before.rss) / 1024 / open,
      heapKbPerConnection: (after.heapUsed - before.heapUsed) / 1024 / open,
      deliveredPct: (100 * histogram.count) / open,
      p50ms: quantile(histogram, 0.5),
      p99ms: quantile(histogram, 0.99),
      maxMs: histogram.max,
      idleCpuPctOfCore: (100 * (idleTo.cpuMicros - idleFrom.cpuMicros)) / (2 * DENSITY_HEARTBEAT_MS * 1000),
    }])
  } finally {
    await clients.close()
    await server.stop()
  }
}

// What each target does to compress (the scenario's rows); the load clients offer permessage-deflate to all.
const COMPRESSION_VARIANTS = [
  { label: 'plugin plain', target: 'plugin', compression: false },
  { label: 'plugin compress-once', target: 'plugin', compression: true },
  { label: 'ws per-socket deflate', target: 'ws', compression: true },
  { label: 'Socket.IO perMessageDeflate', target: 'socketio', compression: true },
] as const
const compressionScenario = `compression 4 KiB JSON ${(COMPRESSION_DELIVERIES_PER_SECOND / CONFIG.compression).toFixed(1)} msg/s`

async function compression (variant: typeof COMPRESSION_VARIANTS[number]): Promise<void> {
  const server = await startServer(variant.target, variant.compression ? { BENCH_COMPRESSION: '1' } : {})
  const clients = new Clients(CONFIG.clients)
  try {
    const connections = CONFIG.compression
    const opened = await clients.connect(variant.target, server.port, Array.from({ length: connections }, (_, i) => [i, 'fan'] as [number, string]))
    if (opened.failed > 0) console.warn(`${variant.label}: ${opened.failed} of ${connections} connections failed`)
    const runs: Array<Record<string, number>> = []
    for (let i = 0; i < CONFIG.repeats; i++) {
      runs.push(await measure(server, clients, connections, () => 'fan', COMPRESSION_DELIVERIES_PER_SECOND / connections, 'chat'))
    }
    summarize(compressionScenario, variant.label, connections, runs)
  } finally {
    await clients.close()
    await server.stop()
  }
}

// The fallback against a socket: the same room, rate and payload, C = CONFIG.compression (1000 in a full run).
const sseScenarioName = `transport ${(SUB_SATURATION_DELIVERIES_PER_SECOND / CONFIG.compression).toFixed(1)} msg/s`

async function sseScenario (target: 'plugin' | 'plugin-sse'): Promise<void> {
  const server = await startServer(target)
  const clients = new Clients(CONFIG.clients)
  try {
    const connections = CONFIG.compression
    const opened = await clients.connect(target, server.port, Array.from({ length: connections }, (_, i) => [i, 'fan'] as [number, string]), 20)
    if (opened.failed > 0) console.warn(`${target}: ${opened.failed} of ${connections} connections failed`)
    const runs: Array<Record<string, number>> = []
    for (let i = 0; i < CONFIG.repeats; i++) runs.push(await measure(server, clients, connections, () => 'fan', SUB_SATURATION_DELIVERIES_PER_SECOND / connections))
    summarize(sseScenarioName, target === 'plugin' ? 'plugin WebSocket' : 'plugin SSE', connections, runs)
  } finally {
    await clients.close()
    await server.stop()
  }
}

function ratio (scenario: string, connections: number, metric: string, against: string, of = 'plugin'): string {
  const plugin = rows.find((row) => row.scenario === scenario && row.connections === connections && row.target === of)?.[metric]
  const other = rows.find((row) => row.scenario === scenario && row.connections === connections && row.target === against)?.[metric]
  return typeof plugin === 'number' && typeof other === 'number' ? (plugin / other).toFixed(2) : '–'
}

function printTable (): void {
  const columns = ['deliveriesPerSecond', 'deliveredPct', 'p50ms', 'p99ms', 'maxMs', 'cpuUsPerDelivery', 'egressBytesPerDelivery', 'rssBeforeMB', 'rssMB', 'handshakesPerSecond', 'kbPerConnection', 'heapKbPerConnection', 'idleCpuPctOfCore']
  const format = (value: unknown) => (typeof value === 'number' ? (Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(2)) : '')
  console.log(`\n| scenario | C | target | ${columns.join(' | ')} |`)
  console.log(`|${' --- |'.repeat(columns.length + 3)}`)
  for (const row of rows) console.log(`| ${row.scenario} | ${row.connections} | ${row.target} | ${columns.map((c) => format(row[c])).join(' | ')} |`)
  console.log('\nRatios plugin / raw ws and plugin / Socket.IO (same run):')
  for (const connections of CONFIG.fanout) {
    const sub = rows.find((row) => row.scenario.startsWith('fanout ') && row.scenario !== 'fanout saturation' && row.connections === connections)?.scenario ?? ''
    console.log(`  C=${connections}: CPU per delivery ${ratio(sub, connections, 'cpuUsPerDelivery', 'ws')} / ${ratio(sub, connections, 'cpuUsPerDelivery', 'socketio')}; ` +
      `saturation deliveries/s ${ratio('fanout saturation', connections, 'deliveriesPerSecond', 'ws')} / ${ratio('fanout saturation', connections, 'deliveriesPerSecond', 'socketio')}`)
  }
  console.log(`  handshakes/s ${ratio('handshakes', CONFIG.handshakes, 'handshakesPerSecond', 'ws')} / ${ratio('handshakes', CONFIG.handshakes, 'handshakesPerSecond', 'socketio')}; ` +
    `memory per idle connection ${ratio('idle memory', CONFIG.idle, 'kbPerConnection', 'ws')} / ${ratio('idle memory', CONFIG.idle, 'kbPerConnection', 'socketio')}`)
  const once = (metric: string, against: string) => ratio(compressionScenario, CONFIG.compression, metric, against, 'plugin compress-once')
  console.log(`  compression, C=${CONFIG.compression}: egress per delivery compress-once / plain ${once('egressBytesPerDelivery', 'plugin plain')}; ` +
    `CPU per delivery compress-once / plain ${once('cpuUsPerDelivery', 'plugin plain')}, / ws per-socket deflate ${once('cpuUsPerDelivery', 'ws per-socket deflate')}, ` +
    `/ Socket.IO perMessageDeflate ${once('cpuUsPerDelivery', 'Socket.IO perMessageDeflate')}`)
  const dense = rows.find((row) => row.scenario === 'density')?.connections
  if (dense !== undefined) {
    console.log(`  density, C=${dense}: RSS per connection ${ratio('density', dense, 'kbPerConnection', 'ws')}, heap ${ratio('density', dense, 'heapKbPerConnection', 'ws')}, ` +
      `broadcast p50 ${ratio('density', dense, 'p50ms', 'ws')}, p99 ${ratio('density', dense, 'p99ms', 'ws')}, idle CPU ${ratio('density', dense, 'idleCpuPctOfCore', 'ws')} vs ws`)
  }
  const fallback = (metric: string) => ratio(sseScenarioName, CONFIG.compression, metric, 'plugin WebSocket', 'plugin SSE')
  console.log(`  SSE fallback / WebSocket, C=${CONFIG.compression}: CPU per delivery ${fallback('cpuUsPerDelivery')}, egress bytes per delivery ${fallback('egressBytesPerDelivery')}, p99 ${fallback('p99ms')}`)
}

const started = performance.now()
console.log(`fastify-rooms benchmark (${quick ? 'quick' : 'full'}), ${cpus().length} × ${cpus()[0]?.model}, node ${process.version}, pinned: ${pinned}`)
if (SCENARIOS.includes('fanout')) for (const connections of CONFIG.fanout) for (const target of TARGETS) await fanout(target, connections)
if (SCENARIOS.includes('rooms')) for (const target of TARGETS) await manyRooms(target)
if (SCENARIOS.includes('handshakes')) for (const target of TARGETS) await handshakesAndMemory(target)
if (SCENARIOS.includes('compression')) for (const variant of COMPRESSION_VARIANTS) if (TARGETS.includes(variant.target)) await compression(variant)
if (SCENARIOS.includes('sse')) for (const target of ['plugin', 'plugin-sse'] as const) if (TARGETS.includes('plugin')) await sseScenario(target)
if (SCENARIOS.includes('density')) for (const target of TARGETS) if (target !== 'plugin-sse') await density(target)
printTable()
mkdirSync(here('./results'), { recursive: true })
const file = here(`./results/${new Date().toISOString().replaceAll(':', '-')}${quick ? '-quick' : ''}.jsonl`)
writeFileSync(file, rows.map((row) => JSON.stringify({ ...row, quick, node: process.version, cpus: cpus().length })).join('\n') + '\n')
console.log(`\nresults: ${file} (${((performance.now() - started) / 1000).toFixed(0)} s)`)

// CPU fairness (issue #10): attacker sockets send the costliest frames the default limits admit — just
// under the frame and byte rates, as many unknown keys as maxFrameKeys allows — while a victim pings.
// Reports the victim's ping round trip without and with 8 attackers. Target: p99 < 100 ms with 8.
// `npm run bench:fairness` (≈ 25 s). Loopback only; every loop is bounded in count and time.
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import { emptyHistogram, quantile, record } from './histogram.js'
import { BENCH_ORIGIN, BENCH_SECRET } from './servers/common.js'

const ATTACKERS = 8
const PHASE_MS = 8000
// Under the victim's own frame rate (20/s), so every ping is answered.
const PING_EVERY_MS = 100
const sign = createSigner({ key: BENCH_SECRET, expiresIn: 3_600_000 })

async function startServer (): Promise<{ port: number; stop(): void }> {
  const child = spawn(process.execPath, ['--import=tsx', fileURLToPath(new URL('./servers/fairness.ts', import.meta.url))], { stdio: ['ignore', 'pipe', 'inherit'] })
  let output = ''
  await new Promise<void>((resolve) => child.stdout!.on('data', (chunk: Buffer) => {
    output += chunk.toString()
    if (output.includes('\n')) resolve()
  }))
  return { port: Number(output.trim()), stop: () => child.kill('SIGKILL') }
}

function open (port: number, user: string): Promise<WebSocket> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { authorization: `Bearer ${sign({ sub: user })}` }, origin: BENCH_ORIGIN })
  return new Promise((resolve, reject) => {
    ws.once('message', () => resolve(ws))
    ws.once('error', reject)
  })
}

/** 999 unknown keys (just under maxFrameKeys): refused by the schema, after a parse and an error report. */
function costlyFrame (): string {
  const payload: Record<string, number> = { }
  for (let i = 0; i < 998; i++) payload[`key${i}`] = i
  return JSON.stringify({ type: 'chat', payload })
}

async function victimPings (port: number, durationMs: number) {
  const victim = await open(port, 'victim')
  const histogram = emptyHistogram()
  const sent = new Map<string, number>()
  victim.on('message', (data) => {
    const frame = JSON.parse(data.toString()) as { type: string; id?: string }
    const at = frame.type === 'pong' && frame.id !== undefined ? sent.get(frame.id) : undefined
    if (at !== undefined) record(histogram, performance.now() - at)
  })
  const deadline = Date.now() + durationMs
  for (let i = 0; Date.now() < deadline && i < durationMs / PING_EVERY_MS + 10; i++) {
    sent.set(`p${i}`, performance.now())
    victim.send(JSON.stringify({ type: 'ping', id: `p${i}` }))
    await new Promise((resolve) => setTimeout(resolve, PING_EVERY_MS))
  }
  victim.close()
  return { pings: histogram.count, p50: quantile(histogram, 0.5), p99: quantile(histogram, 0.99), max: histogram.max }
}

async function attack (port: number, durationMs: number) {
  const frame = costlyFrame()
  const bytes = Buffer.byteLength(frame)
  // Just under both default budgets: 20 frames/s and 131072 bytes/s.
  const perSecond = Math.min(19, Math.floor(131_072 / bytes) - 0.5)
  const sockets = await Promise.all(Array.from({ length: ATTACKERS }, (_, i) => open(port, `attacker${i}`)))
  let refused = 0
  for (const socket of sockets) {
    socket.on('message', (data) => {
      if (data.toString().includes('"rate_limited"')) refused++
    })
  }
  const timers = sockets.map((socket) => setInterval(() => socket.send(frame), 1000 / perSecond))
  return {
    frameBytes: bytes,
    framesPerSecondEach: perSecond,
    stop: () => {
      for (const timer of timers) clearInterval(timer)
      for (const socket of sockets) socket.terminate()
      return refused
    },
  }
}

const server = await startServer()
try {
  const quiet = await victimPings(server.port, PHASE_MS)
  const attackers = await attack(server.port, PHASE_MS)
  const underAttack = await victimPings(server.port, PHASE_MS)
  const rateLimited = attackers.stop()
  const result = { scenario: 'fairness', attackers: ATTACKERS, frameBytes: attackers.frameBytes, framesPerSecondEach: attackers.framesPerSecondEach, rateLimited, quiet, underAttack, targetP99Ms: 100, met: underAttack.p99 < 100 }
  console.log(JSON.stringify(result))
} finally {
  server.stop()
}

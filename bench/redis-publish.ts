// Redis CPU per publish: the broker's PUBLISH script (seq + history + fan-out) against a bare PUBLISH of
// the same payload. The figure is redis-server's own CPU time (INFO cpu: user + sys, so reading, parsing
// and replying count too) per publish; INFO commandstats gives the commands the script runs. `npm run
// bench:redis` starts its own redis-server on a free loopback port and stops it by PID.
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import rooms from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'

const PUBLISHES = Number(process.argv.find((arg) => arg.startsWith('--publishes='))?.slice(12) ?? 5000)
/** Publishes in flight at once (8, as the fan-out bench's saturation); --in-flight=1 for one at a time. */
const IN_FLIGHT = Number(process.argv.find((arg) => arg.startsWith('--in-flight='))?.slice(12) ?? 8)
const payload = { text: 'x'.repeat(100) }

async function repeat (count: number, publish: () => Promise<unknown>): Promise<void> {
  let next = 0
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next++ < count) await publish()
  }))
}

async function freePort (): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

function cpuSeconds (info: string): number {
  const value = (name: string) => Number(new RegExp(`${name}:([0-9.]+)`).exec(info)?.[1] ?? 0)
  return value('used_cpu_user') + value('used_cpu_sys')
}

function commandStats (info: string): Map<string, { calls: number; usec: number }> {
  const stats = new Map<string, { calls: number; usec: number }>()
  for (const line of info.split('\n')) {
    const match = /^cmdstat_([^:]+):calls=(\d+),usec=(\d+)/.exec(line.trim())
    if (match !== null) stats.set(match[1]!, { calls: Number(match[2]), usec: Number(match[3]) })
  }
  return stats
}

const port = await freePort()
const dir = await mkdtemp(join(tmpdir(), 'bench-redis-'))
const redisProcess = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' })
const admin = new Redis(`redis://127.0.0.1:${port}`, { maxRetriesPerRequest: 20 })
try {
  admin.on('error', () => {}) // until redis-server listens
  for (let i = 0; i < 50 && (await admin.ping().catch(() => '')) !== 'PONG'; i++) await new Promise((resolve) => setTimeout(resolve, 100))
  const app = Fastify()
  await app.register(rooms, { jwt: { secret: 'bench' }, allowedOrigins: '*', presence: false, broker: redisBroker({ url: `redis://127.0.0.1:${port}` }) })
  await app.ready()
  // One process subscribed to the room, as with a local member (the channel has a listener).
  const listener = new Redis(`redis://127.0.0.1:${port}`)
  await listener.subscribe('rooms:ev:bench')
  for (let i = 0; i < 200; i++) await app.rooms.broadcast('bench', 'msg', payload) // warm the script cache
  await admin.config('RESETSTAT')
  let cpu = cpuSeconds(await admin.info('cpu'))
  await repeat(PUBLISHES, () => app.rooms.broadcast('bench', 'msg', payload))
  const pluginCpu = cpuSeconds(await admin.info('cpu')) - cpu
  const plugin = commandStats(await admin.info('commandstats'))
  const frame = JSON.stringify({ type: 'msg', room: 'bench', seq: 1, payload, traceId: '00000000-0000-0000-0000-000000000000', time: Date.now() })
  cpu = cpuSeconds(await admin.info('cpu'))
  await repeat(PUBLISHES, () => admin.publish('rooms:ev:bench', frame))
  const bareCpu = cpuSeconds(await admin.info('cpu')) - cpu
  const perScript = pluginCpu * 1e6 / PUBLISHES
  const perPublish = bareCpu * 1e6 / PUBLISHES
  const measured = [...plugin].filter(([name]) => name !== 'info' && !name.startsWith('config'))
  const inside = measured.filter(([name]) => name !== 'evalsha').map(([name, stat]) => `${name}×${(stat.calls / PUBLISHES).toFixed(1)}`)
  // Where the script's time goes: evalsha's usec includes the commands it runs; the rest is Lua and I/O.
  const usecPerCall = Object.fromEntries(measured.map(([name, stat]) => [name, Number((stat.usec / stat.calls).toFixed(2))]))
  console.log(JSON.stringify({ publishes: PUBLISHES, inFlight: IN_FLIGHT, redisCpuUsPerBrokerPublish: Number(perScript.toFixed(2)), redisCpuUsPerBarePublish: Number(perPublish.toFixed(2)), ratio: Number((perScript / perPublish).toFixed(2)), commandsPerPublish: inside.join(' '), usecPerCall }))
  listener.disconnect()
  await app.close()
} finally {
  admin.disconnect()
  redisProcess.kill('SIGKILL')
  await rm(dir, { recursive: true, force: true })
}

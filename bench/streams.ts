// Streamed messages against tokens sent as plain broadcasts: STREAMS concurrent answers, each into a room of
// MEMBERS sockets, at RATE tokens a second each, on the Redis broker. Reports the server's CPU per
// delivered token, Redis commands and Redis CPU per token, and the bytes each member receives per token.
// The sockets live in a child process (this file with --role=clients), so the server's CPU is its own.
// `npm run bench:streams` starts its own redis-server on a free loopback port and stops it by PID;
// --streams=, --members=, --rate=, --seconds= change the load (defaults 1000, 10, 50, 10).
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import { Redis } from 'ioredis'
import WebSocket from 'ws'
import rooms, { type RoomStream } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { freePort } from '../test/helpers/components.js'

const arg = (name: string, fallback: number) => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const STREAMS = arg('streams', 1000)
const MEMBERS = arg('members', 10)
const RATE = arg('rate', 50)
const SECONDS = arg('seconds', 10)
// A token as a model emits one: a word and its space.
const TOKEN = 'word '

/** The sockets: STREAMS × MEMBERS of them, each joined to its room; counts what arrives. */
async function clients (port: number): Promise<void> {
  let bytes = 0
  let tokens = 0
  let frames = 0
  const sockets: WebSocket[] = []
  for (let room = 0; room < STREAMS; room++) {
    const joined: Array<Promise<void>> = []
    for (let member = 0; member < MEMBERS; member++) {
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { 'x-user': `u${room}-${member}` } })
      sockets.push(ws)
      joined.push(new Promise((resolve, reject) => {
        ws.once('error', reject)
        ws.on('message', (data: Buffer) => {
          const text = data.toString()
          if (text.startsWith('{"type":"welcome"')) return ws.send(JSON.stringify({ type: 'join', id: 1, room: `r${room}` }))
          if (text.startsWith('{"type":"ack"')) return resolve()
          bytes += data.length + 2 // and the WebSocket header of a small frame
          frames++
          // Both modes carry tokens as JSON strings: count them by their text.
          tokens += text.split(TOKEN).length - 1
        })
      }))
    }
    await Promise.all(joined)
  }
  process.send!({ ready: true })
  process.on('message', (message: { report?: boolean }) => {
    if (message.report === true) process.send!({ bytes, tokens, frames })
  })
}

function cpuSeconds (info: string): number {
  const value = (name: string) => Number(new RegExp(`${name}:([0-9.]+)`).exec(info)?.[1] ?? 0)
  return value('used_cpu_user') + value('used_cpu_sys')
}

function commandCalls (info: string): number {
  let calls = 0
  for (const match of info.matchAll(/cmdstat_[^:]+:calls=(\d+)/g)) calls += Number(match[1])
  return calls
}

async function run (mode: 'stream' | 'broadcast', redisUrl: string, redis: Redis): Promise<Record<string, number>> {
  const app = Fastify()
  await app.register(rooms, {
    authenticate: (request) => ({ id: String(request.headers['x-user']) }),
    allowedOrigins: '*',
    allowMissingOrigin: true,
    handshakeRateLimit: false,
    presence: false,
    maxConnectionsPerUser: 1,
    maxOpenStreams: STREAMS,
    broker: redisBroker({ url: redisUrl }),
  })
  const port = await freePort()
  await app.listen({ port, host: '127.0.0.1' })
  const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--role=clients', `--port=${port}`, ...process.argv.slice(2)], { stdio: ['inherit', 'inherit', 'inherit', 'ipc'] })
  await new Promise<void>((resolve) => child.once('message', () => resolve()))
  const report = () => new Promise<{ bytes: number; tokens: number; frames: number }>((resolve) => {
    child.once('message', (message) => resolve(message as { bytes: number; tokens: number; frames: number }))
    child.send({ report: true })
  })

  const streams: RoomStream[] = mode === 'stream' ? await Promise.all(Array.from({ length: STREAMS }, (_, room) => app.rooms.stream(`r${room}`, 'answer', {}))) : []
  const before = await report()
  const redisBefore = await redis.info('all')
  const cpuBefore = process.cpuUsage()
  const started = Date.now()
  let appended = 0
  // One tick appends a token to every stream (or broadcasts one per room): RATE ticks a second.
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      for (let room = 0; room < STREAMS; room++) {
        if (mode === 'stream') streams[room]!.append(TOKEN)
        else void app.rooms.broadcast(`r${room}`, 'token', { text: TOKEN }).catch(() => {})
      }
      appended += STREAMS
      if (Date.now() - started >= SECONDS * 1000) {
        clearInterval(timer)
        resolve()
      }
    }, 1000 / RATE)
  })
  // What was appended has reached the sockets (bounded: at most 10 s more).
  let after = await report()
  for (let waited = 0; after.tokens - before.tokens < appended * MEMBERS && waited < 100; waited++) {
    await new Promise((resolve) => setTimeout(resolve, 100))
    after = await report()
  }
  const cpu = process.cpuUsage(cpuBefore)
  const redisAfter = await redis.info('all')
  const delivered = after.tokens - before.tokens
  child.kill()
  await Promise.all(streams.map((stream) => stream.end().catch(() => {})))
  await app.close()
  return {
    tokensAppended: appended,
    tokensDelivered: delivered,
    deliveredShare: delivered / (appended * MEMBERS),
    serverCpuUsPerDeliveredToken: (cpu.user + cpu.system) / delivered,
    redisCommandsPerToken: (commandCalls(redisAfter) - commandCalls(redisBefore)) / appended,
    redisCpuUsPerToken: (cpuSeconds(redisAfter) - cpuSeconds(redisBefore)) * 1e6 / appended,
    egressBytesPerDeliveredToken: (after.bytes - before.bytes) / delivered,
    framesPerDeliveredToken: (after.frames - before.frames) / delivered,
  }
}

async function main (): Promise<void> {
  if (process.argv.includes('--role=clients')) return clients(arg('port', 0))
  const dir = await mkdtemp(join(tmpdir(), 'rooms-bench-streams-'))
  const port = await freePort()
  const server = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], { stdio: 'ignore' })
  try {
    let redis: Redis
    for (let attempt = 0; ; attempt++) {
      redis = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null })
      redis.on('error', () => {})
      try {
        await redis.connect()
        break
      } catch (err) {
        redis.disconnect()
        if (attempt > 50) throw err
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    }
    const url = `redis://127.0.0.1:${port}`
    console.log(`${STREAMS} rooms × ${MEMBERS} members, a token (${JSON.stringify(TOKEN)}) ${RATE}/s into each for ${SECONDS} s, Redis broker`)
    for (const mode of ['stream', 'broadcast'] as const) {
      await redis.config('RESETSTAT')
      const result = await run(mode, url, redis)
      console.log(mode === 'stream' ? 'fastify.rooms.stream (one append per token)' : 'a broadcast per token', JSON.stringify(result, (_key, value: unknown) => typeof value === 'number' ? Number(value.toFixed(3)) : value))
    }
    redis.disconnect()
  } finally {
    server.kill('SIGTERM')
    await new Promise((resolve) => server.once('exit', resolve))
    await rm(dir, { recursive: true, force: true })
  }
}

await main()

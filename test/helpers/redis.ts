// A real redis-server per test file: free loopback port, temp dir, no persistence; stopped by PID.
import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { freePort } from './components.js'
import { bounded } from './index.js'

export function redisMissing (): string | undefined {
  const paths = ['/usr/bin/redis-server', '/usr/local/bin/redis-server']
  return paths.some((path) => existsSync(path)) ? undefined : 'redis-server not found (apt-get install redis-server)'
}

export interface RedisServer {
  port: number
  url: string
  /** Stops the server (SIGTERM) and waits for it to exit. */
  stop(): Promise<void>
  /** Starts it again on the same port, empty (as a Redis without persistence comes back after a crash). */
  start(): Promise<void>
  /** SIGSTOP / SIGCONT: a hung Redis that neither answers nor closes. */
  pause(): void
  resume(): void
}

export async function startRedis (t: { teardown(fn: () => unknown): void }): Promise<RedisServer> {
  const port = await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'rooms-redis-'))
  let child: ChildProcess | undefined
  const server: RedisServer = {
    port,
    url: `redis://127.0.0.1:${port}`,
    async start () {
      child = await spawnRedisServer(['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], 'redis-server')
    },
    async stop () {
      const process = child
      child = undefined
      // A paused server cannot exit on SIGTERM.
      process?.kill('SIGCONT')
      await stopProcess(process, 'SIGTERM', 'redis-server')
    },
    pause () {
      child?.kill('SIGSTOP')
    },
    resume () {
      child?.kill('SIGCONT')
    },
  }
  await server.start()
  t.teardown(async () => {
    await server.stop()
    await rm(dir, { recursive: true, force: true })
  })
  return server
}

/** Starts redis-server with `args` and resolves once it accepts connections. */
export async function spawnRedisServer (args: string[], label: string): Promise<ChildProcess> {
  const process = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'inherit'] })
  let output = ''
  await bounded(new Promise<void>((resolve, reject) => {
    process.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes('Ready to accept connections')) resolve()
    })
    process.once('exit', (code) => reject(new Error(`${label} exited with ${code}: ${output.slice(-500)}`)))
  }), `${label} starting`)
  process.stdout!.resume()
  return process
}

/** Signals a process (if it still runs) and waits for it to exit. */
export async function stopProcess (process: ChildProcess | undefined, signal: NodeJS.Signals, label: string): Promise<void> {
  if (process === undefined || process.exitCode !== null || process.signalCode !== null) return
  const exited = new Promise((resolve) => process.once('exit', resolve))
  process.kill(signal)
  await bounded(exited, `${label} exiting`)
}

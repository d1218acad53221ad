// A plugin server in a process of its own (test/fixtures/redis-server.ts), to kill or stop like a real one.
import { spawn, type ChildProcess } from 'node:child_process'
import { bounded } from './index.js'

export interface ServerProcess {
  /** ws:// base URL. */
  url: string
  child: ChildProcess
  /** SIGTERM (a graceful close) and wait for the exit. */
  stop(): Promise<void>
}

/** `redis`: a single redis-server's URL; for a cluster pass REDIS_CLUSTER_NODES in `env` (host:port,…). */
export async function startServerProcess (t: { teardown(fn: () => unknown): void }, redis: { url: string }, env: Record<string, string> = {}): Promise<ServerProcess> {
  return startFixtureProcess(t, 'redis-server.ts', { REDIS_URL: redis.url, PROCESS_TTL_MS: '600', ...env })
}

/** A fixture of test/fixtures/ in a process of its own; it prints its port as its first line. */
export async function startFixtureProcess (t: { teardown(fn: () => unknown): void }, name: string, env: Record<string, string>): Promise<ServerProcess> {
  const fixture = new URL(`../fixtures/${name}`, import.meta.url).pathname
  const child = spawn(process.execPath, ['--import=tsx', fixture], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, ...env } })
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL')
  })
  let output = ''
  await bounded(new Promise<void>((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`server process exited with ${code}`)))
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString()
      if (output.includes('\n')) resolve()
    })
  }), 'the server process listening', 30_000)
  // Later lines are the fixture's own reports (e.g. `holding <id>`).
  child.stdout!.on('data', () => {})
  return {
    url: `ws://127.0.0.1:${Number(output.split('\n')[0])}`,
    child,
    async stop () {
      if (child.exitCode !== null || child.signalCode !== null) return
      const exited = new Promise((resolve) => child.once('exit', resolve))
      child.kill('SIGTERM')
      await bounded(exited, 'the server process exiting', 20_000)
    },
  }
}

// A real PostgreSQL per test file, from Debian's `postgresql` package: initdb into a temp dir, a free
// loopback port, started in the foreground and stopped by PID. PostgreSQL refuses to run as root, so as
// root it runs as the package's `postgres` user (see FIELD-NOTES).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { chmodSync, chownSync, existsSync, readdirSync, readFileSync } from 'node:fs'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { freePort } from './components.js'
import { bounded } from './index.js'

function binaries (): string | undefined {
  const root = '/usr/lib/postgresql'
  if (!existsSync(root)) return undefined
  const version = readdirSync(root).filter((name) => existsSync(join(root, name, 'bin', 'initdb'))).sort((a, b) => Number(b) - Number(a))[0]
  return version === undefined ? undefined : join(root, version, 'bin')
}

export function postgresMissing (): string | undefined {
  return binaries() === undefined ? 'PostgreSQL not found (apt-get install postgresql)' : undefined
}

export interface PostgresServer {
  port: number
  /** postgres://postgres@127.0.0.1:<port>/postgres */
  url: string
  pid(): number | undefined
  /** Fast shutdown (SIGINT), waiting for the exit. Data stays: start() brings it back with it. */
  stop(): Promise<void>
  /** SIGKILL of the postmaster: a crash; the next start() recovers from the WAL. */
  kill(): Promise<void>
  start(): Promise<void>
  /** SIGSTOP / SIGCONT of every PostgreSQL process: a hung database that neither answers nor closes. */
  pause(): void
  resume(): void
  /** A client of its own for the test's checks (closed at teardown). */
  client(): Promise<pg.Client>
}

const asRoot = process.getuid?.() === 0
let owner: { uid: number; gid: number } | undefined

/** As root, the child runs as `postgres` itself (no runuser between: its PID is the postmaster's). */
function run (command: string, args: string[]): ChildProcess {
  if (asRoot) {
    owner ??= { uid: Number(spawnSync('id', ['-u', 'postgres']).stdout.toString()), gid: Number(spawnSync('id', ['-g', 'postgres']).stdout.toString()) }
    return spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'], uid: owner.uid, gid: owner.gid, cwd: '/' })
  }
  return spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] })
}

export async function startPostgres (t: { teardown(fn: () => unknown): void }): Promise<PostgresServer> {
  const bin = binaries()
  if (bin === undefined) throw new Error('PostgreSQL is not installed')
  const port = await freePort()
  const dir = await mkdtemp(join(tmpdir(), 'rooms-pg-'))
  const data = join(dir, 'data')
  if (asRoot) {
    chmodSync(dir, 0o755)
    owner ??= { uid: Number(spawnSync('id', ['-u', 'postgres']).stdout.toString()), gid: Number(spawnSync('id', ['-g', 'postgres']).stdout.toString()) }
    chownSync(dir, owner.uid, owner.gid)
  }
  const init = run(join(bin, 'initdb'), ['-D', data, '-A', 'trust', '-U', 'postgres', '--no-sync', '-E', 'UTF8', '--locale=C'])
  let initOutput = ''
  init.stdout!.on('data', (chunk: Buffer) => { initOutput += chunk.toString() })
  init.stderr!.on('data', (chunk: Buffer) => { initOutput += chunk.toString() })
  const initCode = await bounded(new Promise<number | null>((resolve) => init.once('exit', resolve)), 'initdb', 60_000)
  if (initCode !== 0) throw new Error(`initdb exited with ${initCode}: ${initOutput.slice(-800)}`)

  let child: ChildProcess | undefined
  const clients: pg.Client[] = []
  const server: PostgresServer = {
    port,
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    pid: () => child?.pid,
    async start () {
      const process = run(join(bin, 'postgres'), [
        '-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1',
        '-c', 'fsync=off', '-c', 'full_page_writes=off', '-c', 'max_connections=200', '-c', 'shared_buffers=32MB',
      ])
      let output = ''
      process.stdout!.on('data', (chunk: Buffer) => { output += chunk.toString() })
      process.stderr!.on('data', (chunk: Buffer) => { output = (output + chunk.toString()).slice(-4000) })
      child = process
      const exited = new Promise<never>((_resolve, reject) => process.once('exit', (code) => reject(new Error(`postgres exited with ${code}: ${output.slice(-800)}`))))
      exited.catch(() => {})
      await bounded(Promise.race([exited, untilAccepting(port)]), 'postgres starting', 60_000)
    },
    async stop () {
      await stopChild(child, 'SIGINT')
      child = undefined
    },
    async kill () {
      await stopChild(child, 'SIGKILL')
      child = undefined
      // The postmaster's children notice its death and exit; a restart waits for them (the lock file).
      await bounded(waitForBackendsToExit(dir), 'postgres backends exiting', 30_000)
    },
    pause () {
      signalAll(child, 'SIGSTOP')
    },
    resume () {
      signalAll(child, 'SIGCONT')
    },
    async client () {
      const client = new pg.Client({ connectionString: server.url })
      client.on('error', () => {})
      await client.connect()
      clients.push(client)
      return client
    },
  }
  await server.start()
  t.teardown(async () => {
    await Promise.allSettled(clients.map((client) => client.end()))
    signalAll(child, 'SIGCONT')
    await stopChild(child, 'SIGINT')
    await rm(dir, { recursive: true, force: true })
  })
  return server
}

async function untilAccepting (port: number): Promise<void> {
  for (;;) {
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' })
    client.on('error', () => {})
    try {
      await client.connect()
      await client.query('SELECT 1')
      await client.end()
      return
    } catch {
      await client.end().catch(() => {})
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
}

async function stopChild (child: ChildProcess | undefined, signal: NodeJS.Signals): Promise<void> {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill(signal)
  await bounded(exited, 'postgres exiting', 30_000)
}

/** The postmaster and, for SIGSTOP/SIGCONT, every backend: a paused database must pause all of them. */
function signalAll (child: ChildProcess | undefined, signal: NodeJS.Signals): void {
  if (child === undefined || child.exitCode !== null || child.signalCode !== null) return
  if (child.pid === undefined) return
  for (const pid of [child.pid, ...childrenOf(child.pid)]) {
    try { process.kill(pid, signal) } catch { /* gone already */ }
  }
}

function childrenOf (pid: number): number[] {
  const result = spawnSync('pgrep', ['-P', String(pid)])
  return result.stdout.toString().split('\n').filter((line) => line !== '').map(Number)
}

async function waitForBackendsToExit (dir: string): Promise<void> {
  const lock = join(dir, 'data', 'postmaster.pid')
  for (let i = 0; existsSync(lock) && i < 300; i++) {
    const pid = Number(readFileSync(lock, 'utf8').split('\n')[0])
    try {
      process.kill(pid, 0)
    } catch {
      return
    }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

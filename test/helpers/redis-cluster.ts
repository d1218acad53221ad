// A real Redis Cluster per test: three masters (and optionally one replica each) on free loopback ports,
// created with `redis-cli --cluster create`, each node stopped by PID. `cluster-node-timeout` is short so a
// replica takes over a killed master within a few seconds.
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import { portFree } from './components.js'
import { runCommand } from './exec.js'
import { spawnRedisServer, stopProcess } from './redis.js'

export interface ClusterNode {
  port: number
  /** SIGKILL: gone at once, as a crashed machine. */
  kill(): Promise<void>
  /** Starts it again on the same port with its cluster config (it rejoins as it left). */
  start(): Promise<void>
  readonly running: boolean
}

export interface RedisClusterHandle {
  nodes: ClusterNode[]
  /** `host:port` of every node, for `redisBroker({ cluster })`. */
  startupNodes: Array<{ host: string; port: number }>
  /** The node that serves `key`'s slot as master now. */
  masterOf(key: string): Promise<ClusterNode>
  /** Resolves once every running node reports cluster_state:ok and every running replica is in sync. */
  healthy(): Promise<void>
}

async function portPairFree (port: number): Promise<boolean> {
  // The cluster bus listens on port + 10000.
  return await portFree(port) && await portFree(port + 10_000)
}

async function freePorts (count: number): Promise<number[]> {
  const ports: number[] = []
  for (let attempt = 0; ports.length < count && attempt < 200; attempt++) {
    // Node and bus ports both below the ephemeral range (see freePort), so a restarted node finds them free.
    const port = 20_000 + Math.floor(Math.random() * 2767)
    if (!ports.includes(port) && await portPairFree(port)) ports.push(port)
  }
  if (ports.length < count) throw new Error('no free port pairs for a Redis Cluster')
  return ports
}

async function call (port: number, command: string[]): Promise<unknown> {
  const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, maxRetriesPerRequest: 0, enableOfflineQueue: false, connectTimeout: 1000, retryStrategy: () => null })
  client.on('error', () => {})
  try {
    await client.connect()
    return await client.call(...command as [string, ...string[]])
  } finally {
    client.disconnect()
  }
}

export async function startRedisCluster (t: { teardown(fn: () => unknown): void }, options: { replicas?: 0 | 1 } = {}): Promise<RedisClusterHandle> {
  const replicas = options.replicas ?? 0
  const ports = await freePorts(replicas === 1 ? 6 : 3)
  const dir = await mkdtemp(join(tmpdir(), 'rooms-cluster-'))
  const nodes: ClusterNode[] = ports.map((port) => {
    let child: ChildProcess | undefined
    return {
      port,
      get running () { return child !== undefined && child.exitCode === null },
      async start () {
        child = await spawnRedisServer([
          '--port', String(port), '--bind', '127.0.0.1', '--cluster-enabled', 'yes',
          '--cluster-config-file', `nodes-${port}.conf`, '--cluster-node-timeout', '1000',
          '--save', '', '--appendonly', 'no', '--dir', dir,
        ], `redis-server ${port}`)
      },
      async kill () {
        const process = child
        child = undefined
        await stopProcess(process, 'SIGKILL', `redis-server ${port}`)
      },
    }
  })
  t.teardown(async () => {
    await Promise.all(nodes.map((node) => node.kill()))
    await rm(dir, { recursive: true, force: true })
  })
  await Promise.all(nodes.map((node) => node.start()))
  const created = await runCommand('redis-cli', ['--cluster', 'create', ...ports.map((port) => `127.0.0.1:${port}`), '--cluster-replicas', String(replicas), '--cluster-yes'], dir, 60_000)
  if (created.code !== 0) throw new Error(`redis-cli --cluster create failed: ${created.stdout}\n${created.stderr}`)
  const handle: RedisClusterHandle = {
    nodes,
    startupNodes: ports.map((port) => ({ host: '127.0.0.1', port })),
    async masterOf (key) {
      for (const node of nodes.filter((candidate) => candidate.running)) {
        const slot = Number(await call(node.port, ['CLUSTER', 'KEYSLOT', key]).catch(() => -1))
        const slots = await call(node.port, ['CLUSTER', 'SLOTS']).catch(() => []) as Array<[number, number, [string, number, string]]>
        const range = slots.find(([from, to]) => slot >= from && slot <= to)
        const master = nodes.find((candidate) => candidate.port === range?.[2][1])
        if (master !== undefined) return master
      }
      throw new Error(`no master serves ${key}`)
    },
    async healthy () {
      const deadline = Date.now() + 30_000
      for (;;) {
        const running = nodes.filter((node) => node.running)
        const states = await Promise.all(running.map((node) => call(node.port, ['CLUSTER', 'INFO']).then(String, () => '')))
        // A replica that has not finished its first sync cannot take over (its data counts as too old).
        const replication = await Promise.all(running.map((node) => call(node.port, ['INFO', 'replication']).then(String, () => '')))
        const synced = replication.every((text) => !text.includes('role:slave') || text.includes('master_link_status:up'))
        if (synced && states.every((state) => state.includes('cluster_state:ok'))) return
        if (Date.now() > deadline) throw new Error(`the cluster did not become healthy: ${states.map((state) => /cluster_state:\w+/.exec(state)?.[0]).join(', ')}`)
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    },
  }
  await handle.healthy()
  return handle
}

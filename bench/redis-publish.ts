// Redis CPU per publish: the broker's PUBLISH script (seq + history + fan-out) against a bare PUBLISH of
// the same payload, on one redis-server and on a three-master Redis Cluster (sharded pub/sub: SPUBLISH
// against a bare SPUBLISH). The figure is the redis-servers' own CPU time (INFO cpu: user + sys, so
// reading, parsing and replying count too, summed over the masters) per publish; INFO commandstats gives
// the commands the script runs. `npm run bench:redis` starts its own servers on free loopback ports and
// stops them by PID; `--topology=single|cluster` runs one of the two.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import os, { tmpdir } from 'node:os'
import { join } from 'node:path'
import Fastify from 'fastify'
import { Cluster, Redis } from 'ioredis'
import rooms from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { freePort } from '../test/helpers/components.js'

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

const PINNED = os.availableParallelism() >= 2 && spawnSync('taskset', ['-V']).status === 0
if (PINNED) spawnSync('taskset', ['-a', '-p', '-c', String(os.availableParallelism() - 2), String(process.pid)], { stdio: 'ignore' })

const TOPOLOGIES = (process.argv.find((arg) => arg.startsWith('--topology='))?.slice(11) ?? 'single,cluster').split(',')

async function startServers (count: number, dir: string, cluster: boolean): Promise<{ ports: number[]; children: ChildProcess[] }> {
  const ports: number[] = []
  while (ports.length < count) {
    const port = await freePort()
    // A cluster node also listens on port + 10000 (its bus).
    if (!ports.includes(port) && port + 10_000 < 65_536) ports.push(port)
  }
  // Redis on a core of its own and this process on the other, as the issue measured: on 2 shared cores
  // Redis's CPU per command otherwise swings with the scheduler.
  const children = ports.map((port) => spawn(PINNED ? 'taskset' : 'redis-server', [
    ...(PINNED ? ['-c', String(os.availableParallelism() - 1), 'redis-server'] : []),
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
    ...(cluster ? ['--cluster-enabled', 'yes', '--cluster-config-file', `nodes-${port}.conf`] : []),
  ], { stdio: 'ignore' }))
  for (const port of ports) {
    const probe = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => 100 })
    probe.on('error', () => {})
    for (let i = 0; i < 50 && (await probe.ping().catch(() => '')) !== 'PONG'; i++) await new Promise((resolve) => setTimeout(resolve, 100))
    probe.disconnect()
  }
  if (cluster) {
    const created = spawnSync('redis-cli', ['--cluster', 'create', ...ports.map((port) => `127.0.0.1:${port}`), '--cluster-replicas', '0', '--cluster-yes'], { encoding: 'utf8' })
    if (created.status !== 0) throw new Error(`redis-cli --cluster create failed: ${created.stdout}${created.stderr}`)
    for (let i = 0; i < 100; i++) {
      const states = await Promise.all(ports.map(async (port) => {
        const client = new Redis({ port, host: '127.0.0.1' })
        try {
          return String(await client.call('CLUSTER', 'INFO'))
        } finally {
          client.disconnect()
        }
      }))
      if (states.every((state) => state.includes('cluster_state:ok'))) break
      await new Promise((resolve) => setTimeout(resolve, 100))
    }
  }
  return { ports, children }
}

async function measure (topology: 'single' | 'cluster'): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'bench-redis-'))
  const { ports, children } = await startServers(topology === 'cluster' ? 3 : 1, dir, topology === 'cluster')
  const nodes = ports.map((port) => new Redis({ port, host: '127.0.0.1' }))
  try {
    const cpu = async () => (await Promise.all(nodes.map(async (node) => cpuSeconds(await node.info('cpu'))))).reduce((sum, value) => sum + value, 0)
    const commands = async () => {
      const total = new Map<string, { calls: number; usec: number }>()
      for (const node of nodes) {
        for (const [name, stat] of commandStats(await node.info('commandstats'))) {
          const sum = total.get(name) ?? { calls: 0, usec: 0 }
          total.set(name, { calls: sum.calls + stat.calls, usec: sum.usec + stat.usec })
        }
      }
      return total
    }
    const startupNodes = ports.map((port) => ({ host: '127.0.0.1', port }))
    const broker = topology === 'cluster' ? redisBroker({ cluster: startupNodes }) : redisBroker({ url: `redis://127.0.0.1:${ports[0]}` })
    const app = Fastify()
    await app.register(rooms, { jwt: { secret: 'bench' }, allowedOrigins: '*', presence: false, broker })
    await app.ready()
    // One process subscribed to the room, as with a local member (the channel has a listener).
    const channel = topology === 'cluster' ? 'rooms:{bench}:ev' : 'rooms:ev:bench'
    const listener = topology === 'cluster' ? new Cluster(startupNodes, { shardedSubscribers: true }) : new Redis({ port: ports[0]!, host: '127.0.0.1' })
    await (topology === 'cluster' ? listener.ssubscribe(channel) : listener.subscribe(channel))
    const publisher = topology === 'cluster' ? new Cluster(startupNodes) : new Redis({ port: ports[0]!, host: '127.0.0.1' })
    for (let i = 0; i < 200; i++) await app.rooms.broadcast('bench', 'msg', payload) // warm the script cache
    await Promise.all(nodes.map((node) => node.config('RESETSTAT')))
    let before = await cpu()
    await repeat(PUBLISHES, () => app.rooms.broadcast('bench', 'msg', payload))
    const pluginCpu = await cpu() - before
    const plugin = await commands()
    const frame = JSON.stringify({ type: 'msg', room: 'bench', seq: 1, payload, traceId: '00000000-0000-0000-0000-000000000000', time: Date.now() })
    before = await cpu()
    await repeat(PUBLISHES, () => topology === 'cluster' ? publisher.spublish(channel, frame) : publisher.publish(channel, frame))
    const bareCpu = await cpu() - before
    const perScript = pluginCpu * 1e6 / PUBLISHES
    const perPublish = bareCpu * 1e6 / PUBLISHES
    const measured = [...plugin].filter(([name]) => name !== 'info' && !name.startsWith('config') && name !== 'cluster|info' && name !== 'cluster|slots' && name !== 'cluster|nodes' && name !== 'ping')
    const inside = measured.filter(([name]) => name !== 'evalsha').map(([name, stat]) => `${name}×${(stat.calls / PUBLISHES).toFixed(2)}`)
    const scriptCalls = plugin.get('evalsha')?.calls ?? 0
    // Where the script's time goes: evalsha's usec includes the commands it runs; the rest is Lua and I/O.
    const usecPerCall = Object.fromEntries(measured.map(([name, stat]) => [name, Number((stat.usec / stat.calls).toFixed(2))]))
    console.log(JSON.stringify({ topology, publishes: PUBLISHES, inFlight: IN_FLIGHT, redisCpuUsPerBrokerPublish: Number(perScript.toFixed(2)), redisCpuUsPerBarePublish: Number(perPublish.toFixed(2)), ratio: Number((perScript / perPublish).toFixed(2)), publishesPerScriptCall: Number((PUBLISHES / scriptCalls).toFixed(2)), commandsPerPublish: inside.join(' '), usecPerCall }))
    // Spread over 30 rooms: the busiest server's CPU per publish is what bounds publishes per second.
    const perNode = async () => Promise.all(nodes.map(async (node) => cpuSeconds(await node.info('cpu'))))
    const spreadBefore = await perNode()
    let next = 0
    await repeat(PUBLISHES, () => app.rooms.broadcast(`bench-${next++ % 30}`, 'msg', payload))
    const spread = (await perNode()).map((value, i) => (value - spreadBefore[i]!) * 1e6 / PUBLISHES)
    console.log(JSON.stringify({ topology, rooms: 30, publishes: PUBLISHES, redisCpuUsPerPublishByServer: spread.map((value) => Number(value.toFixed(2))), busiestServerUsPerPublish: Number(Math.max(...spread).toFixed(2)) }))
    listener.disconnect()
    publisher.disconnect()
    await app.close()
  } finally {
    for (const node of nodes) node.disconnect()
    for (const child of children) child.kill('SIGKILL')
    await rm(dir, { recursive: true, force: true })
  }
}

for (const topology of TOPOLOGIES) await measure(topology as 'single' | 'cluster')

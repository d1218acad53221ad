// Past 300 lines: one campaign end to end — components, processes, workload, the fault schedule and the
// quiescence that ends it — kept in one place so a reader follows a run from start to verdict.
//
// One campaign: real components (redis-server, a Redis Cluster, PostgreSQL) and host processes behind
// proxies, a mixed workload from raw-protocol clients and the package's client (WebSocket and SSE), faults
// injected on the seed's schedule, then quiescence, final probes, and the checker's verdict.
import { startPostgres } from '../test/helpers/postgres.js'
import { startRedisCluster, type RedisClusterHandle } from '../test/helpers/redis-cluster.js'
import { startRedis, type RedisServer } from '../test/helpers/redis.js'
import { check, type Verdict } from './checker.js'
import { emptyHistory, type CampaignHistory, type Publish } from './history.js'
import { HostProcess } from './processes.js'
import { seeded } from './protocol.js'
import type { Mangled, MangleSettings } from './proxy.js'
import { drawSchedule, losesState, type Broker, type ScheduledFault } from './schedule.js'
import { ClientSubscriber } from './client-subscriber.js'
import { RawSseSubscriber, RawWsSubscriber } from './raw-transports.js'
import type { RawSubscriber } from './raw-subscriber.js'
import type { Subscriber } from './subscriber.js'

export interface CampaignOptions {
  seed: number
  durationMs: number
  broker: Broker
  transports: Array<'ws' | 'sse'>
  /** The checker's own test: mangle one room event in N on its way to raw clients. */
  mangle?: MangleSettings
  /** false: the workload without faults. */
  faults?: boolean
  log?: (line: string) => void
}

export interface CampaignResult {
  options: CampaignOptions
  schedule: ScheduledFault[]
  history: CampaignHistory
  verdict: Verdict
  mangled: Mangled[]
  /** Faults injected (some are skipped: a failover while the cluster still heals from the last one). */
  injected: number
}

const ROOMS = ['room-0', 'room-1', 'room-2', 'room-3']
const QUIESCENCE_MS = 90_000

export async function runCampaign (options: CampaignOptions): Promise<CampaignResult> {
  const log = options.log ?? (() => {})
  const teardowns: Array<() => unknown> = []
  const t = { teardown: (fn: () => unknown) => { teardowns.push(fn) } }
  const started = Date.now()
  const now = () => Date.now() - started
  const random = seeded(options.seed ^ 0x5eed)
  const schedule = options.faults === false ? [] : drawSchedule(options.seed, options.broker, options.durationMs)
  const history = emptyHistory(options.seed, options.broker, options.transports, started)
  const hosts: HostProcess[] = []
  const subscribers: Subscriber[] = []
  const running = { ended: false }
  try {
    let redis: RedisServer | undefined
    let cluster: RedisClusterHandle | undefined
    let postgres: Awaited<ReturnType<typeof startPostgres>> | undefined
    const env: Record<string, string> = { BROKER: options.broker }
    if (options.broker === 'redis') {
      redis = await startRedis(t)
      env.REDIS_URL = redis.url
    } else if (options.broker === 'cluster') {
      cluster = await startRedisCluster(t, { replicas: 1 })
      env.REDIS_CLUSTER_NODES = cluster.startupNodes.map((node) => `${node.host}:${node.port}`).join(',')
    } else if (options.broker === 'postgres') {
      postgres = await startPostgres(t)
      env.DATABASE_URL = postgres.url
    }
    const processCount = options.broker === 'memory' ? 1 : 2
    for (let i = 0; i < processCount; i++) hosts.push(await HostProcess.start(`server-${i}`, env, history, now, options.mangle))
    const ports = () => hosts.map((host) => host.proxy.port)
    log(`${options.broker}: ${processCount} server process(es) up in ${now()} ms`)

    const raw: RawSubscriber[] = Array.from({ length: 8 }, (_, i) => new RawWsSubscriber(`raw-${i}`, ports, history.publishes, now))
    if (options.transports.includes('sse')) raw.push(...Array.from({ length: 3 }, (_, i) => new RawSseSubscriber(`raw-sse-${i}`, ports, history.publishes, now)))
    const clients: Subscriber[] = []
    if (options.transports.includes('ws')) clients.push(...Array.from({ length: 3 }, (_, i) => new ClientSubscriber(`client-ws-${i}`, 'ws', ports, history.publishes, now)))
    if (options.transports.includes('sse')) clients.push(...Array.from({ length: 3 }, (_, i) => new ClientSubscriber(`client-sse-${i}`, 'sse', ports, history.publishes, now)))
    subscribers.push(...raw, ...clients)
    for (const [i, subscriber] of subscribers.entries()) {
      history.subscribers.push(subscriber.history)
      subscriber.server = i % processCount
      subscriber.start()
      subscriber.join(ROOMS[i % ROOMS.length]!)
      subscriber.join(ROOMS[(i + 1 + Math.floor(random() * 3)) % ROOMS.length]!)
    }

    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!
    let inFlight = 0
    let published = 0
    const publish = async (room: string) => {
      const pid = `http-${++published}`
      const keyed = random() < 0.5
      const tx = options.broker === 'postgres' && random() < 0.3 ? (random() < 0.5 ? 'commit' : 'rollback') : undefined
      const record: Publish = { pid, room, sentAt: now(), answeredAt: 0, outcome: tx === 'rollback' ? 'rolledback' : 'failed', ...(keyed && tx === undefined ? { key: pid } : {}) }
      inFlight++
      try {
        for (let attempt = 0; attempt < (record.key === undefined ? 1 : 4); attempt++) {
          const answer = await httpPublish(pick(ports()), { room, pid, ...(record.key === undefined ? {} : { key: record.key }), ...(tx === undefined ? {} : { tx }) })
          if (answer !== undefined) {
            if (tx !== 'rollback') {
              record.outcome = 'acked'
              record.seq = answer.seq
            }
            break
          }
        }
      } finally {
        inFlight--
        record.answeredAt = now()
        history.publishes.push(record)
      }
    }

    // The workload: a tick every 20 ms until the end, drawn from the seed.
    const workloadStart = now()
    const workloadEnd = workloadStart + options.durationMs
    const workload = (async () => {
      while (now() < workloadEnd && !running.ended) {
        const roll = random()
        if (roll < 0.4) {
          if (inFlight < 16) void publish(pick(ROOMS))
        } else if (roll < 0.65) {
          pick(raw).say(pick(ROOMS))
        } else if (roll < 0.68) {
          pick(clients.length > 0 ? [...raw, ...clients] : raw).say(pick(ROOMS))
        } else if (roll < 0.69) {
          pick(raw).talk(pick(ROOMS), 20 + Math.floor(random() * 40))
        } else if (roll < 0.695) {
          const user = pick(subscribers).history.user
          void fetch(`http://127.0.0.1:${pick(ports())}/server-join`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ user, room: pick(ROOMS) }), signal: AbortSignal.timeout(5000) }).catch(() => {})
        } else if (roll < 0.71) {
          const subscriber = pick(subscribers)
          const room = pick(ROOMS)
          if (random() < 0.5) subscriber.leave(room)
          else subscriber.join(room)
        }
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    })()

    // The faults, each at its offset; what they break is restored in the background.
    const restoring: Array<Promise<unknown>> = []
    const down = new Set<'redis' | 'postgres' | 'postgres-paused'>()
    let injected = 0
    const later = (ms: number, fn: () => unknown) => restoring.push(new Promise((resolve) => setTimeout(resolve, ms)).then(fn).catch((err) => log(`restoring after a fault failed: ${String(err)}`)))
    for (const fault of schedule) {
      const wait = workloadStart + fault.at - now()
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait))
      const host = hosts[fault.target % hosts.length]!
      const record = { at: now(), kind: fault.kind, target: host.name, losesState: losesState(fault.kind, options.broker) }
      const ends = (ms: number) => Object.assign(record, { end: record.at + ms })
      switch (fault.kind) {
        case 'kill':
          if (!host.running) continue
          await host.kill()
          later(fault.durationMs, () => host.restart())
          ends(fault.durationMs)
          break
        case 'pause':
          host.pause()
          later(fault.durationMs, () => host.resume())
          ends(fault.durationMs)
          break
        case 'cut':
          host.proxy.cut()
          break
        case 'slow': {
          const reader = raw[fault.target % raw.length]!
          reader.slow(fault.durationMs * 2)
          record.target = reader.history.name
          ends(fault.durationMs * 2)
          break
        }
        case 'move':
          for (const subscriber of [raw[fault.target % raw.length]!, raw[(fault.target + 3) % raw.length]!, ...clients.slice(0, 1)]) {
            subscriber.server++
            subscriber.drop()
          }
          if (clients.length > 0) hosts[clients[0]!.server % hosts.length]!.proxy.cut()
          break
        case 'burst':
          for (const each of hosts) each.proxy.cut()
          record.target = 'every process'
          break
        case 'redis-restart':
          // Not while the last restart is still down: two starts would race for the port.
          if (down.has('redis')) continue
          down.add('redis')
          await redis!.stop()
          later(fault.durationMs, () => redis!.start().finally(() => down.delete('redis')))
          record.target = 'redis'
          ends(fault.durationMs)
          break
        case 'redis-pause':
          redis!.pause()
          later(fault.durationMs, () => redis!.resume())
          record.target = 'redis'
          ends(fault.durationMs)
          break
        case 'failover': {
          // One failover at a time: the old master must be back as a synced replica first.
          if (cluster!.nodes.some((node) => !node.running)) continue
          const ok = await cluster!.healthy().then(() => true, () => false)
          if (!ok) continue
          const room = ROOMS[fault.target % ROOMS.length]!
          const master = await cluster!.masterOf(`rooms:{${room}}:seq`)
          await master.kill()
          record.target = `the master of ${room} (port ${master.port})`
          later(fault.durationMs + 3000, () => master.start())
          ends(fault.durationMs + 3000)
          break
        }
        case 'postgres-restart':
          // Not while it is down or paused (a stopped postmaster cannot shut down).
          if (down.has('postgres') || down.has('postgres-paused')) continue
          down.add('postgres')
          await postgres!.stop()
          later(fault.durationMs, () => postgres!.start().finally(() => down.delete('postgres')))
          record.target = 'postgres'
          ends(fault.durationMs)
          break
        case 'postgres-pause':
          if (down.has('postgres') || down.has('postgres-paused')) continue
          down.add('postgres-paused')
          postgres!.pause()
          later(fault.durationMs, () => {
            postgres!.resume()
            down.delete('postgres-paused')
          })
          record.target = 'postgres'
          ends(fault.durationMs)
          break
      }
      injected++
      history.faults.push(record)
      log(`${(record.at / 1000).toFixed(1)} s: ${record.kind} ${record.target}`)
    }
    await workload
    if (options.mangle !== undefined) options.mangle.active = false
    await Promise.all(restoring)
    for (const host of hosts) {
      host.resume()
      await host.restart()
    }
    if (cluster !== undefined) await cluster.healthy()
    await waitUntil(() => inFlight === 0, 30_000)
    log(`${(now() / 1000).toFixed(1)} s: faults healed; waiting for quiescence`)

    // Quiescence: every subscriber connected, its rooms joined, its requests answered; then one probe
    // publish per room that every member must receive, so a member left behind shows as stale.
    await waitUntil(() => subscribers.every((subscriber) => subscriber.settled()), QUIESCENCE_MS)
    for (const room of ROOMS) {
      const pid = `probe-${room}`
      const record: Publish = { pid, room, sentAt: now(), answeredAt: 0, outcome: 'failed', key: pid }
      const deadline = Date.now() + 30_000
      while (record.outcome !== 'acked' && Date.now() < deadline) {
        const answer = await httpPublish(ports()[0]!, { room, pid, key: pid })
        if (answer !== undefined) {
          record.outcome = 'acked'
          record.seq = answer.seq
        } else {
          await new Promise((resolve) => setTimeout(resolve, 200))
        }
      }
      record.answeredAt = now()
      history.publishes.push(record)
    }
    // Each member's position reaches its probe's seq (the checker, reading the history, says whether it
    // got the probe itself); a scan of every history here would cost seconds in a long run.
    const probeSeq = new Map(history.publishes.filter((publish) => publish.pid.startsWith('probe-')).map((publish) => [publish.room, publish.seq ?? 0]))
    await waitUntil(() => subscribers.every((subscriber) => !subscriber.settled() || subscriber.joinedRooms().every((room) => (subscriber.position(room)?.seq ?? -1) >= (probeSeq.get(room) ?? 0))), 30_000)
    for (const subscriber of subscribers) if (!subscriber.settled()) history.stuck.push(subscriber.history.name)
    for (const room of ROOMS) history.final.positions[room] = await httpGet(ports()[0]!, `/position?room=${room}`) as { seq: number; epoch: string }
    // Presence events published after the probes may still be on their way: every member reaches the position.
    await waitUntil(() => subscribers.every((subscriber) => !subscriber.settled() || subscriber.joinedRooms().every((room) => {
      const held = subscriber.position(room)
      const final = history.final.positions[room]!
      return held?.seq === final.seq && held.epoch === final.epoch
    })), 10_000)
    // Presence converges once every dead process's entries expire: read until it matches, or for 15 s.
    const expectedMembers = (room: string) => JSON.stringify([...new Set(subscribers.filter((subscriber) => subscriber.settled() && subscriber.joinedRooms().includes(room)).map((subscriber) => subscriber.history.user))].sort())
    await waitUntilAsync(async () => {
      for (const host of hosts) {
        for (const room of ROOMS) if (JSON.stringify(await httpGet(host.proxy.port, `/members?room=${room}`)) !== expectedMembers(room)) return false
      }
      return true
    }, 15_000)
    for (const host of hosts) {
      for (const room of ROOMS) history.final.members.push({ process: host.name, room, users: await httpGet(host.proxy.port, `/members?room=${room}`) as string[] })
      const memory = await httpGet(host.proxy.port, '/memory') as { heapUsed: number; rss: number }
      history.final.memory.push({ process: host.name, heapUsed: memory.heapUsed, rss: memory.rss })
    }
    for (const subscriber of subscribers) subscriber.stop()
    const verdict = check(history)
    return { options, schedule, history, verdict, mangled: hosts.flatMap((host) => host.proxy.mangled), injected }
  } finally {
    running.ended = true
    for (const subscriber of subscribers) subscriber.stop()
    await Promise.all(hosts.map((host) => host.stop()))
    for (const teardown of teardowns.reverse()) await teardown()
  }
}

async function httpPublish (port: number, body: Record<string, unknown>): Promise<{ seq: number } | undefined> {
  try {
    const response = await fetch(`http://127.0.0.1:${port}/publish`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: AbortSignal.timeout(5000) })
    const answer = await response.json() as { seq?: number }
    return response.status === 200 && typeof answer.seq === 'number' ? { seq: answer.seq } : undefined
  } catch {
    return undefined
  }
}

async function httpGet (port: number, path: string): Promise<unknown> {
  const deadline = Date.now() + 10_000
  for (;;) {
    try {
      const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(3000) })
      if (response.status === 200) return await response.json()
    } catch {}
    if (Date.now() > deadline) throw new Error(`GET ${path} failed for 10 s`)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
}

async function waitUntil (condition: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!condition()) {
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return true
}

async function waitUntilAsync (condition: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (!(await condition())) {
    if (Date.now() > deadline) return false
    await new Promise((resolve) => setTimeout(resolve, 200))
  }
  return true
}

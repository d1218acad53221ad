// The fault schedule, drawn from the seed alone: the same seed, broker and length give the same faults at
// the same offsets, so a violation's run can be replayed (its timing against the workload is the machine's).
import { seeded } from './protocol.js'

export type Broker = 'memory' | 'redis' | 'cluster' | 'postgres'

export type FaultKind =
  | 'kill' | 'pause' | 'cut' | 'slow' | 'move' | 'burst'
  | 'redis-restart' | 'redis-pause' | 'failover' | 'postgres-restart' | 'postgres-pause'

export interface ScheduledFault {
  /** Milliseconds after the workload starts. */
  at: number
  kind: FaultKind
  /** Which server process (kill, pause, cut, move) or subscriber (slow); a room for a failover. */
  target: number
  /** How long it lasts: a pause, a slow read, a process down before its restart. */
  durationMs: number
}

const COMMON: FaultKind[] = ['kill', 'pause', 'cut', 'slow', 'move', 'burst']
const BY_BROKER: Record<Broker, FaultKind[]> = {
  memory: [],
  redis: ['redis-restart', 'redis-pause'],
  cluster: ['failover'],
  postgres: ['postgres-restart', 'postgres-pause'],
}

/** Faults every campaign of a broker has at least once: what can lose that broker's state. */
const REQUIRED: Record<Broker, FaultKind[]> = {
  memory: ['kill'],
  redis: BY_BROKER.redis,
  cluster: BY_BROKER.cluster,
  postgres: BY_BROKER.postgres,
}

/**
 * One fault every 2–5 s of the run, none in its last 2 s. A draw that lacks one of the broker's required
 * faults (a short run can: seed 27's 30 s drew none) has faults spread over the run replaced by them; a
 * draw that has them all is kept as drawn, so a seed's schedule only changes where it lacked one.
 */
export function drawSchedule (seed: number, broker: Broker, durationMs: number): ScheduledFault[] {
  const random = seeded(seed)
  const kinds = [...COMMON, ...BY_BROKER[broker], ...BY_BROKER[broker]]
  const schedule: ScheduledFault[] = []
  for (let at = 1000 + Math.floor(random() * 2000); at < durationMs - 2000; at += 2000 + Math.floor(random() * 3000)) {
    const kind = kinds[Math.floor(random() * kinds.length)]!
    schedule.push({ at, kind, target: Math.floor(random() * 1000), durationMs: 300 + Math.floor(random() * 2700) })
  }
  const missing = REQUIRED[broker].filter((kind) => !schedule.some((fault) => fault.kind === kind))
  missing.forEach((kind, index) => {
    const replaced = schedule[Math.floor(((index + 1) * schedule.length) / (missing.length + 1))]
    if (replaced !== undefined) replaced.kind = kind
  })
  return schedule
}

/**
 * Whether a fault can lose what the broker stored (answers, positions, idempotency keys) or cut a process
 * off from it: while Redis is unreachable a retried frame runs its handler again (docs/scaling.md).
 */
export function losesState (kind: FaultKind, broker: Broker): boolean {
  return (kind === 'kill' && broker === 'memory') || kind === 'redis-restart' || kind === 'redis-pause' || kind === 'failover' ||
    kind === 'postgres-restart' || kind === 'postgres-pause'
}

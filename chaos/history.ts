// What a campaign records: each subscriber's view of its rooms, each publisher's answers, each handler run,
// and the faults. The checker reads only this, so a run's verdict can be recomputed from its history.

/**
 * One thing a subscriber saw, in arrival order; `conn` numbers its connections. An event with `snapshot`
 * is an open streamed event handed over with a join (its seq is at or before the join's), not a delivery.
 */
export type Seen =
  | { at: number; conn: number; k: 'joined'; room: string; seq: number; epoch: string }
  | { at: number; conn: number; k: 'resumed'; room: string; result: string; seq?: number; epoch?: string }
  | { at: number; conn: number; k: 'left'; room: string }
  | { at: number; conn: number; k: 'reset'; room: string; seq: number; epoch: string }
  | { at: number; conn: number; k: 'event'; room: string; seq: number; type: string; pid?: string; snapshot?: true; stream?: { id: string; state: string; text: string; count: number } }
  | { at: number; conn: number; k: 'append'; room: string; seq: number; id: string; offset: number; text: string; state?: string }
  | { at: number; conn: number; k: 'closed'; code: number }
  | { at: number; conn: number; k: 'answer'; id: string; ok: boolean; code?: string }

export interface SubscriberHistory {
  name: string
  user: string
  /** raw-ws / raw-sse: our own protocol code, no dedupe; client-ws / client-sse: the package's client. */
  kind: 'raw-ws' | 'raw-sse' | 'client-ws' | 'client-sse'
  seen: Seen[]
  /** Requests with an id: the room and when first sent. */
  requests: Array<{ id: string; room: string; at: number }>
  /** Rooms it is joined to at the end, and whether it is connected. */
  finalRooms: string[]
  connected: boolean
}

export interface Publish {
  pid: string
  room: string
  sentAt: number
  answeredAt: number
  /** acked: the publisher was told `seq`; failed: an error (it may or may not exist); rolledback: must never exist. */
  outcome: 'acked' | 'failed' | 'rolledback'
  seq?: number
  key?: string
}

export interface FaultRecord {
  at: number
  end?: number
  kind: string
  target: string
  /** Whether it can lose stored state (answers, positions): a memory-broker process killed, Redis restarted, a failover. */
  losesState: boolean
}

export interface CampaignHistory {
  seed: number
  broker: string
  transports: string[]
  startedAt: number
  faults: FaultRecord[]
  subscribers: SubscriberHistory[]
  publishes: Publish[]
  /** `ran <user> <id>` lines of the hosts, with when they were read. */
  handlerRuns: Array<{ at: number; user: string; id: string; process: string }>
  /** Process exits the schedule did not cause. */
  unexpectedExits: Array<{ at: number; process: string; code: number | null; signal: string | null }>
  /** Subscribers that never settled (connected, rooms joined, requests answered) after the faults healed. */
  stuck: string[]
  /** After quiescence: each room's position and, per live process, its members. */
  final: {
    positions: Record<string, { seq: number; epoch: string }>
    members: Array<{ process: string; room: string; users: string[] }>
    memory: Array<{ process: string; heapUsed: number; rss: number }>
  }
}

/** A history with nothing recorded yet. */
export function emptyHistory (seed: number, broker: string, transports: string[], startedAt: number): CampaignHistory {
  return {
    seed,
    broker,
    transports,
    startedAt,
    faults: [],
    subscribers: [],
    publishes: [],
    handlerRuns: [],
    unexpectedExits: [],
    stuck: [],
    final: { positions: {}, members: [], memory: [] },
  }
}

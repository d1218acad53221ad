// The Broker is the only part that knows whether there is one process or many. Its parts follow
// Centrifuge's split: room events and history, presence, routing to a user, shared answers, and streams.
import type { StreamAppend, StreamInfo } from '../protocol/stream-frames.js'

/** Where a broker delivers what was published, on every process (this process's RoomRegistry). */
export interface BrokerDelivery {
  /**
   * A serialized room event of `type` for local members of `room`, except the connection `except`.
   * `publishedAt` (ms since the epoch, sub-ms precision) is when publish began, for the broadcast latency.
   */
  roomEvent(room: string, type: string, seq: number, frame: string, except: string | undefined, publishedAt?: number): void
  /** A serialized direct frame for every local connection of `userId`. */
  userMessage(userId: string, frame: string): void
  userDisconnect(userId: string, code: number, reason: string): void
  /**
   * Events of `room` may have been missed and cannot be replayed (the broker lost its connection and the
   * room's history or epoch is gone): local members must be told, with the room's current position.
   */
  roomReset(room: string, position: RoomPosition): void
  /** Presence changed without a local join or leave: a dead process's members were removed, or this process's were restored. */
  presenceChanged(room: string, userId: string, action: 'join' | 'leave'): void
  /** The server puts the target's local sockets into the room, or takes them out (fastify.rooms.join/leave). */
  serverMembership(change: MembershipChange): void
  /** A frame POSTed on another process for an SSE session of `userId` (delivered if the session is here and hers). */
  sessionFrame?(userId: string, sessionId: string, frame: string): void
  /** A streamed event's text grew (or it ended), on whichever process writes it. `frame` is `append` serialized. */
  streamAppend?(append: StreamAppend, frame: string): void
}

/** A server-side join or leave, for every socket of a user or for one connection, on whichever process has them. */
export interface MembershipChange {
  action: 'join' | 'leave'
  room: string
  target: { userId: string } | { connectionId: string }
}

/** What the plugin's options tell the broker when it starts. */
export interface BrokerSettings {
  /** `maxBytes`: the budget of all rooms' history on this process (memory broker). */
  history: { maxEvents: number; maxAgeMs: number; maxBytes: number }
  /** A room's own history limits (its namespace's); `history` when absent. `maxEvents: 0` keeps none. */
  historyFor?: (room: string) => { maxEvents: number; maxAgeMs: number }
  /** How long a publish's idempotencyKey is remembered. */
  idempotencyWindowMs: number
  /** The Fastify instance's logger. */
  log?: { info(msg: string): void; warn(obj: object, msg: string): void; error(obj: object, msg: string): void }
}

export interface PublishRequest {
  room: string
  type: string
  /** The payload, already JSON: serialized once by the publisher, never per process or per socket. */
  payloadJson: string
  traceId: string
  /** The publish span's W3C traceparent, when the publish was traced; it travels in the frame. */
  traceparent?: string | undefined
  except?: string | undefined
  /** The same key for the same room within the idempotency window publishes once: the first position is returned. */
  idempotencyKey?: string | undefined
  /**
   * A streamed event (`fastify.rooms.stream`): its record (text '', state streaming) is made with the event,
   * unless the room has `maxOpen` open streams already (then `StreamLimitError`, and no event).
   */
  stream?: { id: string; maxOpen: number; idleMs: number } | undefined
}

/** Where a room's sequence stands: `seq` of its last event, in the run named by `epoch`. */
export interface RoomPosition {
  seq: number
  epoch: string
}

export interface HistoryEvent {
  seq: number
  /** The event exactly as it was delivered live (a streamed event: with its text and state as they are now). */
  frame: string
  /** A streamed event's id, text length (UTF-16 code units) and whether it is still streaming. */
  stream?: StreamPoint | undefined
}

export interface StreamPoint {
  id: string
  length: number
  open: boolean
}

/** A stream as its broker stores it: its event's frame (with the text and state now), and where it stands. */
export interface StoredStream {
  seq: number
  frame: string
  info: StreamInfo
  /** ms since the epoch of its last append (the backend's clock where it has one). */
  updatedAt: number
}

/**
 * Streamed events (`fastify.rooms.stream`): one room event whose text grows. The writer appends in order,
 * one call at a time per stream; each append is stored before it is fanned out, so a reader of the store
 * always has at least what any process was sent.
 */
export interface StreamBroker {
  /**
   * Appends `append.text` at `append.offset` and, with `append.state`, ends the stream; fans `frame` out to
   * every process. 'conflict': the stream is not streaming or its text is not `offset` long (another
   * process ended it); 'gone': no such stream (its backend lost it); nothing is published then.
   */
  appendStream(append: StreamAppend, frame: string): Promise<'ok' | 'conflict' | 'gone'>
  stream(room: string, id: string): Promise<StoredStream | undefined>
  /** Optional: the most text one append may carry (UTF-16 code units), when the backend bounds messages. */
  readonly maxAppendUnits?: number
  /** The room's open streams, oldest first (a joiner's snapshot). */
  openStreams(room: string): Promise<StoredStream[]>
}

export interface HistorySlice {
  position: RoomPosition
  /** Retained events with seq > after, oldest first. */
  events: HistoryEvent[]
  /** False when some event after `after` is no longer retained (count or age): the reader must reset. */
  complete: boolean
}

/** Answers to frames with an id, shared by every process (a retry may reach another process). */
export interface SharedAnswers {
  /**
   * Claims (user, answerId, fingerprint) for a first run, or reports it running ('pending') or answered
   * ('done'). A user holds at most `limits.maxIdsPerUser` answers, across processes: the oldest go first.
   */
  claimAnswer(userId: string, answerId: string, fingerprint: string, limits: { windowMs: number; maxIdsPerUser: number }): Promise<{ state: 'new' } | { state: 'pending' } | { state: 'done'; outcome: string }>
  storeAnswer(userId: string, answerId: string, fingerprint: string, outcome: string, ttlMs: number): Promise<void>
}

/**
 * A SQL client inside the caller's open transaction: a `pg` PoolClient or Client after `BEGIN`. Only
 * `query` is used, with a text and its values.
 */
export interface SqlTransaction {
  query(config: { text: string; values?: unknown[] }): Promise<{ rows: any[] }>
}

/**
 * A room's events: one `seq` per event across every process, bounded history, and delivery to the
 * processes that subscribed to the room.
 */
export interface EventBroker {
  /** Assigns the next `seq` of the room, records the event and fans it out to every process. */
  publish(request: PublishRequest): Promise<RoomPosition>
  position(room: string): Promise<RoomPosition>
  /** The position of a room that exists, without creating it (undefined otherwise). */
  peekPosition(room: string): Promise<RoomPosition | undefined>
  /** The room's retained events after `after`, read after this process subscribed to the room. */
  history(room: string, after: number): Promise<HistorySlice>
  /**
   * Optional (the Postgres broker): publishes inside the caller's transaction. The event exists iff that
   * transaction commits; it is delivered after the commit, and seq order is the room's commit order.
   */
  publishIn?(transaction: SqlTransaction, request: PublishRequest): Promise<RoomPosition>
  /** Optional (the Postgres broker): the room's position as the caller's transaction sees it. */
  positionIn?(transaction: SqlTransaction, room: string): Promise<RoomPosition>
  /** This process has local members in `room` and wants its events. */
  subscribe(room: string): Promise<void>
  unsubscribe(room: string): Promise<void>
}

/** Who is in which room, on every process. */
export interface PresenceBroker {
  /**
   * Records one connection of a user in a room; true when the user was not present before. `info`: the
   * user's public presence data (JSON), kept while the user is present.
   */
  presenceJoin(room: string, userId: string, connectionId: string, info?: string): Promise<boolean>
  /** Removes one connection of a user; true when it was the user's last in the room. */
  presenceLeave(room: string, userId: string, connectionId: string): Promise<boolean>
  /** Ids of the users present in the room, on every process. */
  presence(room: string): Promise<string[]>
  /** The presence data (JSON) of the users present who have some, by user id. */
  presenceInfo?(room: string): Promise<Record<string, string>>
  /**
   * Optional, for rooms of any size (a join reads these, never the whole member list): how many users are
   * present; whether one is; and at most `limit` of them with their presence data. Without them the
   * plugin falls back to `presence()` and `presenceInfo()`.
   */
  presenceCount?(room: string): Promise<number>
  isPresent?(room: string, userId: string): Promise<boolean>
  presenceSample?(room: string, limit: number): Promise<PresenceSample>
  /** Rooms with at least one member on any process. */
  rooms(): Promise<string[]>
}

/** Messages for a user (or one connection), wherever the user's sockets are. */
export interface UserRouting {
  sendToUser(userId: string, frame: string): Promise<void>
  /** Delivers a server-side join or leave to every process (each applies it to the target's local sockets). */
  changeMembership(change: MembershipChange): Promise<void>
  disconnectUser(userId: string, code: number, reason: string): Promise<void>
  /**
   * Optional, for brokers that route a user's messages to the processes the user is on: this process has
   * its first socket of the user (its frames wait for this), or closed its last.
   */
  userConnected?(userId: string): Promise<void>
  userDisconnected?(userId: string): void
  /** Optional, for many processes: a frame for an SSE session that may live on another process of `userId`'s. */
  sendToSession?(userId: string, sessionId: string, frame: string): Promise<void>
}

/**
 * What the plugin runs on: events and history, presence and user routing, with a lifecycle; answers to
 * retried frames may be shared too (without them each process remembers its own).
 */
export interface Broker extends EventBroker, PresenceBroker, UserRouting, Partial<SharedAnswers>, Partial<StreamBroker> {
  readonly name: string
  /** Connects and starts delivering; rejects with a clear error when its backend cannot be reached. */
  start(delivery: BrokerDelivery, settings: BrokerSettings): Promise<void>
  /**
   * `lingerMs`: this process's presence entries stay this long before other processes remove them (and
   * publish the leaves of users who did not rejoin elsewhere), instead of going at once.
   */
  close(options?: { lingerMs?: number }): Promise<void>
}

/** Some of a room's users (at most the limit asked for), with the presence data of those who have some, and how many there are. */
export interface PresenceSample {
  total: number
  ids: string[]
  info: Record<string, string>
}

export function isBroker (value: unknown): value is Broker {
  if (typeof value !== 'object' || value === null) return false
  const methods = ['start', 'publish', 'position', 'peekPosition', 'history', 'subscribe', 'unsubscribe', 'presenceJoin', 'presenceLeave', 'presence', 'rooms', 'sendToUser', 'changeMembership', 'disconnectUser', 'close'] as const
  return methods.every((method) => typeof (value as Record<string, unknown>)[method] === 'function')
}

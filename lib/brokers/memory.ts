// The default broker: one process, everything in memory. A restart starts every room in a new epoch.
// All rooms' history shares one budget in bytes (history.maxBytes): past it, the oldest events of the
// room that published least recently go first, so their resumers get a `reset` instead of the process
// growing without bound.
// Past 300 lines: events and history, presence, routing and streams of one process share one map of rooms
// and one byte budget; split apart, each part would reach into the others' rooms.
import { randomUUID } from 'node:crypto'
import { preciseNow } from '../observability/metrics.js'
import { StreamLimitError } from '../config/errors.js'
import { roomEventFrame } from '../protocol/event-frames.js'
import { withStream, type StreamAppend } from '../protocol/stream-frames.js'
import type { Broker, BrokerDelivery, BrokerSettings, HistorySlice, PublishRequest, RoomPosition, MembershipChange, PresenceSample, StoredStream } from './broker.js'
import { EventHistory } from './history.js'

interface MemoryStream {
  seq: number
  /** The event as first published (text '', streaming). */
  frame: string
  text: string
  state: 'streaming' | 'done' | 'aborted'
  reason: string | undefined
  updatedAt: number
  /** UTF-8 bytes of text, counted toward the history budget. */
  bytes: number
}

interface RoomState {
  seq: number
  epoch: string
  lastEventAt: number
  subscribed: boolean
  /** userId → that user's connection ids in the room */
  presence: Map<string, Set<string>>
  history: EventHistory
  /** Presence data by user id, for users who have some. */
  infos?: Map<string, string>
  /** A host event was published here: until then the room only carried presence. */
  hosted?: boolean
  /** Streamed events by id: open ones, and ended ones while history holds their event. */
  streams?: Map<string, MemoryStream>
}

export interface MemoryBrokerOptions {
  /** Per-room history for resume; defaults to the plugin's `history` option. */
  history?: { maxEvents: number; maxAgeMs: number; maxBytes?: number }
}

// What a room costs besides its events (state, maps, ring), counted toward the history budget.
const ROOM_STATE_BYTES = 512
// A room nobody is in that only carried presence is forgotten this long after its last event (Redis: idleRoomTtlMs).
const IDLE_ROOM_MS = 120_000
// Idempotency keys remembered at most, whatever the window: the oldest go first.
const MAX_IDEMPOTENCY_KEYS = 100_000

class MemoryBroker implements Broker {
  readonly name = 'memory'
  private delivery: BrokerDelivery | undefined
  /** In order of creation or last publish: the least recently published room first. */
  private readonly roomStates = new Map<string, RoomState>()
  private historyLimits: { maxEvents: number; maxAgeMs: number; maxBytes: number }
  private historyFor: (room: string) => { maxEvents: number; maxAgeMs: number } = () => this.historyLimits
  /** Bytes held by all rooms: their events and ROOM_STATE_BYTES each. */
  private heldBytes = 0
  private idempotencyWindowMs = 300_000
  /** `room NUL key` → the first publish's position; in insertion order, so the oldest are at the front. */
  private readonly idempotency = new Map<string, { position: RoomPosition; at: number }>()
  private sweepTimer: NodeJS.Timeout | undefined

  constructor (private readonly options: MemoryBrokerOptions) {
    this.historyLimits = { maxEvents: 0, maxAgeMs: 0, maxBytes: Infinity, ...options.history }
  }

  async start (delivery: BrokerDelivery, settings: BrokerSettings): Promise<void> {
    this.delivery = delivery
    this.historyLimits = { ...settings.history, ...this.options.history }
    if (settings.historyFor !== undefined && this.options.history === undefined) this.historyFor = settings.historyFor
    this.idempotencyWindowMs = settings.idempotencyWindowMs
    // One timer for all rooms. A room with no members frees everything (its seq too, so its next event
    // starts a new epoch) once its last event is maxAgeMs old.
    this.sweepTimer = setInterval(() => {
      // A throw inside a timer callback is uncaught: the next sweep tries again.
      try {
        this.sweep()
      } catch (err) {
        settings.log?.error({ err }, 'fastify-rooms: memory broker sweep failed')
      }
    }, Math.max(10, Math.min(this.historyLimits.maxAgeMs, IDLE_ROOM_MS / 4, 60_000)))
    this.sweepTimer.unref()
  }

  async publish (request: PublishRequest): Promise<RoomPosition> {
    const publishedAt = preciseNow()
    const time = Date.now()
    const idempotencyKey = request.idempotencyKey === undefined ? undefined : `${request.room}\u0000${request.idempotencyKey}`
    if (idempotencyKey !== undefined) {
      const first = this.idempotency.get(idempotencyKey)
      if (first !== undefined && time - first.at <= this.idempotencyWindowMs) return first.position
    }
    const state = this.state(request.room)
    const { stream } = request
    if (stream !== undefined && openCount(state) >= stream.maxOpen) throw new StreamLimitError(`room "${request.room}"`, stream.maxOpen)
    const seq = ++state.seq
    state.lastEventAt = time
    if (request.type !== 'presence') state.hosted = true
    // Most recently published last: the budget takes from the front.
    this.roomStates.delete(request.room)
    this.roomStates.set(request.room, state)
    const frame = roomEventFrame(request, seq, time, stream?.id)
    if (stream !== undefined) {
      (state.streams ??= new Map()).set(stream.id, { seq, frame, text: '', state: 'streaming', reason: undefined, updatedAt: time, bytes: 0 })
    }
    this.heldBytes += state.history.append(seq, time, frame)
    this.enforceBudget()
    const position = { seq, epoch: state.epoch }
    if (idempotencyKey !== undefined) this.remember(idempotencyKey, position, time)
    this.delivery?.roomEvent(request.room, request.type, seq, frame, request.except, publishedAt)
    return position
  }

  async position (room: string): Promise<RoomPosition> {
    const state = this.state(room)
    return { seq: state.seq, epoch: state.epoch }
  }

  async peekPosition (room: string): Promise<RoomPosition | undefined> {
    const state = this.roomStates.get(room)
    return state === undefined ? undefined : { seq: state.seq, epoch: state.epoch }
  }

  async history (room: string, after: number): Promise<HistorySlice> {
    const state = this.state(room)
    this.heldBytes -= state.history.expire(Date.now())
    const { events, complete } = state.history.after(after, state.seq)
    if (state.streams !== undefined) {
      const bySeq = new Map<number, [string, MemoryStream]>()
      for (const [id, stream] of state.streams) bySeq.set(stream.seq, [id, stream])
      for (const event of events) {
        const found = bySeq.get(event.seq)
        if (found === undefined) continue
        const stored = storedStream(found[0], found[1])
        event.frame = stored.frame
        event.stream = { id: found[0], length: found[1].text.length, open: found[1].state === 'streaming' }
      }
    }
    return { position: { seq: state.seq, epoch: state.epoch }, events, complete }
  }

  async appendStream (append: StreamAppend, frame: string): Promise<'ok' | 'conflict' | 'gone'> {
    const state = this.roomStates.get(append.room)
    const stream = state?.streams?.get(append.id)
    if (stream === undefined) return 'gone'
    if (stream.state !== 'streaming' || stream.text.length !== append.offset) return 'conflict'
    const bytes = Buffer.byteLength(append.text)
    stream.text += append.text
    stream.bytes += bytes
    stream.updatedAt = Date.now()
    this.heldBytes += bytes
    if (append.state !== undefined) {
      stream.state = append.state
      stream.reason = append.reason
    }
    this.enforceBudget()
    this.delivery?.streamAppend?.(append, frame)
    return 'ok'
  }

  async stream (room: string, id: string): Promise<StoredStream | undefined> {
    const stream = this.roomStates.get(room)?.streams?.get(id)
    return stream === undefined ? undefined : storedStream(id, stream)
  }

  async openStreams (room: string): Promise<StoredStream[]> {
    const open: StoredStream[] = []
    for (const [id, stream] of this.roomStates.get(room)?.streams ?? []) if (stream.state === 'streaming') open.push(storedStream(id, stream))
    return open
  }

  async subscribe (room: string): Promise<void> {
    this.state(room).subscribed = true
  }

  async unsubscribe (room: string): Promise<void> {
    const state = this.roomStates.get(room)
    if (state !== undefined) state.subscribed = false
  }

  async presenceJoin (room: string, userId: string, connectionId: string, info?: string): Promise<boolean> {
    const state = this.state(room)
    if (info !== undefined) (state.infos ??= new Map()).set(userId, info)
    const presence = state.presence
    let connections = presence.get(userId)
    const first = connections === undefined
    if (connections === undefined) {
      connections = new Set()
      presence.set(userId, connections)
    }
    connections.add(connectionId)
    return first
  }

  async presenceLeave (room: string, userId: string, connectionId: string): Promise<boolean> {
    const presence = this.roomStates.get(room)?.presence
    const connections = presence?.get(userId)
    if (presence === undefined || connections === undefined || !connections.delete(connectionId)) return false
    if (connections.size > 0) return false
    presence.delete(userId)
    this.roomStates.get(room)?.infos?.delete(userId)
    return true
  }

  async presenceInfo (room: string): Promise<Record<string, string>> {
    return Object.fromEntries(this.roomStates.get(room)?.infos ?? [])
  }

  async presenceCount (room: string): Promise<number> {
    return this.roomStates.get(room)?.presence.size ?? 0
  }

  async isPresent (room: string, userId: string): Promise<boolean> {
    return this.roomStates.get(room)?.presence.has(userId) === true
  }

  async presenceSample (room: string, limit: number): Promise<PresenceSample> {
    const state = this.roomStates.get(room)
    const ids: string[] = []
    const info: Record<string, string> = {}
    if (state === undefined) return { total: 0, ids, info }
    for (const id of state.presence.keys()) {
      if (ids.length === limit) break
      ids.push(id)
      const data = state.infos?.get(id)
      if (data !== undefined) info[id] = data
    }
    return { total: state.presence.size, ids, info }
  }

  async presence (room: string): Promise<string[]> {
    const presence = this.roomStates.get(room)?.presence
    return presence === undefined ? [] : [...presence.keys()]
  }

  async rooms (): Promise<string[]> {
    const names: string[] = []
    for (const [name, state] of this.roomStates) if (state.presence.size > 0) names.push(name)
    return names
  }

  async sendToUser (userId: string, frame: string): Promise<void> {
    this.delivery?.userMessage(userId, frame)
  }

  async disconnectUser (userId: string, code: number, reason: string): Promise<void> {
    this.delivery?.userDisconnect(userId, code, reason)
  }

  async changeMembership (change: MembershipChange): Promise<void> {
    this.delivery?.serverMembership(change)
  }

  async close (): Promise<void> {
    clearInterval(this.sweepTimer)
    this.roomStates.clear()
    this.idempotency.clear()
    this.heldBytes = 0
    this.delivery = undefined
  }

  private state (room: string): RoomState {
    let state = this.roomStates.get(room)
    if (state === undefined) {
      state = {
        seq: 0,
        epoch: randomUUID(),
        lastEventAt: Date.now(),
        subscribed: false,
        presence: new Map(),
        history: ((limits) => new EventHistory(limits.maxEvents, limits.maxAgeMs))(this.historyFor(room)),
      }
      this.roomStates.set(room, state)
      this.heldBytes += ROOM_STATE_BYTES
      this.enforceBudget()
    }
    return state
  }

  /**
   * Over budget: the oldest events of the least recently published room go first, and a room nobody is
   * in goes once it has nothing left to replay. Rooms with members keep their seq and epoch.
   */
  private enforceBudget (): void {
    const { maxBytes } = this.historyLimits
    if (this.heldBytes <= maxBytes) return
    // Rooms nobody is in that only ever carried presence go first: join/leave churn of fresh names never
    // pushes out another room's history.
    for (const [name, state] of this.roomStates) {
      if (state.hosted !== true && this.isIdle(state)) this.forget(name)
      if (this.heldBytes <= maxBytes) return
    }
    for (const [name, state] of this.roomStates) {
      while (state.history.length > 0 && this.heldBytes > maxBytes) {
        this.heldBytes -= state.history.dropOldest()
        this.dropEndedStreams(state)
      }
      if (this.heldBytes <= maxBytes) return
      // Nothing left to replay and nobody in it: the room itself goes (its next event starts a new epoch).
      if (this.isIdle(state)) this.forget(name)
    }
  }

  /** Nobody is in it and no stream is being written to it: it may go. */
  private isIdle (state: RoomState): boolean {
    return !state.subscribed && state.presence.size === 0 && openCount(state) === 0
  }

  private forget (room: string): void {
    const state = this.roomStates.get(room)
    if (state === undefined) return
    this.heldBytes -= ROOM_STATE_BYTES + state.history.bytes
    for (const stream of state.streams?.values() ?? []) this.heldBytes -= stream.bytes
    this.roomStates.delete(room)
  }

  /** Ended streams whose event history no longer holds go (their text with them). */
  private dropEndedStreams (state: RoomState): void {
    if (state.streams === undefined) return
    const oldest = state.history.oldestSeq ?? state.seq + 1
    for (const [id, stream] of state.streams) {
      if (stream.state === 'streaming' || stream.seq >= oldest) continue
      this.heldBytes -= stream.bytes
      state.streams.delete(id)
    }
    if (state.streams.size === 0) state.streams = undefined
  }

  private remember (key: string, position: RoomPosition, now: number): void {
    this.idempotency.delete(key)
    this.idempotency.set(key, { position, at: now })
    for (const [oldest, entry] of this.idempotency) {
      if (this.idempotency.size <= MAX_IDEMPOTENCY_KEYS && now - entry.at <= this.idempotencyWindowMs) break
      this.idempotency.delete(oldest)
    }
  }

  private sweep (): void {
    const now = Date.now()
    for (const [name, state] of this.roomStates) {
      const keptMs = state.hosted === true ? state.history.maxAgeMs : Math.min(state.history.maxAgeMs, IDLE_ROOM_MS)
      if (this.isIdle(state) && state.lastEventAt < now - keptMs) this.forget(name)
      else {
        this.heldBytes -= state.history.expire(now)
        this.dropEndedStreams(state)
      }
    }
    for (const [key, entry] of this.idempotency) {
      if (now - entry.at <= this.idempotencyWindowMs) break
      this.idempotency.delete(key)
    }
  }
}

function openCount (state: RoomState): number {
  let open = 0
  for (const stream of state.streams?.values() ?? []) if (stream.state === 'streaming') open++
  return open
}

function storedStream (id: string, stream: MemoryStream): StoredStream {
  const info = { id, state: stream.state, text: stream.text, ...(stream.reason === undefined ? {} : { reason: stream.reason }) }
  return { seq: stream.seq, frame: withStream(stream.frame, info), info, updatedAt: stream.updatedAt }
}

export function memoryBroker (options: MemoryBrokerOptions = {}): Broker {
  return new MemoryBroker(options)
}

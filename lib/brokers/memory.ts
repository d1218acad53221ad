// The default broker: one process, everything in memory. A restart starts every room in a new epoch.
import { randomUUID } from 'node:crypto'
import { preciseNow } from '../metrics.js'
import { roomEventFrame } from '../protocol.js'
import type { Broker, BrokerDelivery, BrokerSettings, HistorySlice, PublishRequest, RoomPosition } from './broker.js'
import { EventHistory } from './history.js'

interface RoomState {
  seq: number
  epoch: string
  lastEventAt: number
  subscribed: boolean
  /** userId → that user's connection ids in the room */
  presence: Map<string, Set<string>>
  history: EventHistory
}

export interface MemoryBrokerOptions {
  /** Per-room history for resume; defaults to the plugin's `history` option. */
  history?: { maxEvents: number; maxAgeMs: number }
}

class MemoryBroker implements Broker {
  readonly name = 'memory'
  private delivery: BrokerDelivery | undefined
  private readonly roomStates = new Map<string, RoomState>()
  private historyLimits: { maxEvents: number; maxAgeMs: number }
  private sweepTimer: NodeJS.Timeout | undefined

  constructor(private readonly options: MemoryBrokerOptions) {
    this.historyLimits = options.history ?? { maxEvents: 0, maxAgeMs: 0 }
  }

  async start(delivery: BrokerDelivery, settings: BrokerSettings): Promise<void> {
    this.delivery = delivery
    this.historyLimits = this.options.history ?? settings.history
    // One timer for all rooms. Memory stays bounded: maxEvents per room, and a room with no members frees
    // everything (its seq too, so its next event starts a new epoch) once its last event is maxAgeMs old.
    this.sweepTimer = setInterval(() => this.sweep(), Math.max(10, Math.min(this.historyLimits.maxAgeMs, 60_000)))
    this.sweepTimer.unref()
  }

  async publish(request: PublishRequest): Promise<RoomPosition> {
    const publishedAt = preciseNow()
    const state = this.state(request.room)
    const seq = ++state.seq
    const time = Date.now()
    state.lastEventAt = time
    const frame = roomEventFrame(request.type, request.room, seq, request.payloadJson, request.traceId, time)
    state.history.append(seq, time, frame)
    this.delivery?.roomEvent(request.room, request.type, seq, frame, request.except, publishedAt)
    return { seq, epoch: state.epoch }
  }

  async position(room: string): Promise<RoomPosition> {
    const state = this.state(room)
    return { seq: state.seq, epoch: state.epoch }
  }

  async peekPosition(room: string): Promise<RoomPosition | undefined> {
    const state = this.roomStates.get(room)
    return state === undefined ? undefined : { seq: state.seq, epoch: state.epoch }
  }

  async history(room: string, after: number): Promise<HistorySlice> {
    const state = this.state(room)
    const { events, complete } = state.history.after(after, state.seq, Date.now())
    return { position: { seq: state.seq, epoch: state.epoch }, events, complete }
  }

  async subscribe(room: string): Promise<void> {
    this.state(room).subscribed = true
  }

  async unsubscribe(room: string): Promise<void> {
    const state = this.roomStates.get(room)
    if (state !== undefined) state.subscribed = false
  }

  async presenceJoin(room: string, userId: string, connectionId: string): Promise<boolean> {
    const presence = this.state(room).presence
    let connections = presence.get(userId)
    const first = connections === undefined
    if (connections === undefined) {
      connections = new Set()
      presence.set(userId, connections)
    }
    connections.add(connectionId)
    return first
  }

  async presenceLeave(room: string, userId: string, connectionId: string): Promise<boolean> {
    const presence = this.roomStates.get(room)?.presence
    const connections = presence?.get(userId)
    if (presence === undefined || connections === undefined || !connections.delete(connectionId)) return false
    if (connections.size > 0) return false
    presence.delete(userId)
    return true
  }

  async presence(room: string): Promise<string[]> {
    const presence = this.roomStates.get(room)?.presence
    return presence === undefined ? [] : [...presence.keys()]
  }

  async rooms(): Promise<string[]> {
    const names: string[] = []
    for (const [name, state] of this.roomStates) if (state.presence.size > 0) names.push(name)
    return names
  }

  async sendToUser(userId: string, frame: string): Promise<void> {
    this.delivery?.userMessage(userId, frame)
  }

  async disconnectUser(userId: string, code: number, reason: string): Promise<void> {
    this.delivery?.userDisconnect(userId, code, reason)
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer)
    this.roomStates.clear()
    this.delivery = undefined
  }

  private state(room: string): RoomState {
    let state = this.roomStates.get(room)
    if (state === undefined) {
      state = {
        seq: 0,
        epoch: randomUUID(),
        lastEventAt: Date.now(),
        subscribed: false,
        presence: new Map(),
        history: new EventHistory(this.historyLimits.maxEvents, this.historyLimits.maxAgeMs),
      }
      this.roomStates.set(room, state)
    }
    return state
  }

  private sweep(): void {
    const now = Date.now()
    const cutoff = now - this.historyLimits.maxAgeMs
    for (const [name, state] of this.roomStates) {
      if (!state.subscribed && state.presence.size === 0 && state.lastEventAt < cutoff) this.roomStates.delete(name)
      else state.history.expire(now)
    }
  }
}

export function memoryBroker(options: MemoryBrokerOptions = {}): Broker {
  return new MemoryBroker(options)
}

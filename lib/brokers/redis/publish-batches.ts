// The Redis broker's room events wait for the end of the event-loop turn, then go to Redis as one
// PUBLISH_BATCH call per group (one Redis: every room of the turn; a cluster: each room, whose keys share a
// slot): one request, one Lua call, one counter update and one fan-out message per room instead of one of
// each per event. Redis's CPU per publish was 2–3× a bare PUBLISH, most of it the call itself, not the work.
// Order per room is call order: a group is written on the command connection when the turn ends (or when it
// is full), and a publish that cannot wait in it (a streamed event) flushes every group first.
import { randomUUID } from 'node:crypto'
import type { RoomPosition } from '../broker.js'
import { PUBLISH_BATCH } from './scripts.js'

/** One event as the script takes it. */
export interface BatchedEvent {
  room: string
  head: string
  tail: string
  type: string
  except: string
  publishedAt: number
  /** Its idempotency key's full Redis key, in the room's slot. */
  idempotencyKey: string | undefined
}

/** What the batches need of the broker: its keys, limits and the script runner. */
export interface BatchSettings {
  roomKeys(room: string): [meta: string, history: string]
  channel(room: string): string
  /** Which rooms may share one script call ('' for all on one Redis; the room itself on a cluster). */
  group(room: string): string
  history(room: string): { maxEvents: number; maxAgeMs: number }
  readonly publishCommand: string
  readonly roomTtlMs: number
  readonly idleRoomTtlMs: number
  idempotencyWindowMs(): number
  run(script: string, keys: string[], args: Array<string | number>): Promise<unknown>
}

/**
 * A group is sent once it holds this many events or frame characters (UTF-16 units, one to three bytes
 * each: counting bytes would scan every frame again), so one call cannot block Redis for long.
 */
export const MAX_BATCH_EVENTS = 256
export const MAX_BATCH_CHARS = 1 << 20

interface Waiting {
  event: BatchedEvent
  resolve(position: RoomPosition): void
  reject(err: unknown): void
}

interface Group {
  /** room → its events, in call order. */
  rooms: Map<string, Waiting[]>
  events: number
  chars: number
}

export class PublishBatches {
  private readonly groups = new Map<string, Group>()
  private scheduled = false
  private readonly flushAll = () => {
    this.scheduled = false
    this.flush()
  }

  constructor (private readonly settings: BatchSettings) {}

  publish (event: BatchedEvent): Promise<RoomPosition> {
    const key = this.settings.group(event.room)
    let group = this.groups.get(key)
    if (group === undefined) {
      group = { rooms: new Map(), events: 0, chars: 0 }
      this.groups.set(key, group)
    }
    let events = group.rooms.get(event.room)
    if (events === undefined) {
      events = []
      group.rooms.set(event.room, events)
    }
    const published = new Promise<RoomPosition>((resolve, reject) => { events.push({ event, resolve, reject }) })
    group.events++
    group.chars += event.head.length + event.tail.length
    if (group.events >= MAX_BATCH_EVENTS || group.chars >= MAX_BATCH_CHARS) {
      this.groups.delete(key)
      this.send(group)
    } else if (!this.scheduled) {
      this.scheduled = true
      setImmediate(this.flushAll)
    }
    return published
  }

  /** Sends every waiting group now (before a publish that does not wait, and at close). */
  flush (): void {
    if (this.groups.size === 0) return
    const groups = [...this.groups.values()]
    this.groups.clear()
    for (const group of groups) this.send(group)
  }

  private send (group: Group): void {
    const { settings } = this
    const keys: string[] = []
    const args: Array<string | number> = [settings.roomTtlMs, settings.idleRoomTtlMs, settings.idempotencyWindowMs(), settings.publishCommand, group.rooms.size]
    for (const room of group.rooms.keys()) keys.push(...settings.roomKeys(room))
    for (const [room, events] of group.rooms) {
      const limits = settings.history(room)
      const hostEvent = events.some(({ event }) => event.type !== 'presence')
      args.push(randomUUID(), limits.maxEvents, limits.maxAgeMs, settings.channel(room), events.length, hostEvent ? '1' : '0')
      for (const { event } of events) {
        let keyIndex = 0
        if (event.idempotencyKey !== undefined) keyIndex = keys.push(event.idempotencyKey)
        args.push(`${event.except}\n${event.type}\n${event.publishedAt}\n`, event.head, event.tail, keyIndex)
      }
    }
    settings.run(PUBLISH_BATCH, keys, args).then((reply) => {
      const positions = reply as Array<number | string>
      let index = 0
      for (const events of group.rooms.values()) {
        for (const waiting of events) {
          waiting.resolve({ seq: Number(positions[index]), epoch: String(positions[index + 1]) })
          index += 2
        }
      }
    }, (err: unknown) => {
      for (const events of group.rooms.values()) for (const waiting of events) waiting.reject(err)
    })
  }
}

// A room's recent events for resume, in memory: a ring buffer bounded by count and by age, which also
// keeps the bytes it holds so the broker can hold all rooms to one budget.
import type { HistoryEvent } from './broker.js'

interface StoredEvent extends HistoryEvent {
  time: number
  bytes: number
}

export class EventHistory {
  // Grows with the events it holds, up to maxEvents: an empty room costs next to nothing.
  private readonly ring: Array<StoredEvent | undefined> = []
  private start = 0
  private size = 0
  /** UTF-8 bytes of the frames held. */
  bytes = 0

  constructor (private readonly maxEvents: number, readonly maxAgeMs: number) {}

  get length (): number {
    return this.size
  }

  /** The seq of the oldest event held; undefined when none is. */
  get oldestSeq (): number | undefined {
    return this.size === 0 ? undefined : this.ring[this.start]!.seq
  }

  /** Appends an event; returns the change in bytes held (a full ring drops its oldest event). */
  append (seq: number, time: number, frame: string): number {
    if (this.maxEvents === 0) return 0
    const bytes = Buffer.byteLength(frame)
    const event = { seq, time, frame, bytes }
    let delta = bytes
    if (this.size < this.maxEvents) {
      this.ring[(this.start + this.size) % this.maxEvents] = event
      this.size++
    } else {
      // Full: the oldest slot takes the new event.
      delta -= this.ring[this.start]!.bytes
      this.ring[this.start] = event
      this.start = (this.start + 1) % this.maxEvents
    }
    this.bytes += delta
    return delta
  }

  /** Drops the oldest event; returns the bytes freed. */
  dropOldest (): number {
    if (this.size === 0) return 0
    const freed = this.ring[this.start]!.bytes
    this.ring[this.start] = undefined
    this.start = (this.start + 1) % this.maxEvents
    this.size--
    this.bytes -= freed
    return freed
  }

  /** Drops events older than maxAgeMs; returns the bytes freed. */
  expire (now: number): number {
    const cutoff = now - this.maxAgeMs
    let freed = 0
    while (this.size > 0 && this.ring[this.start]!.time < cutoff) freed += this.dropOldest()
    return freed
  }

  /**
   * Events with seq > after, oldest first, and whether they are all of them: false when the event right
   * after `after` is no longer held (`lastSeq` is the room's current seq).
   */
  after (after: number, lastSeq: number): { events: HistoryEvent[]; complete: boolean } {
    if (after >= lastSeq) return { events: [], complete: true }
    const oldest = this.size === 0 ? lastSeq + 1 : this.ring[this.start]!.seq
    const events: HistoryEvent[] = []
    for (let i = 0; i < this.size; i++) {
      const event = this.ring[(this.start + i) % this.maxEvents]!
      if (event.seq > after) events.push({ seq: event.seq, frame: event.frame })
    }
    return { events, complete: oldest <= after + 1 }
  }
}

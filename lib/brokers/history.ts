// A room's recent events for resume, in memory: a ring buffer bounded by count and by age.
import type { HistoryEvent } from './broker.js'

interface StoredEvent extends HistoryEvent {
  time: number
}

export class EventHistory {
  // Grows with the events it holds, up to maxEvents: an empty room costs next to nothing.
  private readonly ring: Array<StoredEvent | undefined> = []
  private start = 0
  private size = 0

  constructor(private readonly maxEvents: number, private readonly maxAgeMs: number) {}

  get length(): number {
    return this.size
  }

  append(seq: number, time: number, frame: string): void {
    if (this.maxEvents === 0) return
    const event = { seq, time, frame }
    if (this.size < this.maxEvents) {
      this.ring[(this.start + this.size) % this.maxEvents] = event
      this.size++
    } else {
      // Full: the oldest slot takes the new event.
      this.ring[this.start] = event
      this.start = (this.start + 1) % this.maxEvents
    }
  }

  /** Drops events older than maxAgeMs. */
  expire(now: number): void {
    const cutoff = now - this.maxAgeMs
    while (this.size > 0 && this.ring[this.start]!.time < cutoff) {
      this.ring[this.start] = undefined
      this.start = (this.start + 1) % this.maxEvents
      this.size--
    }
  }

  /**
   * Events with seq > after, oldest first, and whether they are all of them: false when the event right
   * after `after` is no longer held (`lastSeq` is the room's current seq).
   */
  after(after: number, lastSeq: number, now: number): { events: HistoryEvent[]; complete: boolean } {
    this.expire(now)
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

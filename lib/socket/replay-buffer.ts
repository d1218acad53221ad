// Per socket and room: which live events may go out while a resume replays history, and which the socket
// already has. A replay read from history (on Redis) can run ahead of this process's live stream, and live
// events can arrive while the replay is being read: each seq must reach the socket once, in order.
import type { HistoryEvent, RoomPosition, StreamPoint } from '../brokers/broker.js'
import type { FramedEvent } from '../out/framing.js'
import type { StreamAppend } from '../protocol/stream-frames.js'

/**
 * What waits during a replay: a live room event, a live append to a streamed event (no seq of its own), or
 * the room's reset (its numbering restarted while the join or resume was reading it: it must follow what
 * that read gave, or the client would apply it before the answer and then go back to the old numbering).
 */
type Held =
  | { seq: number; event: FramedEvent; stream: StreamPoint | undefined; append?: undefined; reset?: undefined }
  | { append: StreamAppend; event: FramedEvent; reset?: undefined }
  | { reset: RoomPosition; frame: string; append?: undefined }

export interface ReplayWriter {
  /** A replayed event from history. */
  history(event: HistoryEvent): void
  /** After the history, before the live events held meanwhile: the resumed streams' tails. */
  between(): void
  live(event: FramedEvent, seq: number, stream: StreamPoint | undefined): void
  append(append: StreamAppend, event: FramedEvent): void
  /** A reset held meanwhile that the replay's own position does not already cover. */
  reset(position: RoomPosition, frame: string): void
}

/** What to do with a live event: send it, drop it (already sent), or nothing (held for the replay). */
export type LiveVerdict = 'send' | 'drop' | 'held' | 'overflow'

export class ReplayBuffer {
  /**
   * room → the highest seq this socket is known to have (from a join ack or a replay). Live events at or
   * below it are not sent again. Removed once a live event passes it, and on leave and reset.
   */
  private fences: Map<string, number> | undefined
  /** Rooms being resumed: their live events wait here until the replay from history has been sent. */
  private replays: Map<string, { events: Held[]; bytes: number }> | undefined

  constructor (private readonly maxHeldBytes: number) {}

  live (room: string, seq: number, event: FramedEvent, stream?: StreamPoint): LiveVerdict {
    if (this.fences !== undefined) {
      const fence = this.fences.get(room)
      if (fence !== undefined) {
        if (seq <= fence) return 'drop'
        this.clearFence(room)
      }
    }
    // Nothing is allocated unless the room is being replayed: this runs per recipient of every event.
    const replay = this.replays?.get(room)
    return replay === undefined ? 'send' : this.hold(replay, { seq, event, stream })
  }

  /** A live append: held while its room is replayed (it may extend a stream the replay is about to give). */
  liveAppend (append: StreamAppend, event: FramedEvent): LiveVerdict {
    const replay = this.replays?.get(append.room)
    return replay === undefined ? 'send' : this.hold(replay, { append, event })
  }

  /** A reset of the room: held while it is replayed (true), to follow the replay in order; false: send it now. */
  holdReset (room: string, position: RoomPosition, frame: string): boolean {
    const replay = this.replays?.get(room)
    if (replay === undefined) return false
    // A reset is a few dozen bytes and a room has at most one per broker reconnect: never past the budget.
    replay.events.push({ reset: position, frame })
    return true
  }

  private hold (replay: { events: Held[]; bytes: number }, held: Held & { event: FramedEvent }): LiveVerdict {
    replay.events.push(held)
    replay.bytes += held.event.framed.length
    return replay.bytes > this.maxHeldBytes ? 'overflow' : 'held'
  }

  /** This socket has every event of `room` up to `seq`: live events at or below it are dropped. */
  setFence (room: string, seq: number): void {
    ;(this.fences ??= new Map()).set(room, seq)
  }

  /** The room's fence while it stands (no live event past it was sent since it was set). */
  fenceOf (room: string): number | undefined {
    return this.fences?.get(room)
  }

  /** The room was left, or its sequence restarted (reset): no fence applies any more. */
  clearFence (room: string): void {
    this.fences?.delete(room)
    if (this.fences?.size === 0) this.fences = undefined
  }

  /** From now until finish, live events of `room` are held back. */
  start (room: string): void {
    ;(this.replays ??= new Map()).set(room, { events: [], bytes: 0 })
  }

  /**
   * The replayed events after `after`, then the live ones held back meanwhile, each seq
   * once and in order, with any reset held meanwhile in its place (unless the replay's position already is
   * in its epoch, at or past its seq); the room goes live behind a fence at the last one. Returns how many
   * replayed events were written.
   */
  finish (room: string, history: readonly HistoryEvent[], after: RoomPosition, writer: ReplayWriter): number {
    const held = this.replays?.get(room)
    this.cancel(room)
    let last = after.seq
    let replayed = 0
    for (const event of history) {
      if (event.seq <= last) continue
      writer.history(event)
      last = event.seq
      replayed++
    }
    writer.between()
    let current = after.epoch
    for (const entry of held?.events ?? []) {
      if (entry.reset !== undefined) {
        if (entry.reset.epoch === current && entry.reset.seq <= last) continue
        writer.reset(entry.reset, entry.frame)
        current = entry.reset.epoch
        last = entry.reset.seq
        continue
      }
      if (entry.append !== undefined) {
        writer.append(entry.append, entry.event)
        continue
      }
      if (entry.seq <= last) continue
      writer.live(entry.event, entry.seq, entry.stream)
      last = entry.seq
    }
    this.setFence(room, last)
    return replayed
  }

  cancel (room: string): void {
    this.replays?.delete(room)
    if (this.replays?.size === 0) this.replays = undefined
  }
}

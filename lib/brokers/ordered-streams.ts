// Each subscribed room's fan-out stream, delivered to this process in seq order: duplicates dropped, a gap
// (a message lost while a connection was down) filled from history first, an epoch change announced as a
// reset, and a stream that went back (its Redis lost events this process delivered) given a new epoch.
// Used by the Redis and Postgres brokers, whose pub/sub (and LISTEN/NOTIFY) gives no delivery guarantee
// across reconnects or failovers.
import type { BrokerDelivery, HistorySlice, RoomPosition } from './broker.js'

export interface LiveEvent {
  seq: number
  epoch: string
  type: string
  frame: string
  except: string
  publishedAt: number
}

interface Stream {
  epoch: string
  /** The last seq delivered to this process's sockets. */
  lastSeq: number
  /** The frame delivered at lastSeq (a reference, not a copy): after a reconnect, history must still hold it. */
  lastFrame: string | undefined
  /** An epoch this process renewed: its late messages are dropped. */
  retired: string | undefined
  /** While catching up from history, live messages wait here. */
  held: LiveEvent[] | undefined
  /** The catch-up running now: one at a time per room, so a broken stream is renewed (and reset) once. */
  catchingUp: Promise<void> | undefined
  /** Another catch-up was asked for while one ran: it runs once more after it. */
  again: boolean
}

export class OrderedStreams {
  private readonly streams = new Map<string, Stream>()

  constructor (
    private readonly readHistory: (room: string, after: number) => Promise<HistorySlice>,
    private readonly delivery: () => BrokerDelivery | undefined,
    private readonly isClosed: () => boolean,
    /** Gives the room a new epoch if it is still in `epoch` (the first process to find it broken wins). */
    private readonly renewEpoch: (room: string, epoch: string) => Promise<RoomPosition>
  ) {}

  /** Subscribing: messages are held until start() gives the position the room's members start from. */
  open (room: string): void {
    this.streams.set(room, { epoch: '', lastSeq: 0, lastFrame: undefined, retired: undefined, held: [], catchingUp: undefined, again: false })
  }

  start (room: string, position: { seq: number; epoch: string }): void {
    const stream = this.streams.get(room)
    if (stream === undefined) return
    stream.epoch = position.epoch
    stream.lastSeq = position.seq
    stream.lastFrame = undefined
    this.release(room, stream)
  }

  close (room: string): void {
    this.streams.delete(room)
  }

  receive (room: string, event: LiveEvent): void {
    const stream = this.streams.get(room)
    if (stream === undefined) return
    if (stream.held !== undefined) stream.held.push(event)
    else this.deliver(room, stream, event)
  }

  /**
   * The room's position as the backend reports it (a periodic check): an event this process never heard
   * of (a lost notification) is read from history now instead of waiting for the next one to show the gap.
   */
  check (room: string, position: RoomPosition): void {
    const stream = this.streams.get(room)
    if (stream === undefined || stream.held !== undefined || stream.catchingUp !== undefined) return
    if (position.epoch === stream.retired) return
    if (position.epoch !== stream.epoch || position.seq > stream.lastSeq) void this.catchUp(room, stream)
  }

  /** Rooms with a stream, for the periodic check. */
  rooms (): IterableIterator<string> {
    return this.streams.keys()
  }

  /** After a reconnect: hold every room's live messages until catchUpAll() has run. */
  holdAll (): void {
    for (const stream of this.streams.values()) stream.held ??= []
  }

  async catchUpAll (): Promise<void> {
    await Promise.all([...this.streams].map(([room, stream]) => this.catchUp(room, stream)))
  }

  private deliver (room: string, stream: Stream, event: LiveEvent): void {
    if (event.epoch === stream.retired) return
    if (event.epoch !== stream.epoch) {
      // The room's sequence restarted (Redis lost its keys): local members are told, then carry on.
      stream.epoch = event.epoch
      stream.lastSeq = event.seq - 1
      stream.lastFrame = undefined
      this.delivery()?.roomReset(room, { seq: event.seq - 1, epoch: event.epoch })
    }
    if (event.seq <= stream.lastSeq) return
    if (event.seq > stream.lastSeq + 1) {
      stream.held = [event]
      void this.catchUp(room, stream)
      return
    }
    stream.lastSeq = event.seq
    stream.lastFrame = event.frame
    this.delivery()?.roomEvent(room, event.type, event.seq, event.frame, event.except === '' ? undefined : event.except, event.publishedAt)
  }

  private release (room: string, stream: Stream): void {
    const held = stream.held ?? []
    stream.held = undefined
    for (const event of held) {
      // deliver() may have started another catch-up (a gap): the rest then waits for it.
      const waiting = stream.held as Stream['held']
      if (waiting !== undefined) waiting.push(event)
      else this.deliver(room, stream, event)
    }
  }

  private catchUp (room: string, stream: Stream): Promise<void> {
    stream.held ??= []
    if (stream.catchingUp !== undefined) {
      stream.again = true
      return stream.catchingUp
    }
    stream.catchingUp = (async () => {
      do {
        stream.again = false
        await this.catchUpOnce(room, stream)
      } while (stream.again && !this.isClosed() && this.streams.get(room) === stream)
    })().finally(() => { stream.catchingUp = undefined })
    return stream.catchingUp
  }

  /**
   * Sends local members what they missed since lastSeq, from history, or a reset when it is gone. Live
   * messages wait meanwhile. Retried until the backend answers, so a catch-up never stalls a room for good.
   */
  private async catchUpOnce (room: string, stream: Stream): Promise<void> {
    stream.held ??= []
    const current = () => !this.isClosed() && this.streams.get(room) === stream
    for (let attempt = 0; current(); attempt++) {
      try {
        // From one before lastSeq: the event delivered last must still be there, the same.
        let slice = await this.readHistory(room, Math.max(0, stream.lastSeq - 1))
        if (!current()) return
        if (slice.position.epoch === stream.epoch && wentBack(stream, slice)) {
          // Its Redis lost events delivered here (a failover before they reached the replica): the seqs
          // would be handed out again for other events. A new epoch resets every reader of the room.
          const renewed = await this.renewEpoch(room, stream.epoch)
          if (!current()) return
          stream.retired = stream.epoch
          stream.epoch = renewed.epoch
          stream.lastSeq = renewed.seq
          stream.lastFrame = undefined
          this.delivery()?.roomReset(room, renewed)
          this.release(room, stream)
          return
        }
        if (slice.position.epoch !== stream.epoch) {
          // A new epoch: members are reset to its start and get all of it, when history still holds it all.
          slice = await this.readHistory(room, 0)
          if (!current()) return
          const from = slice.complete ? 0 : slice.position.seq
          stream.epoch = slice.position.epoch
          stream.lastSeq = from
          stream.lastFrame = undefined
          this.delivery()?.roomReset(room, { seq: from, epoch: slice.position.epoch })
        } else if (!slice.complete) {
          stream.lastSeq = slice.position.seq
          stream.lastFrame = undefined
          this.delivery()?.roomReset(room, slice.position)
        }
        for (const event of slice.events) {
          if (event.seq <= stream.lastSeq) continue
          stream.lastSeq = event.seq
          stream.lastFrame = event.frame
          this.delivery()?.roomEvent(room, eventType(event.frame), event.seq, event.frame, undefined)
        }
        this.release(room, stream)
        return
      } catch {
        await backoff(attempt)
      }
    }
  }
}

/**
 * Whether the room's stream is behind what this process delivered: its seq is lower, or the event at
 * lastSeq is another one (history holds it unless it was trimmed; a trimmed one cannot be checked).
 */
function wentBack (stream: Stream, slice: HistorySlice): boolean {
  if (slice.position.seq < stream.lastSeq) return true
  const atLast = slice.events[0]
  return stream.lastFrame !== undefined && atLast !== undefined && atLast.seq === stream.lastSeq && atLast.frame !== stream.lastFrame
}

function eventType (frame: string): string {
  return (JSON.parse(frame) as { type: string }).type
}

/** 50 ms doubling to 1 s between retries while the backend is away. */
export function backoff (attempt: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.min(1000, 50 * 2 ** attempt)).unref())
}

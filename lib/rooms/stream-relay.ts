// Streamed events on the receiving side: each open stream this process has members for, fanned out to
// them in order and without a gap. Appends travel like room events (pub/sub, NOTIFY), which may lose or
// delay one; each is stored before it is published, so a gap is filled from the store before anything
// after it goes out, and a stream that goes quiet is looked up (its end may have been the message lost;
// its writer may have died, and then the stream is aborted here, once, for every process).
import type { StreamBroker, StoredStream } from '../brokers/broker.js'
import { backoff } from '../brokers/ordered-streams.js'
import { appendFrame, type StreamAppend, type StreamInfo } from '../protocol/stream-frames.js'

interface Followed {
  room: string
  seq: number
  /** UTF-16 code units of the text fanned out here. */
  length: number
  heardAt: number
  /** While a gap is being filled from the store: the appends that arrived meanwhile, in order. */
  waiting: StreamAppend[] | undefined
  lookingUp: boolean
}

export interface RelaySettings {
  streamIdleMs: number
  log: { warn(obj: object, msg: string): void }
}

// A stream quiet this long is looked up in the store (at most every CHECK_MS).
const QUIET_MS = 2000
const CHECK_MS = 1000

export class StreamRelay {
  private readonly followed = new Map<string, Followed>()
  private timer: NodeJS.Timeout | undefined
  private closed = false

  constructor (
    private readonly broker: () => Partial<StreamBroker>,
    /** Fans an append out to the room's local members (the registry); false when the room has none here. */
    private readonly fanOut: (append: StreamAppend, frame: string) => boolean,
    private readonly settings: RelaySettings
  ) {}

  /** A streamed event reached local members (live, replayed, or a joiner's snapshot) with `info.text` so far. */
  seen (room: string, seq: number, info: StreamInfo): void {
    if (info.state !== 'streaming') return
    const known = this.followed.get(info.id)
    if (known !== undefined) return
    this.followed.set(info.id, { room, seq, length: info.text.length, heardAt: Date.now(), waiting: undefined, lookingUp: false })
    this.timer ??= setInterval(() => this.check(), CHECK_MS).unref()
  }

  /** An append, as its writer published it (on this process or another). */
  append (append: StreamAppend, frame: string): void {
    const entry = this.followed.get(append.id)
    if (entry === undefined) return
    entry.heardAt = Date.now()
    if (entry.waiting !== undefined) {
      entry.waiting.push(append)
      return
    }
    if (append.offset > entry.length) {
      // Something between was lost on its way here: the store has it.
      entry.waiting = [append]
      void this.fill(append.id, entry)
      return
    }
    this.deliver(append.id, entry, append, frame)
  }

  close (): void {
    this.closed = true
    clearInterval(this.timer)
    this.followed.clear()
  }

  /** Fans out what the append adds past what went out here (all of it, but after a gap was filled). */
  private deliver (id: string, entry: Followed, append: StreamAppend, frame: string | undefined): void {
    const skip = entry.length - append.offset
    if (skip >= append.text.length && append.state === undefined) return
    let delivered = append
    if (skip > 0 || frame === undefined) {
      delivered = { ...append, offset: entry.length, text: append.text.slice(Math.max(0, skip)) }
      frame = appendFrame(delivered)
    }
    entry.length = delivered.offset + delivered.text.length
    if (append.state !== undefined) this.followed.delete(id)
    if (!this.fanOut(delivered, frame) && append.state === undefined) this.followed.delete(id)
  }

  /** Reads the stream and fans out what is missing; then what waited. Retried while the store is away. */
  private async fill (id: string, entry: Followed): Promise<void> {
    for (let attempt = 0; !this.closed && this.followed.get(id) === entry; attempt++) {
      try {
        const stored = await this.read(entry.room, id)
        if (this.followed.get(id) === entry) this.catchUp(id, entry, stored)
        return
      } catch (err) {
        this.settings.log.warn({ err, stream: id }, 'fastify-rooms: reading a stream failed, retrying')
        await backoff(attempt)
      }
    }
  }

  /** What the store has past what went out here, then the appends that waited meanwhile. */
  private catchUp (id: string, entry: Followed, stored: StoredStream | undefined): void {
    const waiting = entry.waiting ?? []
    entry.waiting = undefined
    this.deliverStored(id, entry, stored)
    for (const append of waiting) {
      if (this.followed.get(id) !== entry) return
      this.deliver(id, entry, append, undefined)
    }
  }

  private async read (room: string, id: string): Promise<StoredStream | undefined> {
    const read = this.broker().stream
    return read === undefined ? undefined : await read.call(this.broker(), room, id)
  }

  /** The stored stream's text past what went out here, with its end; a stream the store lost ends aborted. */
  private deliverStored (id: string, entry: Followed, stored: StoredStream | undefined): void {
    if (stored === undefined) {
      this.deliver(id, entry, { room: entry.room, seq: entry.seq, id, offset: entry.length, text: '', state: 'aborted', reason: 'lost' }, undefined)
      return
    }
    const { text, state, reason } = stored.info
    const end = state === 'streaming' ? {} : reason === undefined ? { state } : { state, reason }
    this.deliver(id, entry, { room: entry.room, seq: entry.seq, id, offset: 0, text, ...end }, undefined)
  }

  /**
   * Quiet streams are looked up: their end (or an append) may have been lost on the way, and a stream whose
   * writer stopped without ending it (a process killed) is aborted once its idle time has passed twice.
   */
  private check (): void {
    if (this.followed.size === 0) {
      clearInterval(this.timer)
      this.timer = undefined
      return
    }
    const now = Date.now()
    for (const [id, entry] of this.followed) {
      if (entry.lookingUp || entry.waiting !== undefined || now - entry.heardAt < Math.min(QUIET_MS, this.settings.streamIdleMs)) continue
      entry.heardAt = now
      entry.lookingUp = true
      void this.lookUp(id, entry).finally(() => { entry.lookingUp = false })
    }
  }

  private async lookUp (id: string, entry: Followed): Promise<void> {
    try {
      const stored = await this.read(entry.room, id)
      if (this.followed.get(id) !== entry) return
      if (stored !== undefined && stored.info.state === 'streaming' && Date.now() - stored.updatedAt > 2 * this.settings.streamIdleMs) {
        // Its writer is gone: ended here for everyone (a writer that is alive changed the text meanwhile, and wins).
        const abort: StreamAppend = { room: entry.room, seq: entry.seq, id, offset: stored.info.text.length, text: '', state: 'aborted', reason: 'idle' }
        // Published like any append (the writer's would have been): it reaches this process that way too.
        await this.broker().appendStream?.(abort, appendFrame(abort))
        return
      }
      // What was read is sent, unless a gap is being filled meanwhile (that read is newer).
      if (this.followed.get(id) === entry && entry.waiting === undefined) this.catchUp(id, entry, stored)
    } catch (err) {
      this.settings.log.warn({ err, stream: id }, 'fastify-rooms: looking up a quiet stream failed')
    }
  }
}

// Streamed events on the writing side (`fastify.rooms.stream`): one room event whose text grows. `append`
// only adds to the stream's pending text; once per turn every stream with some sends it to its broker as
// one append (stored, then fanned out), one at a time per stream, so a stream's text is stored and
// delivered in order with no seq, history entry or round trip per token. Budgets: bytes per stream,
// open streams per process (and, in the broker, per room); a stream that gets no text for streamIdleMs
// is aborted.
import { randomUUID } from 'node:crypto'
import { InvalidArgumentError, isBrokerError, StreamEndedError, StreamLimitError, StreamsUnsupportedError, StreamTooLargeError } from '../config/errors.js'
import type { Broker, PublishRequest } from '../brokers/broker.js'
import { backoff } from '../brokers/ordered-streams.js'
import { appendFrame, type StreamAppend, type StreamState } from '../protocol/stream-frames.js'
import type { RoomStream } from '../types.js'

export interface StreamLimits {
  maxStreamBytes: number
  maxOpenStreamsPerRoom: number
  maxOpenStreams: number
  streamIdleMs: number
}

// One append carries at most this much text (UTF-16 code units): what a burst leaves as one frame.
const MAX_APPEND_UNITS = 16_384

class WrittenStream implements RoomStream {
  state: StreamState = 'streaming'
  /** The size of the text accepted, as it travels (JSON-escaped UTF-8). */
  private bytes = 0
  /** Text stored by the broker (code units): where the next append starts. */
  private stored = 0
  private pending = ''
  private sending = false
  /** end() or abort() was called (or the stream went idle): sent with the last of the text. */
  private final: Pick<StreamAppend, 'state' | 'reason'> | undefined
  private readonly settled: Promise<void>
  private settle!: (err?: Error) => void
  lastTextAt = Date.now()

  constructor (
    readonly id: string,
    readonly room: string,
    readonly seq: number,
    private readonly writer: StreamWriter
  ) {
    this.settled = new Promise((resolve, reject) => {
      this.settle = (err) => (err === undefined ? resolve() : reject(err))
    })
    // end() and abort() return it; a stream nobody awaits must not reject unhandled.
    this.settled.catch(() => {})
  }

  append (text: string): void {
    if (typeof text !== 'string') throw new TypeError('fastify-rooms: append(text) takes a string')
    if (this.state !== 'streaming' || this.final !== undefined) throw new StreamEndedError(this.final === undefined ? this.state : 'ending')
    if (text === '') return
    const bytes = Buffer.byteLength(JSON.stringify(text)) - 2
    if (this.bytes + bytes > this.writer.limits.maxStreamBytes) throw new StreamTooLargeError(this.bytes + bytes, this.writer.limits.maxStreamBytes)
    this.bytes += bytes
    this.pending += text
    this.lastTextAt = Date.now()
    this.writer.schedule(this)
  }

  end (): Promise<void> {
    return this.finish({ state: 'done' })
  }

  abort (reason?: string): Promise<void> {
    if (reason !== undefined && (typeof reason !== 'string' || reason.length > 128)) throw new TypeError('fastify-rooms: abort(reason) takes a string of at most 128 characters')
    return this.finish(reason === undefined ? { state: 'aborted' } : { state: 'aborted', reason })
  }

  private finish (final: Pick<StreamAppend, 'state' | 'reason'>): Promise<void> {
    if (this.final === undefined && this.state === 'streaming') {
      this.final = final
      this.writer.schedule(this)
    }
    return this.settled
  }

  /** Sends the pending text (and the end, once asked for), one append at a time; called once per turn at most. */
  async send (): Promise<void> {
    if (this.sending || this.state !== 'streaming') return
    this.sending = true
    try {
      while (this.state === 'streaming' && (this.pending !== '' || this.final !== undefined)) {
        let text = this.pending.slice(0, this.writer.maxAppendUnits)
        // Never split a surrogate pair between two appends: each frame's text is well-formed.
        if (text.length < this.pending.length && /[\ud800-\udbff]$/.test(text)) text = text.slice(0, -1)
        const last = text.length === this.pending.length ? this.final : undefined
        const append: StreamAppend = { room: this.room, seq: this.seq, id: this.id, offset: this.stored, text, ...last }
        const outcome = await this.writer.store(append, this)
        if (outcome !== 'ok') return this.ended('aborted', new StreamEndedError(outcome === 'gone' ? 'lost (its broker no longer has it)' : 'aborted (ended elsewhere)'))
        this.stored += text.length
        this.pending = this.pending.slice(text.length)
        if (last !== undefined) return this.ended(last.state!)
      }
    } catch (err) {
      this.ended('aborted', err as Error)
    } finally {
      this.sending = false
    }
  }

  /** The idle sweep: no text for streamIdleMs. */
  idle (): void {
    if (this.final !== undefined || this.state !== 'streaming') return
    void this.abort('idle')
  }

  private ended (state: StreamState, err?: Error): void {
    this.state = state
    this.pending = ''
    this.writer.closed(this)
    this.settle(err)
  }
}

export class StreamWriter {
  private readonly open = new Set<WrittenStream>()
  private readonly dirty = new Set<WrittenStream>()
  private scheduled = false
  private idleTimer: NodeJS.Timeout | undefined
  private readonly sendAll = () => {
    this.scheduled = false
    const streams = [...this.dirty]
    this.dirty.clear()
    for (const stream of streams) void stream.send()
  }

  readonly maxAppendUnits: number

  constructor (
    private readonly broker: Broker,
    readonly limits: StreamLimits,
    private readonly log: { warn(obj: object, msg: string): void }
  ) {
    this.maxAppendUnits = Math.min(MAX_APPEND_UNITS, broker.maxAppendUnits ?? MAX_APPEND_UNITS)
  }

  async start (request: PublishRequest): Promise<RoomStream> {
    if (this.broker.appendStream === undefined || this.broker.stream === undefined) throw new StreamsUnsupportedError(this.broker.name)
    if (this.open.size >= this.limits.maxOpenStreams) throw new StreamLimitError('this process', this.limits.maxOpenStreams)
    const id = randomUUID()
    const position = await this.broker.publish({ ...request, stream: { id, maxOpen: this.limits.maxOpenStreamsPerRoom, idleMs: this.limits.streamIdleMs } })
    for (const stream of this.open) if (stream.room === request.room && stream.seq === position.seq) return stream
    if (request.idempotencyKey !== undefined && (await this.broker.stream!(request.room, id)) === undefined) {
      // The key had started a stream already, which is not open on this process (ended, or another's).
      throw new InvalidArgumentError('idempotencyKey', `started the stream at seq ${position.seq} already, which is not open on this process`)
    }
    const stream = new WrittenStream(id, request.room, position.seq, this)
    this.open.add(stream)
    this.idleTimer ??= setInterval(() => {
      const cutoff = Date.now() - this.limits.streamIdleMs
      for (const open of this.open) if (open.lastTextAt < cutoff) open.idle()
    }, Math.max(10, Math.min(1000, this.limits.streamIdleMs / 4))).unref()
    return stream
  }

  schedule (stream: WrittenStream): void {
    this.dirty.add(stream)
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(this.sendAll)
  }

  /** Stores one append; a broker that is away is retried until the stream would have gone idle. */
  async store (append: StreamAppend, stream: WrittenStream): Promise<'ok' | 'conflict' | 'gone'> {
    const frame = appendFrame(append)
    const since = Date.now()
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.broker.appendStream!(append, frame)
      } catch (err) {
        if (!isBrokerError(err) || Date.now() - since > this.limits.streamIdleMs) throw err
        this.log.warn({ err, stream: stream.id }, 'fastify-rooms: storing a stream\'s text failed, retrying')
        await backoff(attempt)
      }
    }
  }

  closed (stream: WrittenStream): void {
    this.open.delete(stream)
    // Text appended meanwhile (a later turn) was dropped with the stream.
    this.dirty.delete(stream)
    if (this.open.size === 0) {
      clearInterval(this.idleTimer)
      this.idleTimer = undefined
    }
  }

  /** Shutdown: every open stream is aborted (`reason: 'shutdown'`), waited for at most `timeoutMs`. */
  async close (timeoutMs: number): Promise<void> {
    const ending = [...this.open].map((stream) => stream.abort('shutdown').catch(() => {}))
    let timer: NodeJS.Timeout | undefined
    await Promise.race([Promise.all(ending), new Promise<void>((resolve) => { timer = setTimeout(resolve, timeoutMs) })])
    clearTimeout(timer)
    clearInterval(this.idleTimer)
    this.idleTimer = undefined
  }
}

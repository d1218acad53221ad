// One socket's I/O: sending with backpressure (bytes), closing, heartbeat liveness, and the listeners that
// hand its messages and its close to the dispatcher. Its parts each live in a module of their own: the
// input budget (frame-rate.ts), the serial inbox (serial-inbox.ts) and the replay buffer (replay-buffer.ts);
// its token's exp is kept on the plugin's one expiry timer (token-expiry.ts). Who the socket is and which rooms it is in belongs to
// membership.ts (the `member`), the only writer of both.
// Past 300 lines: sending has three paths that must keep one order (direct frames, the per-turn queue of
// room events, and writes on a busy ws sender), all counted against the one send budget, and a streamed
// event's appends take the same paths (held in a replay, trimmed or merged per socket by its cursors).
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { WebSocket } from 'ws'
import type { HistoryEvent, RoomPosition, StoredStream, StreamPoint } from '../brokers/broker.js'
import { FrameRate, type FrameRateLimits } from './frame-rate.js'
import { deflatedFrame, writeFramedBatch, writeMode, type FramedEvent } from '../out/framing.js'
import type { Stats } from '../observability/metrics.js'
import { boundedDirectFrame, checkCloseCode, CloseCode, ErrorCode, errorFrame, FrameError, truncateCloseReason, type Frame } from '../protocol/protocol.js'
import { appendFrame, type StreamAppend } from '../protocol/stream-frames.js'
import { ReplayBuffer } from './replay-buffer.js'
import { StreamCursors } from './stream-cursors.js'
import { SerialInbox } from './serial-inbox.js'
import type { Expiring, TokenExpiries } from './token-expiry.js'
import type { RoomsConnection, RoomsUser } from '../types.js'
import type { WriteCoalescer } from '../out/write-coalescer.js'

/** Who a socket is and which rooms it is in, as the socket reads it (membership.ts's Member is the writer). */
export interface SocketMember {
  readonly user: RoomsUser
  readonly rooms: ReadonlySet<string>
}

export interface ConnectionLimits extends FrameRateLimits {
  maxBufferedBytes: number
  /** Room events of at least `threshold` bytes go compressed to sockets that negotiated permessage-deflate. */
  compression: { threshold: number } | false
  closeTimeoutMs: number
  /** Bytes of frames that may wait behind a running one (besides a bound on their count). */
  maxInboxBytes: number
}

export interface ConnectionEvents {
  /** A raw message arrived (not yet parsed). */
  message(connection: Connection, data: Buffer, isBinary: boolean): void
  /** Runs one parsed frame; frames of one connection run one at a time, in arrival order. */
  process(connection: Connection, frame: Frame): Promise<void>
  /** `byServer`: the server chose the code (the peer's own codes are not trusted as metric labels). */
  close(connection: Connection, code: number, reason: string, byServer: boolean): void
}

/** A transport that carries room positions itself (the SSE stream's event ids): told by the connection, never parsed from frames. */
interface PositionTracker {
  track(room: string, seq: number, epoch: string): void
  /** The next frame written is the room's event `seq`. */
  advance(room: string, seq: number): void
  untrack(room: string): void
  /** Where the socket stands in an open stream of the room (undefined: the stream ended). */
  streamAt(room: string, id: string, length: number | undefined): void
}

/** A resumed stream the socket holds unfinished: the rest of its text from `offset`. */
export interface StreamTail {
  stored: StoredStream
  offset: number
}

export class Connection implements RoomsConnection, Expiring {
  readonly id = randomUUID()
  readonly openedAt = Date.now()
  /** Cleared by each heartbeat tick, set again by the peer's pong. */
  alive = true
  private readonly rate: FrameRate
  private readonly replay: ReplayBuffer
  private readonly inbox: SerialInbox<Frame>

  private closeCode: number | undefined
  private closeReason = ''
  private killTimer: NodeJS.Timeout | undefined
  /** How room events are written: pre-framed (plain or compressed once per publish), or through ws. */
  private readonly mode: 'plain' | 'deflate' | 'ws'
  private readonly deflateFrom: number
  private childLog: FastifyBaseLogger | undefined
  /** Room events of this turn, written together at its end (write-coalescer.ts); counted as buffered. */
  private queued: FramedEvent[] | undefined
  private queuedBytes = 0
  private readonly flushAtBytes: number
  private readonly tracker: PositionTracker | undefined
  /** Where this socket stands in the open streams it follows; made on its first. */
  private cursors: StreamCursors | undefined

  constructor (
    readonly socket: WebSocket,
    /** Who this socket is and which rooms it is in; written by membership.ts only. */
    readonly member: SocketMember,
    private readonly limits: ConnectionLimits,
    events: ConnectionEvents,
    private readonly stats: Stats,
    /**
     * The plugin instance's logger and the upgrade request's id: a socket keeps these two, not the request's
     * child logger (an object per socket held for the socket's life), and binds its own child on first use.
     */
    private readonly baseLog: FastifyBaseLogger,
    private readonly reqId: string,
    private readonly coalescer: WriteCoalescer,
    /** Every socket's token exp, on one timer. */
    private readonly expiries: TokenExpiries,
    /** The input budget; a transport whose connections come and go within one session passes the session's. */
    rate?: FrameRate
  ) {
    this.mode = writeMode(socket)
    this.deflateFrom = this.mode === 'deflate' && limits.compression !== false ? limits.compression.threshold : Infinity
    this.flushAtBytes = Math.min(65_536, Math.floor(limits.maxBufferedBytes / 4))
    this.rate = rate ?? new FrameRate(limits)
    this.tracker = typeof (socket as unknown as Partial<PositionTracker>).track === 'function' ? socket as unknown as PositionTracker : undefined
    this.replay = new ReplayBuffer(limits.maxBufferedBytes)
    this.inbox = new SerialInbox<Frame>(
      limits.maxInboxBytes,
      (frame) => events.process(this, frame),
      () => this.isOpen,
      (err) => this.log.error({ err }, 'fastify-rooms: frame processing failed')
    )
    // Listeners are attached synchronously, before any await, so no early frame is missed; each one is
    // guarded because a throw inside a ws listener would take the whole process down.
    socket.on('message', (data, isBinary) => {
      try {
        events.message(this, data as Buffer, isBinary)
      } catch (err) {
        this.log.error({ err }, 'fastify-rooms: message listener failed')
        this.close(CloseCode.internalError, 'internal error')
      }
    })
    socket.on('pong', () => {
      this.alive = true
    })
    // The Connection owns its socket's errors (a peer's protocol error: ws has already sent the close).
    // @fastify/websocket's own listener closes over the upgrade's request and reply and so keeps them
    // alive as long as the socket (about 1 KB each); it is the only one there when the handler runs
    // (test/connection-memory.test.ts pins both).
    socket.removeAllListeners('error')
    socket.on('error', (err) => {
      this.log.warn({ err }, 'fastify-rooms: socket error')
      this.socket.terminate()
    })
    socket.once('close', (code, reason) => {
      this.expiries.clear(this)
      clearTimeout(this.killTimer)
      this.inbox.clear()
      try {
        events.close(this, this.closeCode ?? code, this.closeCode === undefined ? reason.toString() : this.closeReason, this.closeCode !== undefined)
      } catch (err) {
        this.log.error({ err }, 'fastify-rooms: close listener failed')
      }
    })
  }

  get user (): RoomsUser {
    return this.member.user
  }

  get rooms (): ReadonlySet<string> {
    return this.member.rooms
  }

  /** A logger bound to this connection's id, made on first use: most sockets log only their open and close. */
  get log (): FastifyBaseLogger {
    return (this.childLog ??= this.baseLog.child({ reqId: this.reqId, connectionId: this.id }))
  }

  get isOpen (): boolean {
    return this.closeCode === undefined && this.socket.readyState === WebSocket.OPEN
  }

  get bufferedAmount (): number {
    return this.socket.bufferedAmount + this.queuedBytes
  }

  send (type: string, payload: unknown): boolean {
    const sent = this.sendFrame(boundedDirectFrame(type, payload, this.limits.maxBufferedBytes))
    if (sent) this.stats.messageOut(type)
    return sent
  }

  sendError (error: FrameError, id?: Frame['id']): void {
    this.stats.error(error.code)
    this.sendFrame(errorFrame(error, id))
  }

  /**
   * Writes an already serialized frame. A socket whose unsent bytes would pass `maxBufferedBytes` is closed
   * 1013 instead: memory stays bounded and the client knows to reconnect and resume.
   */
  sendFrame (frame: string | Buffer): boolean {
    if (!this.isOpen) return false
    // Room events queued this turn go first: the socket sees every frame in the order it was sent.
    this.flush()
    if (!this.isOpen) return false
    // Counted in bytes: a string's length undercounts non-ASCII text up to 3×. ws would make the Buffer anyway.
    const data = typeof frame === 'string' ? Buffer.from(frame) : frame
    if (this.socket.bufferedAmount + data.length > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
    this.socket.send(data, { binary: false })
    return true
  }

  /**
   * A room event framed once per publish: per socket, a state check, a buffer check and a queue push; the
   * turn's events leave together (flush). The budget counts what is queued as well as what ws holds.
   */
  private sendEvent (event: FramedEvent): boolean {
    if (!this.isOpen) return false
    if (this.socket.bufferedAmount + this.queuedBytes + event.framed.length > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
    if (this.queued === undefined) {
      this.queued = [event]
      this.coalescer.mark(this)
    } else {
      this.queued.push(event)
    }
    this.queuedBytes += event.framed.length
    // A burst this large gains nothing by waiting: written now, it moves to the kernel, and a healthy
    // socket's budget stays free (what is queued here counts toward maxBufferedBytes).
    if (this.queuedBytes >= this.flushAtBytes) this.flush()
    return true
  }

  /**
   * A room event on a transport that carries positions (the SSE stream): written at once, right after
   * the transport is told its seq, so the position it stamps is always that of the frame it writes.
   */
  private sendTracked (room: string, seq: number, event: FramedEvent): boolean {
    if (!this.isOpen) return false
    if (this.socket.bufferedAmount + event.payload.length > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
    this.tracker!.advance(room, seq)
    this.socket.send(event.payload, { binary: false })
    return true
  }

  /**
   * Writes the queued room events: pre-framed in one corked write, or each through ws (order kept either
   * way). Runs from setImmediate too, where a throw would be uncaught: anything unexpected cuts this socket.
   */
  flush (): void {
    const events = this.queued
    if (events === undefined) return
    this.queued = undefined
    this.queuedBytes = 0
    if (!this.isOpen) return
    try {
      if (this.mode !== 'ws' && writeFramedBatch(this.socket, events.map((event) => this.frameOf(event)))) return
      for (const event of events) this.socket.send(event.payload, { binary: false })
    } catch (err) {
      this.log.error({ err }, 'fastify-rooms: writing queued events failed, terminating')
      this.socket.terminate()
    }
  }

  /** The bytes of an event for this socket: compressed (made once per publish) when it negotiated it and it is large enough. */
  private frameOf (event: FramedEvent): Buffer {
    return event.payload.length >= this.deflateFrom ? deflatedFrame(event) ?? event.framed : event.framed
  }

  private closeSlowConsumer (): false {
    this.queued = undefined
    this.queuedBytes = 0
    this.stats.slowConsumerClose()
    this.close(CloseCode.tryAgainLater, 'slow consumer')
    return false
  }

  /** A live room event: sent now, dropped when the socket has it already, or held while the room is replayed. */
  deliver (room: string, seq: number, event: FramedEvent, stream?: StreamPoint): boolean {
    if (!this.isOpen) return false
    switch (this.replay.live(room, seq, event, stream)) {
      case 'send': return this.sendLive(room, seq, event, stream)
      case 'held': return true
      case 'overflow': return this.closeSlowConsumer()
      default: return false
    }
  }

  private sendLive (room: string, seq: number, event: FramedEvent, stream: StreamPoint | undefined): boolean {
    // Followed before it is written: on SSE the event's own id then names the stream (a resume from it continues it).
    if (stream?.open === true) this.followStream(room, seq, stream.id, stream.length)
    return this.tracker === undefined ? this.sendEvent(event) : this.sendTracked(room, seq, event)
  }

  private followStream (room: string, seq: number, id: string, length: number): void {
    (this.cursors ??= new StreamCursors()).open(id, room, seq, length)
    this.tracker?.streamAt(room, id, length)
  }

  /**
   * A live append to a streamed event: held while its room is replayed; otherwise sent (once, in order, no
   * gap: see StreamCursors) when this socket follows the stream, merged with the next ones while it is behind.
   */
  deliverAppend (append: StreamAppend, event: FramedEvent): boolean {
    // Held first: a resume or join under way may be about to give this socket the stream.
    if (!this.isOpen) return false
    switch (this.replay.liveAppend(append, event)) {
      case 'send': return this.sendAppend(append, event)
      case 'held': return true
      case 'overflow': return this.closeSlowConsumer()
      default: return false
    }
  }

  private sendAppend (append: StreamAppend, event: FramedEvent): boolean {
    const cursors = this.cursors
    if (cursors === undefined || !this.isOpen) return false
    const verdict = cursors.take(append, this.socket.bufferedAmount > this.flushAtBytes)
    switch (verdict.write) {
      case 'none': return false
      case 'held':
        if (this.bufferedAmount + cursors.heldBytes > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
        this.coalescer.later(this)
        return true
    }
    this.tracker?.streamAt(append.room, append.id, append.state === undefined ? append.offset + append.text.length : undefined)
    return verdict.write === 'shared' && this.tracker === undefined ? this.sendEvent(event) : this.sendFrame(verdict.write === 'own' ? verdict.frame : event.payload)
  }

  /** Sends what a socket that was behind held of its streams, once it has caught up; true while it still holds some. */
  releaseHeld (): boolean {
    const cursors = this.cursors
    if (cursors === undefined || !this.isOpen) return false
    if (this.socket.bufferedAmount > this.flushAtBytes) return true
    for (const held of cursors.release()) {
      this.tracker?.streamAt(held.room, held.id, held.ended ? undefined : held.length)
      this.sendFrame(held.frame)
    }
    return false
  }

  /** The socket is at `seq` of the room's `epoch` now (joined, resumed, reset). */
  notePosition (room: string, seq: number, epoch: string): void {
    this.tracker?.track(room, seq, epoch)
  }

  noteLeft (room: string): void {
    this.tracker?.untrack(room)
    this.cursors?.leave(room)
  }

  /** Live events of the room are held back from now until `finishReplay` (or `cancelReplay`). */
  holdLive (room: string): void {
    this.replay.start(room)
  }

  /** A replay that will not happen (its room could not be joined): held events are dropped. */
  cancelReplay (room: string): void {
    this.replay.cancel(room)
  }

  /** The socket was given the room up to `seq` (a join ack): a live event at or below it is not sent again. */
  fenceAt (room: string, seq: number): void {
    this.replay.setFence(room, seq)
  }

  /** The last seq of the room this socket was given, while no live event has gone out since. */
  fenceOf (room: string): number | undefined {
    return this.replay.fenceOf(room)
  }

  /** The room was left or reset: its numbering starts over for this socket. */
  clearFence (room: string): void {
    this.replay.clearFence(room)
  }

  /** The credential's exp in seconds (undefined: none); the socket is closed 1008 when it passes. */
  expireAt (exp: number | undefined): void {
    // A closing socket keeps no entry: its close has cleared it already.
    this.expiries.set(this, this.isOpen ? exp : undefined)
  }

  get exp (): number | undefined {
    return this.expiries.exp(this)
  }

  /** Whether a frame of `bytes` would meet an empty budget (then it is refused unread). */
  budgetEmpty (now: number, bytes: number): boolean {
    return this.rate.empty(now, bytes)
  }

  /** Takes a frame of `bytes` from the budget; false when it is rate limited. */
  takeBudget (now: number, bytes: number): boolean {
    return this.rate.take(now, bytes)
  }

  /**
   * Sends a resumed room's replay, then the rest of the streams the client resumed (`tails`), then the live
   * events and appends held meanwhile (see ReplayBuffer.finish). `given`: open streams the socket was just
   * given whole (a joiner's snapshot, in its ack), followed from the length they had.
   */
  finishReplay (room: string, history: readonly HistoryEvent[], after: RoomPosition, tails: readonly StreamTail[] = [], given: readonly StoredStream[] = []): number {
    for (const stored of given) if (stored.info.state === 'streaming') this.followStream(room, stored.seq, stored.info.id, stored.info.text.length)
    return this.replay.finish(room, history, after, {
      history: (event) => {
        this.tracker?.advance(room, event.seq)
        if (event.stream?.open === true) this.followStream(room, event.seq, event.stream.id, event.stream.length)
        this.sendFrame(event.frame)
      },
      between: () => {
        for (const tail of tails) this.sendTail(room, tail)
      },
      live: (event, seq, stream) => this.sendLive(room, seq, event, stream),
      append: (append, event) => this.sendAppend(append, event),
      reset: (position, frame) => this.sendReset(room, position, frame),
    })
  }

  /**
   * The room's numbering restarted (the broker lost it): the socket is told, with the room's position. A
   * join or resume reading the room meanwhile sends it after its own answer and replay, where it belongs.
   */
  reset (room: string, position: RoomPosition, frame: string): void {
    if (this.replay.holdReset(room, position, frame)) return
    this.sendReset(room, position, frame)
  }

  private sendReset (room: string, position: RoomPosition, frame: string): void {
    this.clearFence(room)
    this.notePosition(room, position.seq, position.epoch)
    this.sendFrame(frame)
  }

  /** The rest of a resumed stream's text, from where the client stands, with its end if it ended. */
  private sendTail (room: string, { stored, offset }: StreamTail): void {
    const { id, state, text, reason } = stored.info
    const open = state === 'streaming'
    const frame = appendFrame({ room, seq: stored.seq, id, offset, text: text.slice(offset), ...(state === 'streaming' ? {} : { state, reason }) })
    if (open) this.followStream(room, stored.seq, id, text.length)
    else this.tracker?.streamAt(room, id, undefined)
    this.sendFrame(frame)
  }

  /** Runs `task` (onConnect) before this socket's first frame; frames arriving meanwhile wait, in order. */
  runFirst (task: () => Promise<void>): void {
    this.inbox.first(task)
  }

  /** Queues a parsed frame (of `bytes` on the wire) behind the ones still running; false when too many wait already. */
  enqueue (frame: Frame, bytes: number): boolean {
    return this.inbox.push(frame, bytes)
  }

  /** Starts the close handshake; a peer that does not answer within closeTimeoutMs is cut off. */
  close (code: number = CloseCode.normal, reason = ''): void {
    checkCloseCode(code)
    if (this.closeCode !== undefined || this.socket.readyState >= WebSocket.CLOSING) return
    // What was queued goes before the close frame (a slow consumer's queue is dropped: it closes for it).
    if (code !== CloseCode.tryAgainLater) this.flush()
    this.closeCode = code
    this.closeReason = truncateCloseReason(reason)
    this.expiries.clear(this)
    try {
      this.socket.close(code, truncateCloseReason(reason))
    } catch (err) {
      // ws refuses codes it may not send. Never leave a half-closed socket behind: cut it (its close
      // event still runs, so it leaves its rooms and presence).
      this.log.warn({ err, code }, 'fastify-rooms: close refused by ws, terminating')
      this.socket.terminate()
      return
    }
    this.killTimer = setTimeout(() => this.socket.terminate(), this.limits.closeTimeoutMs)
    this.killTimer.unref()
  }

  terminate (): void {
    this.socket.terminate()
  }

  /** One heartbeat tick; false when the peer missed the previous ping and was terminated. */
  heartbeat (): boolean {
    if (!this.alive) {
      this.log.info('fastify-rooms: no pong since the last heartbeat, terminating')
      this.socket.terminate()
      return false
    }
    this.alive = false
    if (this.socket.readyState === WebSocket.OPEN) this.socket.ping()
    return true
  }

  /** Counts a rate-limited frame; true when the abuse limit is crossed and the socket was closed 1008. */
  recordRateLimited (now: number): boolean {
    if (!this.rate.abused(now)) return false
    this.close(CloseCode.policyViolation, 'rate limit abuse')
    return true
  }

  /** A timer callback: a throw here would be uncaught, so anything unexpected cuts the socket instead. */
  /** The token's exp passed without an `auth`: told by TokenExpiries (a timer callback; never throws). */
  tokenExpired (): void {
    try {
      this.sendError(new FrameError(ErrorCode.tokenExpired, 'token expired; send auth with a fresh token before exp'))
      this.close(CloseCode.policyViolation, 'token expired')
    } catch (err) {
      this.log.warn({ err }, 'fastify-rooms: token expiry failed, terminating')
      this.socket.terminate()
    }
  }
}

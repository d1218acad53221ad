// One socket: sending with backpressure (bytes), the per-connection rate buckets (frames and bytes) and
// abuse window, liveness for the heartbeat, token expiry, the serial inbox that runs this socket's frames
// in the order they arrived (bounded in frames and bytes), and the per-room seq fence.
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { WebSocket } from 'ws'
import type { HistoryEvent } from './brokers/broker.js'
import { canWriteFramed, writeFramed, type FramedEvent } from './framing.js'
import { boundedDirectFrame, checkCloseCode, CloseCode, ErrorCode, errorFrame, FrameError, truncateCloseReason, type Frame } from './protocol.js'
import type { Stats } from './metrics.js'
import { TokenBucket } from './token-bucket.js'
import type { RoomsConnection, RoomsUser } from './types.js'

export interface ConnectionLimits {
  maxBufferedBytes: number
  rateLimit: { messagesPerSecond: number; burst: number; bytesPerSecond: number; burstBytes: number } | false
  abuseLimit: { rateLimited: number; windowMs: number } | false
  closeTimeoutMs: number
  /** Bytes of frames that may wait behind a running one (besides the frame count below). */
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

// setTimeout fires at once for delays above 2^31-1 ms; longer waits re-arm.
const MAX_TIMER_MS = 2_147_483_647
// Frames waiting behind a slow handler; the rate bucket normally keeps this far lower.
const MAX_INBOX = 256

export class Connection implements RoomsConnection {
  readonly id = randomUUID()
  readonly rooms = new Set<string>()
  /** Rooms whose join is being authorized; they count toward maxRoomsPerConnection. */
  readonly pendingJoins = new Set<string>()
  readonly openedAt = Date.now()
  /** Cleared by each heartbeat tick, set again by the peer's pong. */
  alive = true
  tokenExp: number | undefined

  private closeCode: number | undefined
  private readonly frameBucket: TokenBucket | undefined
  private readonly byteBucket: TokenBucket | undefined
  private rateLimitedInWindow = 0
  private abuseWindowStart = 0
  private expiryTimer: NodeJS.Timeout | undefined
  private killTimer: NodeJS.Timeout | undefined
  private readonly inbox: Array<{ frame: Frame; bytes: number }> = []
  private inboxBytes = 0
  private busy = false
  /**
   * room → the highest seq this socket is known to have (from a join ack or a replay). Live events at or
   * below it are not sent again: on Redis, a replay read from history can run ahead of this process's live
   * stream. Removed once a live event passes it, and on leave and reset.
   */
  private fences: Map<string, number> | undefined
  /** Rooms being resumed: their live events wait here until the replay from history has been sent. */
  private replays: Map<string, { events: Array<{ seq: number; event: FramedEvent }>; bytes: number }> | undefined
  /** No extension was negotiated: room events can be written pre-framed (see framing.ts). */
  private readonly framedWrites: boolean
  private childLog: FastifyBaseLogger | undefined

  constructor (
    readonly socket: WebSocket,
    public user: RoomsUser,
    tokenExp: number | undefined,
    private readonly limits: ConnectionLimits,
    private readonly events: ConnectionEvents,
    private readonly stats: Stats,
    /** The upgrade request's logger; lines about this socket add its connectionId. */
    readonly requestLog: FastifyBaseLogger
  ) {
    this.framedWrites = canWriteFramed(socket)
    if (limits.rateLimit !== false) {
      this.frameBucket = new TokenBucket(limits.rateLimit.messagesPerSecond, limits.rateLimit.burst)
      this.byteBucket = new TokenBucket(limits.rateLimit.bytesPerSecond, limits.rateLimit.burstBytes)
    }
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
    socket.once('close', (code, reason) => {
      clearTimeout(this.expiryTimer)
      clearTimeout(this.killTimer)
      this.inbox.length = 0
      this.inboxBytes = 0
      try {
        events.close(this, this.closeCode ?? code, this.closeCode === undefined ? reason.toString() : '', this.closeCode !== undefined)
      } catch (err) {
        this.log.error({ err }, 'fastify-rooms: close listener failed')
      }
    })
    this.setTokenExpiry(tokenExp)
  }

  /** A logger bound to this connection's id, made on first use: most sockets log only their open and close. */
  get log (): FastifyBaseLogger {
    return (this.childLog ??= this.requestLog.child({ connectionId: this.id }))
  }

  get isOpen (): boolean {
    return this.closeCode === undefined && this.socket.readyState === WebSocket.OPEN
  }

  get bufferedAmount (): number {
    return this.socket.bufferedAmount
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
    // Counted in bytes: a string's length undercounts non-ASCII text up to 3×. ws would make the Buffer anyway.
    const data = typeof frame === 'string' ? Buffer.from(frame) : frame
    if (this.socket.bufferedAmount + data.length > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
    this.socket.send(data, { binary: false })
    return true
  }

  /** A room event framed once per publish: per socket, a state check, a buffer check and one write. */
  private sendEvent (event: FramedEvent): boolean {
    if (!this.isOpen) return false
    if (this.socket.bufferedAmount + event.framed.length > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
    if (!this.framedWrites || !writeFramed(this.socket, event)) this.socket.send(event.payload, { binary: false })
    return true
  }

  private closeSlowConsumer (): false {
    this.stats.slowConsumerClose()
    this.close(CloseCode.tryAgainLater, 'slow consumer')
    return false
  }

  /** A live room event: sent now, or held while this room's history is being replayed. */
  deliver (room: string, seq: number, event: FramedEvent): boolean {
    if (this.fences !== undefined) {
      const fence = this.fences.get(room)
      if (fence !== undefined) {
        if (seq <= fence) return false
        this.clearFence(room)
      }
    }
    const replay = this.replays?.get(room)
    if (replay === undefined) return this.sendEvent(event)
    if (!this.isOpen) return false
    replay.events.push({ seq, event })
    replay.bytes += event.framed.length
    return replay.bytes > this.limits.maxBufferedBytes ? this.closeSlowConsumer() : true
  }

  /** This socket has every event of `room` up to `seq`: live events at or below it are dropped. */
  setFence (room: string, seq: number): void {
    ;(this.fences ??= new Map()).set(room, seq)
  }

  /** The room was left, or its sequence restarted (reset): no fence applies any more. */
  clearFence (room: string): void {
    this.fences?.delete(room)
    if (this.fences?.size === 0) this.fences = undefined
  }

  /** From now until finishReplay, live events of `room` are held back. */
  startReplay (room: string): void {
    ;(this.replays ??= new Map()).set(room, { events: [], bytes: 0 })
  }

  /**
   * Sends the replayed events, then the live ones held back meanwhile, each seq once and in order, and
   * goes live. Returns how many replayed events were sent.
   */
  finishReplay (room: string, history: readonly HistoryEvent[], after: number): number {
    const held = this.replays?.get(room)
    this.cancelReplay(room)
    let last = after
    let replayed = 0
    for (const event of history) {
      if (event.seq <= last) continue
      this.sendFrame(event.frame)
      last = event.seq
      replayed++
    }
    for (const { seq, event } of held?.events ?? []) {
      if (seq <= last) continue
      this.sendEvent(event)
      last = seq
    }
    this.setFence(room, last)
    return replayed
  }

  cancelReplay (room: string): void {
    this.replays?.delete(room)
    if (this.replays?.size === 0) this.replays = undefined
  }

  /** Starts the close handshake; a peer that does not answer within closeTimeoutMs is cut off. */
  close (code: number = CloseCode.normal, reason = ''): void {
    checkCloseCode(code)
    if (this.closeCode !== undefined || this.socket.readyState >= WebSocket.CLOSING) return
    this.closeCode = code
    clearTimeout(this.expiryTimer)
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

  /** Takes a frame and its bytes from the rate buckets; false when either is empty. */
  takeToken (now: number, bytes: number): boolean {
    if (this.byteBucket === undefined || this.frameBucket === undefined) return true
    return this.byteBucket.take(now, bytes) && this.frameBucket.take(now)
  }

  /** Counts a rate-limited frame; true when the abuse limit is crossed and the socket was closed 1008. */
  recordRateLimited (now: number): boolean {
    const abuse = this.limits.abuseLimit
    if (abuse === false) return false
    if (now - this.abuseWindowStart > abuse.windowMs) {
      this.abuseWindowStart = now
      this.rateLimitedInWindow = 0
    }
    if (++this.rateLimitedInWindow <= abuse.rateLimited) return false
    this.close(CloseCode.policyViolation, 'rate limit abuse')
    return true
  }

  /** Queues a parsed frame (of `bytes` on the wire) behind the ones still running; false when too many wait already. */
  enqueue (frame: Frame, bytes: number): boolean {
    if (this.busy) {
      if (this.inbox.length >= MAX_INBOX || this.inboxBytes + bytes > this.limits.maxInboxBytes) return false
      this.inbox.push({ frame, bytes })
      this.inboxBytes += bytes
      return true
    }
    void this.drain(frame)
    return true
  }

  private async drain (first: Frame): Promise<void> {
    this.busy = true
    let frame: Frame | undefined = first
    while (frame !== undefined) {
      // process() answers every failure itself; the catch only keeps a bug from stalling the inbox.
      await this.events.process(this, frame).catch((err: unknown) => this.log.error({ err }, 'fastify-rooms: frame processing failed'))
      const next = this.isOpen ? this.inbox.shift() : undefined
      if (next !== undefined) this.inboxBytes -= next.bytes
      frame = next?.frame
    }
    this.busy = false
  }

  /** Arms the close for the token's `exp` (seconds); an `auth` refresh calls it again with the new one. */
  setTokenExpiry (exp: number | undefined): void {
    clearTimeout(this.expiryTimer)
    this.tokenExp = exp
    if (exp === undefined) return
    const delay = exp * 1000 - Date.now()
    this.expiryTimer = setTimeout(() => this.onTokenExpiry(exp), Math.min(Math.max(delay, 0), MAX_TIMER_MS))
    this.expiryTimer.unref()
  }

  /** A timer callback: a throw here would be uncaught, so anything unexpected cuts the socket instead. */
  private onTokenExpiry (exp: number): void {
    try {
      if (Date.now() < exp * 1000) return this.setTokenExpiry(exp)
      this.sendError(new FrameError(ErrorCode.tokenExpired, 'token expired; send auth with a fresh token before exp'))
      this.close(CloseCode.policyViolation, 'token expired')
    } catch (err) {
      this.log.warn({ err }, 'fastify-rooms: token expiry failed, terminating')
      this.socket.terminate()
    }
  }
}

// One socket: sending with backpressure, the per-connection rate bucket and abuse window, liveness for the
// heartbeat, token expiry, and the serial inbox that runs this socket's frames in the order they arrived.
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { WebSocket } from 'ws'
import type { HistoryEvent } from './brokers/broker.js'
import { canWriteFramed, writeFramed, type FramedEvent } from './framing.js'
import { CloseCode, directFrame, ErrorCode, errorFrame, FrameError, type Frame } from './protocol.js'
import type { Stats } from './metrics.js'
import type { RoomsConnection, RoomsUser } from './types.js'

export interface ConnectionLimits {
  maxBufferedBytes: number
  rateLimit: { messagesPerSecond: number; burst: number } | false
  abuseLimit: { rateLimited: number; windowMs: number } | false
  closeTimeoutMs: number
}

export interface ConnectionEvents {
  /** A raw message arrived (not yet parsed). */
  message(connection: Connection, data: Buffer, isBinary: boolean): void
  /** Runs one parsed frame; frames of one connection run one at a time, in arrival order. */
  process(connection: Connection, frame: Frame): Promise<void>
  close(connection: Connection, code: number, reason: string): void
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
  private tokens: number
  private lastRefill = Date.now()
  private rateLimitedInWindow = 0
  private abuseWindowStart = 0
  private expiryTimer: NodeJS.Timeout | undefined
  private killTimer: NodeJS.Timeout | undefined
  private readonly inbox: Frame[] = []
  private busy = false
  /** Rooms being resumed: their live events wait here until the replay from history has been sent. */
  private replays: Map<string, { events: Array<{ seq: number; event: FramedEvent }>; bytes: number }> | undefined
  /** No extension was negotiated: room events can be written pre-framed (see framing.ts). */
  private readonly framedWrites: boolean
  private childLog: FastifyBaseLogger | undefined

  constructor(
    readonly socket: WebSocket,
    public user: RoomsUser,
    tokenExp: number | undefined,
    private readonly limits: ConnectionLimits,
    private readonly events: ConnectionEvents,
    private readonly stats: Stats,
    /** The upgrade request's logger; lines about this socket add its connectionId. */
    readonly requestLog: FastifyBaseLogger,
  ) {
    this.framedWrites = canWriteFramed(socket)
    this.tokens = limits.rateLimit === false ? 0 : limits.rateLimit.burst
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
      try {
        events.close(this, this.closeCode ?? code, this.closeCode === undefined ? reason.toString() : '')
      } catch (err) {
        this.log.error({ err }, 'fastify-rooms: close listener failed')
      }
    })
    this.setTokenExpiry(tokenExp)
  }

  /** A logger bound to this connection's id, made on first use: most sockets log only their open and close. */
  get log(): FastifyBaseLogger {
    return (this.childLog ??= this.requestLog.child({ connectionId: this.id }))
  }

  get isOpen(): boolean {
    return this.closeCode === undefined && this.socket.readyState === WebSocket.OPEN
  }

  get bufferedAmount(): number {
    return this.socket.bufferedAmount
  }

  send(type: string, payload: unknown): boolean {
    const sent = this.sendFrame(directFrame(type, payload))
    if (sent) this.stats.messageOut(type)
    return sent
  }

  sendError(error: FrameError, id?: Frame['id']): void {
    this.stats.error(error.code)
    this.sendFrame(errorFrame(error, id))
  }

  /**
   * Writes an already serialized frame. A socket whose unsent bytes would pass `maxBufferedBytes` is closed
   * 1013 instead: memory stays bounded and the client knows to reconnect and resume.
   */
  sendFrame(frame: string | Buffer): boolean {
    if (!this.isOpen) return false
    if (this.socket.bufferedAmount + frame.length > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
    this.socket.send(frame, { binary: false })
    return true
  }

  /** A room event framed once per publish: per socket, a state check, a buffer check and one write. */
  private sendEvent(event: FramedEvent): boolean {
    if (!this.isOpen) return false
    if (this.socket.bufferedAmount + event.framed.length > this.limits.maxBufferedBytes) return this.closeSlowConsumer()
    if (!this.framedWrites || !writeFramed(this.socket, event)) this.socket.send(event.payload, { binary: false })
    return true
  }

  private closeSlowConsumer(): false {
    this.stats.slowConsumerClose()
    this.close(CloseCode.tryAgainLater, 'slow consumer')
    return false
  }

  /** A live room event: sent now, or held while this room's history is being replayed. */
  deliver(room: string, seq: number, event: FramedEvent): boolean {
    const replay = this.replays?.get(room)
    if (replay === undefined) return this.sendEvent(event)
    if (!this.isOpen) return false
    replay.events.push({ seq, event })
    replay.bytes += event.framed.length
    return replay.bytes > this.limits.maxBufferedBytes ? this.closeSlowConsumer() : true
  }

  /** From now until finishReplay, live events of `room` are held back. */
  startReplay(room: string): void {
    ;(this.replays ??= new Map()).set(room, { events: [], bytes: 0 })
  }

  /**
   * Sends the replayed events, then the live ones held back meanwhile, each seq once and in order, and
   * goes live. Returns how many replayed events were sent.
   */
  finishReplay(room: string, history: readonly HistoryEvent[], after: number): number {
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
    return replayed
  }

  cancelReplay(room: string): void {
    this.replays?.delete(room)
    if (this.replays?.size === 0) this.replays = undefined
  }

  /** Starts the close handshake; a peer that does not answer within closeTimeoutMs is cut off. */
  close(code: number = CloseCode.normal, reason = ''): void {
    if (this.closeCode !== undefined || this.socket.readyState >= WebSocket.CLOSING) return
    this.closeCode = code
    clearTimeout(this.expiryTimer)
    this.socket.close(code, reason)
    this.killTimer = setTimeout(() => this.socket.terminate(), this.limits.closeTimeoutMs)
    this.killTimer.unref()
  }

  terminate(): void {
    this.socket.terminate()
  }

  /** One heartbeat tick; false when the peer missed the previous ping and was terminated. */
  heartbeat(): boolean {
    if (!this.alive) {
      this.log.info('fastify-rooms: no pong since the last heartbeat, terminating')
      this.socket.terminate()
      return false
    }
    this.alive = false
    if (this.socket.readyState === WebSocket.OPEN) this.socket.ping()
    return true
  }

  /** Takes one token from the bucket, refilled lazily (no timer). */
  takeToken(now: number): boolean {
    const rate = this.limits.rateLimit
    if (rate === false) return true
    this.tokens = Math.min(rate.burst, this.tokens + ((now - this.lastRefill) * rate.messagesPerSecond) / 1000)
    this.lastRefill = now
    if (this.tokens < 1) return false
    this.tokens -= 1
    return true
  }

  /** Counts a rate-limited frame; true when the abuse limit is crossed and the socket was closed 1008. */
  recordRateLimited(now: number): boolean {
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

  /** Queues a parsed frame behind the ones still running; false when too many wait already. */
  enqueue(frame: Frame): boolean {
    if (this.busy) {
      if (this.inbox.length >= MAX_INBOX) return false
      this.inbox.push(frame)
      return true
    }
    void this.drain(frame)
    return true
  }

  private async drain(first: Frame): Promise<void> {
    this.busy = true
    let frame: Frame | undefined = first
    while (frame !== undefined) {
      // process() answers every failure itself; the catch only keeps a bug from stalling the inbox.
      await this.events.process(this, frame).catch((err: unknown) => this.log.error({ err }, 'fastify-rooms: frame processing failed'))
      frame = this.isOpen ? this.inbox.shift() : undefined
    }
    this.busy = false
  }

  /** Arms the close for the token's `exp` (seconds); an `auth` refresh calls it again with the new one. */
  setTokenExpiry(exp: number | undefined): void {
    clearTimeout(this.expiryTimer)
    this.tokenExp = exp
    if (exp === undefined) return
    const delay = exp * 1000 - Date.now()
    this.expiryTimer = setTimeout(() => this.onTokenExpiry(exp), Math.min(Math.max(delay, 0), MAX_TIMER_MS))
    this.expiryTimer.unref()
  }

  private onTokenExpiry(exp: number): void {
    if (Date.now() < exp * 1000) return this.setTokenExpiry(exp)
    this.sendError(new FrameError(ErrorCode.tokenExpired, 'token expired; send auth with a fresh token before exp'))
    this.close(CloseCode.policyViolation, 'token expired')
  }
}

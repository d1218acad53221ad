// The fastify-rooms client: reconnecting, token-refreshing, resuming, and saying why a connection is
// refused. No runtime dependencies: it runs in browsers (native WebSocket) and in Node (pass WebSocket
// from ws); the plugin serves it bundled into one module. Its parts: errors.ts, refusals.ts (why an
// attempt was refused), sse-link.ts (the fallback's link), token.ts; types in types.ts.
// Past 300 lines on purpose: one connection's lifecycle (attempts, welcome, resume, heartbeat, token
// refresh, moving between transports) and its request queue share one state; split further, each piece
// would reach into the others' fields.
import { RoomsClientError } from './errors.js'
import { readRefusedResponse, refusal, refusalOf, unexpectedResponseStatus, type FetchLike, type HandshakeRefusal, type RefusedResponse } from './refusals.js'
import { SseLink } from './sse-link.js'
import { tokenExp } from './token.js'
import { isStreamFrame, StreamedEvent, type AppendFrame } from './streamed-event.js'
import type {
  AnySchema, ClientEvents, ClientOptions, ClientSchema, ClientState, ClientTransport, EventFrame, EventSourceConstructor, JoinAck,
  RefusalDetails, RequestOptions, RoomPosition, ServerFrame, WebSocketConstructor, WebSocketLike,
} from './types.js'

export { RoomsClientError } from './errors.js'
export { StreamedEvent, type StreamedState } from './streamed-event.js'

/** Whether an event is a streamed one (`fastify.rooms.stream`): its `text` grows, with `append` and `end` listeners. */
export function isStreamed<P> (event: EventFrame<P> | StreamedEvent<P>): event is StreamedEvent<P> {
  return event instanceof StreamedEvent
}
export type * from './types.js'

interface Pending {
  frame: { type: string; id: string; room?: string; payload?: unknown; traceparent?: string; tracestate?: string }
  resolve: (payload: any) => void
  reject: (error: RoomsClientError) => void
  timeoutMs: number
  /** The answer timeout: runs only while the frame is written and the socket open. */
  timer: ReturnType<typeof setTimeout> | undefined
  /** What is left of `queueTimeoutMs` (Infinity: none), and its timer while the frame waits unsent. */
  queueLeftMs: number
  queuedAt: number
  queueTimer: ReturnType<typeof setTimeout> | undefined
}

/** One connection attempt: what is known of it until `welcome` (or its failure). */
interface Attempt {
  ws: WebSocketLike
  token: string | undefined
  opened: boolean
  /** The close code when the socket opened (101) but closed before `welcome`. */
  closeCode: number | undefined
  closeReason: string
  timedOut: boolean
  errorMessage: string | undefined
  /** The refused handshake's answer, when the WebSocket implementation let the client read it (ws, inject). */
  refusal: HandshakeRefusal | undefined
  timer: ReturnType<typeof setTimeout>
}

/**
 * The client's life: `stopped` (not started, or ended), `offline` (between attempts: a token being
 * fetched, a reconnect scheduled), `attempting` (a socket or fallback link opening, up to `welcome`),
 * `open` (past `welcome`).
 */
type Phase = { name: 'stopped' } | { name: 'offline' } | { name: 'attempting'; attempt: Attempt } | { name: 'open' }

type Listener = (...args: any[]) => void

type MessageOf<S extends ClientSchema> = keyof S['messages'] & string
type EventOf<S extends ClientSchema> = keyof S['events'] & string

export class RoomsClient<S extends ClientSchema = AnySchema> {
  state: ClientState = 'closed'
  /** Round trip of the last ping, in ms. */
  latencyMs: number | undefined
  /** Reconnect attempts since the last stable connection. */
  attempt = 0
  connectionId: string | undefined

  /** The transport in use (or being tried). */
  transport: ClientTransport
  private readonly WebSocketImpl: WebSocketConstructor | undefined
  private ws: WebSocketLike | undefined
  /** Handshakes in a row that failed with a network error (two of them send 'auto' to the fallback). */
  private networkFailures = 0
  private probeTimer: ReturnType<typeof setInterval> | undefined
  /** Where the client is in its life, in one field (see Phase). */
  private phase: Phase = { name: 'stopped' }
  private openedAt = 0
  /** room → last seen position; null until the first join ack or event. */
  private readonly positions = new Map<string, RoomPosition | null>()
  /** In send order: re-sent with the same id after a reconnect (the server answers each id once). */
  private readonly pending = new Map<string, Pending>()
  private readonly listeners = new Map<string, Set<Listener>>()
  /** Streamed events still growing, by id: the same object continues through reconnects and resumes. */
  private readonly streams = new Map<string, StreamedEvent>()
  private readonly idPrefix = Math.random().toString(36).slice(2, 10)
  private nextId = 0
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined
  private pongTimer: ReturnType<typeof setTimeout> | undefined
  private refreshTimer: ReturnType<typeof setTimeout> | undefined
  private ping: { id: string; sentAt: number } | undefined
  private resumeId: string | undefined
  /**
   * Rooms a `joined` frame put ahead of this client's position while its resume was on its way (the server
   * re-joined them before reading the resume, as `onConnect` does): the resume replays into them, or, once
   * a live event has gone out past the gap, answers with a `reset`. Such an event is dropped meanwhile:
   * emitting it would show a gap that only the reset after it explains.
   */
  private readonly behindJoined = new Set<string>()
  /** A resume the server could not serve now (`unavailable`: its broker away or slow) is sent again. */
  private resumeRetryTimer: ReturnType<typeof setTimeout> | undefined
  private resumeRetries = 0
  private everOpened = false
  /** Consecutive 401/403 refusals: the second (with a freshly fetched token) stops the client. */
  private authRefusals = 0
  private retryAfterMs = 0
  /** The network came back during an attempt: if that attempt fails, the next one starts at once. */
  private wakePending = false
  private readonly wake = () => this.reconnectNow()
  private readonly onVisibility = () => {
    if ((globalThis as { document?: { visibilityState?: string } }).document?.visibilityState === 'visible') this.reconnectNow()
  }

  constructor (private readonly options: ClientOptions) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    const transport = options.transport ?? 'auto'
    if (WebSocketImpl === undefined && transport === 'websocket') throw new TypeError('fastify-rooms client: no global WebSocket; pass options.WebSocket (e.g. from ws)')
    this.WebSocketImpl = WebSocketImpl
    this.transport = transport === 'sse' || WebSocketImpl === undefined ? 'sse' : 'websocket'
    for (const room of options.rooms ?? []) this.positions.set(room, null)
    // Browsers: back at once when the network returns or a hidden tab is shown again.
    const page = globalThis as { addEventListener?: (type: string, fn: () => void) => void; document?: { addEventListener?: (type: string, fn: () => void) => void } }
    page.addEventListener?.('online', this.wake)
    page.document?.addEventListener?.('visibilitychange', this.onVisibility)
    if (options.autoConnect !== false) this.connect()
  }

  /** Open: a socket past `welcome`. */
  private get online (): boolean {
    return this.phase.name === 'open'
  }

  /** Stopped: never connected, `close()`d, or stopped by a refusal; nothing reconnects. */
  private get closedByUser (): boolean {
    return this.phase.name === 'stopped'
  }

  private get attemptInFlight (): Attempt | undefined {
    return this.phase.name === 'attempting' ? this.phase.attempt : undefined
  }

  /** Rooms this client is in (or will re-join on connect). */
  get rooms (): string[] {
    return [...this.positions.keys()]
  }

  /** The last seen seq and epoch of a room. */
  position (room: string): RoomPosition | undefined {
    return this.positions.get(room) ?? undefined
  }

  connect (): void {
    if (this.phase.name !== 'stopped') return
    this.phase = { name: 'offline' }
    this.attempt = 0
    this.setState('connecting')
    void this.openSocket()
  }

  /** Closes for good: no reconnect; waiting requests reject with `closed`. */
  close (): void {
    this.stop(new RoomsClientError('closed', 'client closed'))
  }

  /** Ends the client: no reconnect, every waiting request rejected with `reason`. */
  private stop (reason: RoomsClientError): void {
    const attempt = this.attemptInFlight
    this.phase = { name: 'stopped' }
    this.stopTimers()
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = undefined
    const page = globalThis as { removeEventListener?: (type: string, fn: () => void) => void; document?: { removeEventListener?: (type: string, fn: () => void) => void } }
    page.removeEventListener?.('online', this.wake)
    page.document?.removeEventListener?.('visibilitychange', this.onVisibility)
    const ws = this.ws
    this.ws = undefined
    if (attempt !== undefined) clearTimeout(attempt.timer)
    try {
      ws?.close(1000, 'client closed')
    } catch {
      // A socket that cannot be closed is being dropped anyway.
    }
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer)
      clearTimeout(pending.queueTimer)
      this.pending.delete(id)
      pending.reject(reason)
    }
    this.setState('closed')
  }

  /** While waiting to reconnect: try now (the network is back, the page is visible again). */
  private reconnectNow (): void {
    if (this.closedByUser || this.online) return
    // An attempt still under way (maybe doomed: it started offline) retries at once when it fails.
    if (this.ws !== undefined || this.reconnectTimer === undefined) {
      this.wakePending = true
      return
    }
    if (this.retryAfterMs > Date.now()) return
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = undefined
    void this.openSocket()
  }

  on<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): () => void
  on<K extends EventOf<S>>(type: K, listener: (frame: EventFrame<S['events'][K]>) => void): () => void
  on (type: string, listener: Listener): () => void {
    let set = this.listeners.get(type)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(type, set)
    }
    set.add(listener)
    return () => set.delete(listener)
  }

  /**
   * Joins a room (and re-joins it after every reconnect); resolves with the join ack. With `from` (a
   * position the server gave with data you loaded, `fastify.rooms.position`): every event after it, then
   * live ones — or a `reset` event when history no longer reaches back.
   */
  async join (room: string, options: { from?: RoomPosition } = {}): Promise<JoinAck> {
    if (options.from !== undefined) return this.joinFrom(room, options.from)
    if (!this.positions.has(room)) this.positions.set(room, null)
    try {
      return await this.requestFrame('join', undefined, { room })
    } catch (err) {
      if (err instanceof RoomsClientError && err.code !== 'timeout') this.positions.delete(room)
      throw err
    }
  }

  /** A join from a position is a one-room `resume`: the server replays what came after it, then the ack. */
  private async joinFrom (room: string, from: RoomPosition): Promise<JoinAck> {
    if (typeof from !== 'object' || from === null || !Number.isInteger(from.seq) || from.seq < 0 || typeof from.epoch !== 'string' || from.epoch === '') {
      throw new RoomsClientError('invalid_message', 'from must be { seq, epoch } as fastify.rooms.position gave it', undefined, room)
    }
    const tracked = this.positions.has(room)
    if (!tracked) this.positions.set(room, { seq: from.seq, epoch: from.epoch })
    let answer: { rooms?: Record<string, { result: string; seq?: number; epoch?: string; replayed?: number; code?: string; message?: string }> }
    try {
      const streams = this.streamsOf(room)
      answer = await this.requestFrame('resume', { rooms: { [room]: streams === undefined ? { seq: from.seq, epoch: from.epoch } : { seq: from.seq, epoch: from.epoch, streams } } }, {})
    } catch (err) {
      if (!tracked && err instanceof RoomsClientError && err.code !== 'timeout') this.positions.delete(room)
      throw err
    }
    const outcome = answer.rooms?.[room]
    if (outcome === undefined || outcome.result === 'error') {
      if (!tracked) this.positions.delete(room)
      throw new RoomsClientError(outcome?.code ?? 'internal_error', outcome?.message ?? 'no outcome for the room', undefined, room)
    }
    const ack: JoinAck = { room, seq: outcome.seq!, epoch: outcome.epoch!, from: outcome.result === 'replayed' ? 'replayed' : 'reset' }
    if (outcome.replayed !== undefined) ack.replayed = outcome.replayed
    return ack
  }

  async leave (room: string): Promise<void> {
    this.positions.delete(room)
    this.forgetStreams(room)
    await this.requestFrame('leave', undefined, { room })
  }

  /**
   * Sends a frame with an id and resolves with the `ack` payload (the handler's result); rejects with the
   * server's error code, or `timeout` (no answer within `timeoutMs` of being written to an open socket).
   * While offline the frame waits (up to maxQueue; for `queueTimeoutMs` if given, else until `close()`)
   * and is sent on reconnect, again with the same id after every drop: the server answers each id once.
   */
  request<K extends MessageOf<S>>(type: K, payload: S['messages'][K]['payload'], options: RequestOptions = {}): Promise<S['messages'][K]['result']> {
    return this.requestFrame(type, payload, options)
  }

  private requestFrame (type: string, payload: unknown, options: RequestOptions): Promise<any> {
    if (this.closedByUser) return Promise.reject(new RoomsClientError('closed', 'client is closed'))
    if (!this.online && this.pending.size >= (this.options.maxQueue ?? 100)) {
      return Promise.reject(new RoomsClientError('queue_full', 'too many requests waiting for the connection'))
    }
    const id = `${this.idPrefix}-${++this.nextId}`
    const frame: Pending['frame'] = { type, id }
    if (options.room !== undefined) frame.room = options.room
    if (payload !== undefined) frame.payload = payload
    if (options.traceparent !== undefined) frame.traceparent = options.traceparent
    if (options.tracestate !== undefined) frame.tracestate = options.tracestate
    return new Promise((resolve, reject) => {
      const pending: Pending = {
        frame,
        resolve,
        reject,
        timeoutMs: options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000,
        timer: undefined,
        queueLeftMs: options.queueTimeoutMs ?? Infinity,
        queuedAt: 0,
        queueTimer: undefined,
      }
      this.pending.set(id, pending)
      if (this.online) this.write(pending)
      else this.enqueue(pending)
    })
  }

  /** Writes a request to the open socket; its answer timeout starts now. */
  private write (pending: Pending): void {
    if (pending.queueTimer !== undefined) {
      clearTimeout(pending.queueTimer)
      pending.queueTimer = undefined
      pending.queueLeftMs -= Date.now() - pending.queuedAt
    }
    this.ws!.send(JSON.stringify(pending.frame))
    clearTimeout(pending.timer)
    pending.timer = setTimeout(() => {
      this.pending.delete(pending.frame.id)
      pending.reject(new RoomsClientError('timeout', `no answer to "${pending.frame.type}" within ${pending.timeoutMs} ms`))
    }, pending.timeoutMs)
  }

  /** Back in the offline queue: the answer timeout stops; a `queueTimeoutMs` keeps counting. */
  private enqueue (pending: Pending): void {
    clearTimeout(pending.timer)
    pending.timer = undefined
    if (pending.queueLeftMs === Infinity || pending.queueTimer !== undefined) return
    pending.queuedAt = Date.now()
    pending.queueTimer = setTimeout(() => {
      this.pending.delete(pending.frame.id)
      pending.reject(new RoomsClientError('queue_timeout', `"${pending.frame.type}" waited offline for its queueTimeoutMs`))
    }, Math.max(0, pending.queueLeftMs))
  }

  /** Fire and forget (no id, no answer); false when not connected. */
  send<K extends MessageOf<S>>(type: K, payload?: S['messages'][K]['payload'], options: { room?: string } = {}): boolean {
    return this.sendFrame(type, payload, options)
  }

  private sendFrame (type: string, payload: unknown, options: { room?: string } = {}): boolean {
    if (!this.online || this.ws === undefined) return false
    this.ws.send(JSON.stringify(options.room === undefined ? { type, payload } : { type, room: options.room, payload }))
    return true
  }

  private setState (state: ClientState): void {
    if (this.state === state) return
    this.state = state
    this.emit('state', state)
  }

  private emit (type: string, ...args: unknown[]): void {
    const set = this.listeners.get(type)
    if (set === undefined) return
    for (const listener of [...set]) {
      try {
        listener(...args)
      } catch (err) {
        // A listener's bug must not break the connection; report it (unless it came from an error listener).
        if (type !== 'error') this.emit('error', new RoomsClientError('listener', `a "${type}" listener threw: ${(err as Error)?.message}`, err))
      }
    }
  }

  private async openSocket (): Promise<void> {
    let token: string | undefined
    try {
      token = await this.options.getToken?.()
    } catch (err) {
      this.emit('error', new RoomsClientError('token', `getToken failed: ${(err as Error)?.message}`, err))
      return this.scheduleReconnect()
    }
    if (this.closedByUser) return
    const { url, protocols } = this.socketArgs(token)
    let ws: WebSocketLike
    try {
      ws = this.transport === 'sse'
        ? this.openFallback(token)
        : this.newWebSocket(url, protocols)
    } catch (err) {
      this.emit('error', new RoomsClientError('connection', `cannot open ${this.options.url}: ${(err as Error)?.message}`, err))
      return this.scheduleReconnect()
    }
    this.ws = ws
    const connectTimeoutMs = this.options.connectTimeoutMs ?? 10_000
    const attempt: Attempt = {
      ws,
      token,
      opened: false,
      closeCode: undefined,
      closeReason: '',
      timedOut: false,
      errorMessage: undefined,
      refusal: undefined,
      // A handshake that never completes (a black-holed network, a stalled proxy) is abandoned.
      timer: setTimeout(() => {
        attempt.timedOut = true
        this.abandon(ws)
        void this.onAttemptFailed(attempt)
      }, connectTimeoutMs),
    }
    this.phase = { name: 'attempting', attempt }
    ws.onopen = () => {
      attempt.opened = true
    }
    ws.onmessage = (event) => {
      if (ws !== this.ws) return
      let frame: ServerFrame
      try {
        frame = JSON.parse(String(event.data))
      } catch {
        return
      }
      this.onFrame(frame, token)
    }
    ws.onclose = (event) => {
      if (ws !== this.ws) return
      attempt.closeCode = event?.code
      attempt.closeReason = typeof event?.reason === 'string' ? event.reason : ''
      if (this.attemptInFlight === attempt) void this.onAttemptFailed(attempt)
      else this.onDisconnect()
    }
    // ws (Node) says why a handshake failed ("Unexpected server response: 401"); a browser says nothing.
    ws.onerror = (event) => {
      const error = event as { message?: unknown; error?: { message?: unknown }; refusal?: HandshakeRefusal }
      const message = error?.message ?? error?.error?.message
      if (typeof message === 'string') attempt.errorMessage = message
      if (error?.refusal !== undefined) attempt.refusal ??= error.refusal
    }
    // ws (Node) hands a refused handshake's response to an `unexpected-response` listener: its JSON body
    // says why (`token has no exp`), which the status alone does not.
    const emitter = ws as { on?: (event: string, listener: (request: unknown, response: RefusedResponse) => void) => unknown }
    if (typeof emitter.on === 'function') emitter.on.call(ws, 'unexpected-response', (_request, response) => this.readRefusal(attempt, response))
  }

  /** Reads a refused handshake's answer (bounded in bytes and time), then ends the attempt as ws would have. */
  private readRefusal (attempt: Attempt, response: RefusedResponse): void {
    void readRefusedResponse(response).then((refused) => {
      attempt.refusal = refused
      attempt.errorMessage = `Unexpected server response: ${refused.status}`
      try {
        attempt.ws.terminate?.()
      } catch {
        // Already closed: its close event ends the attempt either way.
      }
    })
  }

  /** The URL and subprotocols a WebSocket attempt (or probe) opens with: the token in one of them. */
  private socketArgs (token: string | undefined): { url: string; protocols: string[] } {
    const inQuery = this.options.tokenIn === 'query' && token !== undefined
    return {
      url: inQuery ? `${this.options.url}${this.options.url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}` : this.options.url,
      protocols: this.options.tokenIn === 'query' || token === undefined ? ['rooms.v1'] : ['rooms.v1', `bearer.${token}`],
    }
  }

  /** A WebSocket to the server, with the Origin a Node client names (attempts and probes alike). */
  private newWebSocket (url: string, protocols: string[]): WebSocketLike {
    return new this.WebSocketImpl!(url, protocols, this.options.origin === undefined ? undefined : { origin: this.options.origin })
  }

  /** Drops a socket whose events no longer matter. */
  private abandon (ws: WebSocketLike): void {
    if (this.ws === ws) this.ws = undefined
    ws.onopen = ws.onmessage = ws.onclose = null
    // Not null: ws emits an error for a socket closed while connecting, and an error nobody listens to throws.
    ws.onerror = () => {}
    try {
      if (typeof ws.terminate === 'function') ws.terminate()
      else ws.close()
    } catch {
      // Closing a socket that never opened may throw in some implementations; it is dropped either way.
    }
  }

  /** An attempt ended before `welcome`: find out why, say it, and retry or stop. */
  private async onAttemptFailed (attempt: Attempt): Promise<void> {
    if (this.attemptInFlight !== attempt) return
    this.phase = { name: 'offline' }
    clearTimeout(attempt.timer)
    if (this.ws === attempt.ws) this.ws = undefined
    const refusal = await this.diagnose(attempt)
    if (this.closedByUser) return
    this.emit('error', refusal)
    // WebSockets may be blocked on the way (a proxy, a gateway): after two network failures, the fallback
    // (where there is one: Node has no EventSource). A fallback attempt that fails the same way means the
    // server itself is away: back to WebSockets, so an outage does not leave the client on the fallback.
    const networkFailure = refusal.code === 'network' || refusal.code === 'connect_timeout'
    this.networkFailures = networkFailure ? this.networkFailures + 1 : 0
    if ((this.options.transport ?? 'auto') === 'auto') {
      if (this.transport === 'websocket' && this.networkFailures >= 2 && this.fallbackAvailable()) {
        this.networkFailures = 0
        this.useTransport('sse')
        this.wakePending = true
      } else if (this.transport === 'sse' && networkFailure && this.WebSocketImpl !== undefined) {
        this.networkFailures = 0
        this.useTransport('websocket')
      }
    }
    if (refusal.code === 'unauthorized' || refusal.code === 'origin_not_allowed') {
      // Every attempt fetches a fresh token: a second refusal in a row will not change by retrying.
      if (++this.authRefusals >= 2) return this.stop(refusal)
    } else {
      this.authRefusals = 0
    }
    const retryAfterMs = (refusal.details as RefusalDetails | undefined)?.retryAfterMs
    this.retryAfterMs = retryAfterMs === undefined ? 0 : Date.now() + retryAfterMs
    this.scheduleReconnect(retryAfterMs)
  }

  /**
   * Why the attempt failed. Node's ws reports the upgrade's HTTP status; browsers hide it (the page sees
   * only 1006), so the client asks the route once over plain HTTP with the same credentials: the plugin
   * answers with the same checks and a JSON `{ code, message }`. A 429 is asked too, for its Retry-After.
   */
  private async diagnose (attempt: Attempt): Promise<RoomsClientError> {
    if (attempt.timedOut) {
      return new RoomsClientError('connect_timeout', `no welcome from ${this.options.url} within ${this.options.connectTimeoutMs ?? 10_000} ms`, {})
    }
    if (attempt.refusal !== undefined && !attempt.opened) {
      const { status, code, message, retryAfterMs } = attempt.refusal
      return refusal(status, message, retryAfterMs, code)
    }
    const upgradeStatus = unexpectedResponseStatus(attempt.errorMessage)
    if (attempt.opened) {
      // Admitted, then closed before welcome: a limit filled up meanwhile, or the server is going away.
      const busy = attempt.closeCode === 1013 || attempt.closeCode === 1001 || attempt.closeCode === 1012
      return new RoomsClientError(busy ? 'unavailable' : 'network', `closed before welcome (${attempt.closeCode ?? 'no code'}${attempt.closeReason === '' ? '' : `: ${attempt.closeReason}`})`, {})
    }
    if (attempt.errorMessage !== undefined && upgradeStatus === 0) {
      return new RoomsClientError('network', `connection to ${this.options.url} failed${attempt.errorMessage === undefined ? '' : `: ${attempt.errorMessage}`}`, {})
    }
    if (upgradeStatus !== 0 && upgradeStatus !== 429) return refusal(upgradeStatus, undefined)
    const fetch = (globalThis as { fetch?: (url: string, init: object) => Promise<{ status: number; headers: { get(name: string): string | null }; json(): Promise<unknown> }> }).fetch
    if (fetch === undefined) return upgradeStatus === 0 ? new RoomsClientError('network', `connection to ${this.options.url} failed`, {}) : refusal(upgradeStatus, undefined)
    try {
      const headers: Record<string, string> = {}
      if (attempt.token !== undefined) headers.authorization = `Bearer ${attempt.token}`
      const response = await fetch(this.options.url.replace(/^ws/, 'http'), { headers, credentials: 'include', cache: 'no-store' })
      const { status, code, message, retryAfterMs } = await refusalOf(response)
      return refusal(status, message, retryAfterMs, code)
    } catch {
      // Unreachable, or a cross-origin answer the browser will not show (an origin the server does not allow).
      return upgradeStatus === 0 ? new RoomsClientError('network', `cannot reach ${this.options.url}`, {}) : refusal(upgradeStatus, undefined)
    }
  }

  private onFrame (frame: ServerFrame, token: string | undefined): void {
    switch (frame.type) {
      case 'welcome': return this.onWelcome(frame, token)
      case 'ack':
      case 'error': return this.onAnswer(frame)
      case 'pong': return this.onPong(frame)
      case 'reset': return this.onReset(frame)
      // The server took the socket out of a room (e.g. authorizeJoin refused it after a token refresh): not re-joined.
      case 'left': if (frame.room !== undefined) this.positions.delete(frame.room)
        break
      // The server put the socket into a room: tracked (and resumed after a reconnect) like one joined here.
      case 'joined': return this.onJoined(frame)
      case 'append': return this.onAppend(frame as ServerFrame & AppendFrame)
    }
    if (frame.room !== undefined && typeof frame.seq === 'number') {
      const position = this.positions.get(frame.room)
      if (position === undefined) return // a room we left
      if (position !== null && frame.seq <= position.seq) return // already seen: replay and live overlap
      if (position !== null && frame.seq > position.seq + 1 && this.behindJoined.has(frame.room)) return // the resume's reset covers it
      this.positions.set(frame.room, { seq: frame.seq, epoch: position?.epoch ?? '' })
      if (typeof frame.time === 'number' && Math.random() < (this.options.reportLatency ?? 0)) this.sendFrame('latency', { time: frame.time })
      if (isStreamFrame(frame)) return this.onStreamed(frame)
    }
    this.emit(frame.type, frame)
  }

  /** A streamed event, new to this client (live, replayed, or open when it joined): its object goes to `on(type)`. */
  private onStreamed (frame: ServerFrame & Parameters<typeof isStreamFrame>[0]): void {
    if (!isStreamFrame(frame) || this.streams.has(frame.stream.id)) return
    const event = new StreamedEvent(frame, (err, what) => this.emit('error', new RoomsClientError('listener', `a streamed event's "${what}" listener threw: ${(err as Error)?.message}`, err)))
    if (event.state === 'streaming') this.streams.set(event.id, event)
    this.emit(frame.type, event)
  }

  private onAppend (frame: ServerFrame & AppendFrame): void {
    const event = this.streams.get(frame.id)
    if (event === undefined || typeof frame.offset !== 'number' || typeof frame.text !== 'string') return
    if (event.apply(frame)) this.streams.delete(frame.id)
  }

  /** The open streams a join ack or `joined` frame gives (they began before the join's position). */
  private onStreamsGiven (streams: unknown): void {
    if (!Array.isArray(streams)) return
    for (const frame of streams as ServerFrame[]) this.onStreamed(frame)
  }

  /** The room's unfinished streams and how much of each this client has, for a resume. */
  private streamsOf (room: string): Record<string, number> | undefined {
    let held: Record<string, number> | undefined
    for (const event of this.streams.values()) if (event.room === room) (held ??= {})[event.id] = event.text.length
    return held
  }

  private forgetStreams (room: string): void {
    for (const [id, event] of this.streams) if (event.room === room) this.streams.delete(id)
  }

  private onWelcome (frame: ServerFrame, token: string | undefined): void {
    if (this.attemptInFlight !== undefined) clearTimeout(this.attemptInFlight.timer)
    this.phase = { name: 'open' }
    this.authRefusals = 0
    this.networkFailures = 0
    if (this.transport === 'sse') this.startProbing()
    this.retryAfterMs = 0
    this.wakePending = false
    this.everOpened = true
    this.openedAt = Date.now()
    this.connectionId = frame.payload?.connectionId
    this.setState('open')
    this.emit('welcome', frame.payload)
    this.startHeartbeat((frame.payload as { heartbeatMs?: unknown } | undefined)?.heartbeatMs)
    this.scheduleRefresh(token)
    const ws = this.ws!
    // Rooms seen before: resume from the last seq. Rooms never acked: join, unless a join is already waiting.
    const toJoin: string[] = []
    const joining = new Set<string>()
    for (const pending of this.pending.values()) {
      if (pending.frame.type === 'join' && pending.frame.room !== undefined) joining.add(pending.frame.room)
      // A join from a position waits as its own resume: sent again below, not twice.
      if (pending.frame.type === 'resume') for (const room of Object.keys((pending.frame.payload as { rooms: object }).rooms)) joining.add(room)
    }
    const toResume: string[] = []
    for (const [room, position] of this.positions) {
      if (joining.has(room)) continue
      if (position !== null && position.epoch !== '') toResume.push(room)
      else toJoin.push(room)
    }
    this.resumeRetries = 0
    this.sendResume(ws, toResume)
    // Joins for rooms never acked first (each sent once; the server runs a socket's frames in order, so a
    // queued request for one of these rooms meets the socket in it), then unanswered requests again with
    // their ids, in order.
    const unanswered = [...this.pending.values()]
    for (const room of toJoin) void this.join(room).catch((err: RoomsClientError) => this.emit('error', err))
    for (const pending of unanswered) this.write(pending)
  }

  private onAnswer (frame: ServerFrame): void {
    const id = String(frame.id)
    if (frame.id !== undefined && id === this.resumeId) return this.onResumed(frame)
    const pending = frame.id === undefined ? undefined : this.pending.get(id)
    if (pending === undefined) {
      if (frame.type === 'error') {
        const { code, message, details } = frame.payload ?? {}
        this.emit('error', new RoomsClientError(code ?? 'error', message ?? 'error', details))
      }
      return
    }
    this.pending.delete(id)
    clearTimeout(pending.timer)
    clearTimeout(pending.queueTimer)
    if (frame.type === 'error') {
      const { code, message, details } = frame.payload ?? {}
      return pending.reject(new RoomsClientError(code, message, details))
    }
    if (pending.frame.type === 'join') this.onStreamsGiven((frame.payload as { streams?: unknown } | undefined)?.streams)
    if (pending.frame.type === 'join' && pending.frame.room !== undefined && this.positions.has(pending.frame.room)) {
      const room = pending.frame.room
      const current = this.positions.get(room)
      const { seq, epoch } = frame.payload as RoomPosition
      // Events may have arrived before the ack; they are past ack.seq, so keep the larger seq.
      this.positions.set(room, current && (current.epoch === epoch || current.epoch === '') ? { seq: Math.max(current.seq, seq), epoch } : { seq, epoch })
    }
    pending.resolve(frame.payload)
  }

  /** Asks the server for what `rooms` missed since this client's positions in them. */
  private sendResume (ws: WebSocketLike, rooms: readonly string[]): void {
    const resume: Record<string, RoomPosition & { streams?: Record<string, number> }> = {}
    for (const room of rooms) {
      const position = this.positions.get(room)
      if (position === null || position === undefined || position.epoch === '') continue
      const streams = this.streamsOf(room)
      resume[room] = streams === undefined ? position : { ...position, streams }
    }
    if (Object.keys(resume).length === 0) return
    const id = `${this.idPrefix}-${++this.nextId}`
    this.resumeId = id
    ws.send(JSON.stringify({ type: 'resume', id, payload: { rooms: resume } }))
  }

  /**
   * The server could not serve these rooms' resume now (`unavailable`): their positions are kept and the
   * resume is sent again on this connection after a jittered backoff, so what they missed still arrives.
   */
  private retryResume (rooms: readonly string[]): void {
    const ws = this.ws
    if (ws === undefined || rooms.length === 0) return
    const delayMs = Math.min(5000, 500 * 2 ** this.resumeRetries++) * (0.5 + Math.random())
    clearTimeout(this.resumeRetryTimer)
    this.resumeRetryTimer = setTimeout(() => {
      if (this.ws === ws && this.phase.name === 'open' && this.resumeId === undefined) this.sendResume(ws, rooms)
    }, delayMs)
  }

  private onResumed (frame: ServerFrame): void {
    this.resumeId = undefined
    // Answered: each room's replay, or its reset, came before this.
    this.behindJoined.clear()
    if (frame.type === 'error' && frame.payload?.code === 'unavailable') {
      this.emit('error', new RoomsClientError(frame.payload.code, frame.payload.message, frame.payload.details))
      return this.retryResume([...this.positions.keys()].filter((room) => this.positions.get(room) !== null))
    }
    if (frame.type === 'error') {
      // The positions were refused as a whole (a bug, or a server that lost state): start the rooms afresh.
      for (const room of this.positions.keys()) this.positions.set(room, null)
      this.emit('error', new RoomsClientError(frame.payload?.code, frame.payload?.message, frame.payload?.details))
      for (const room of this.positions.keys()) void this.join(room).catch((err: RoomsClientError) => this.emit('error', err))
      return
    }
    const outcomes = (frame.payload?.rooms ?? {}) as Record<string, { result: string; epoch?: string; code?: string; message?: string }>
    const again: string[] = []
    for (const [room, outcome] of Object.entries(outcomes)) {
      if (outcome.result === 'error' && outcome.code === 'unavailable') {
        again.push(room)
        this.emit('error', new RoomsClientError(outcome.code, outcome.message ?? 'resume failed', undefined, room))
      } else if (outcome.result === 'error') {
        this.positions.delete(room)
        this.forgetStreams(room)
        this.emit('error', new RoomsClientError(outcome.code ?? 'error', outcome.message ?? 'resume failed', undefined, room))
      }
    }
    if (again.length > 0) this.retryResume(again)
    else this.resumeRetries = 0
  }

  private onJoined (frame: ServerFrame): void {
    const room = frame.room
    const position = frame.payload as Partial<RoomPosition> | undefined
    if (room === undefined || typeof position?.seq !== 'number' || typeof position.epoch !== 'string') return
    const current = this.positions.get(room)
    // A room this client already follows in the same epoch keeps its own position: its resume (sent after
    // welcome) tells the server what it lacks, and the server replays that into the joined room.
    if (current === null || current === undefined || current.epoch !== position.epoch) this.positions.set(room, { seq: position.seq, epoch: position.epoch })
    else if (current.seq < position.seq && this.resumeId !== undefined) this.behindJoined.add(room)
    this.emit('joined', frame)
    this.onStreamsGiven((frame.payload as { streams?: unknown }).streams)
  }

  private onReset (frame: ServerFrame): void {
    const room = frame.room
    if (room === undefined || !this.positions.has(room)) return
    const { seq, epoch } = frame.payload as RoomPosition
    this.behindJoined.delete(room)
    this.positions.set(room, { seq, epoch })
    this.emit('reset', { room, seq, epoch })
  }

  private onPong (frame: ServerFrame): void {
    if (this.ping === undefined || frame.id !== this.ping.id) return
    clearTimeout(this.pongTimer)
    this.latencyMs = Date.now() - this.ping.sentAt
    this.ping = undefined
    this.emit('pong', this.latencyMs)
  }

  private startHeartbeat (serverHeartbeatMs: unknown): void {
    let heartbeatMs = this.options.heartbeatMs ?? 15_000
    // A stream cannot answer the server's ping: on the fallback, our pings are what keep it open, so they
    // go at least twice per server heartbeat.
    if (this.transport === 'sse' && typeof serverHeartbeatMs === 'number' && serverHeartbeatMs > 0) heartbeatMs = Math.min(heartbeatMs, serverHeartbeatMs / 2)
    this.heartbeatTimer = setInterval(() => {
      if (this.ping !== undefined || !this.online) return
      this.ping = { id: `${this.idPrefix}-p${++this.nextId}`, sentAt: Date.now() }
      this.ws?.send(JSON.stringify({ type: 'ping', id: this.ping.id }))
      this.pongTimer = setTimeout(() => this.onPongTimeout(), this.options.pongTimeoutMs ?? 10_000)
    }, heartbeatMs)
  }

  /** A dead connection may never deliver its close: drop it now and reconnect. */
  private onPongTimeout (): void {
    const ws = this.ws
    if (ws === undefined) return
    this.emit('error', new RoomsClientError('connection', 'no pong in time: reconnecting'))
    this.ws = undefined
    if (typeof ws.terminate === 'function') ws.terminate()
    else ws.close(4000, 'pong timeout')
    this.onDisconnect()
  }

  private scheduleRefresh (token: string | undefined): void {
    clearTimeout(this.refreshTimer)
    if (token === undefined) return // a session socket: nothing to refresh
    const exp = tokenExp(token)
    if (exp === undefined) return
    const now = Date.now()
    const lead = Math.min(this.options.refreshLeadMs ?? 60_000, (exp - now) / 2)
    this.refreshTimer = setTimeout(() => { void this.refreshToken() }, Math.max(0, exp - lead - now))
  }

  private async refreshToken (): Promise<void> {
    try {
      const token = await this.options.getToken!()
      if (!this.online) return // the next connection takes a fresh token anyway
      await this.requestFrame('auth', { token }, {})
      // The fallback's POSTs carry the token too.
      if (this.ws instanceof SseLink) this.ws.token = token
      this.scheduleRefresh(token)
    } catch (err) {
      this.emit('error', err instanceof RoomsClientError ? err : new RoomsClientError('token', `token refresh failed: ${(err as Error)?.message}`, err))
    }
  }

  private onDisconnect (): void {
    const wasOnline = this.online
    if (this.phase.name !== 'stopped') this.phase = { name: 'offline' }
    this.ws = undefined
    this.resumeId = undefined
    this.behindJoined.clear()
    this.stopTimers()
    // Unanswered requests wait for the next connection; their answer timeouts stop meanwhile.
    for (const pending of this.pending.values()) this.enqueue(pending)
    if (this.closedByUser) return
    if (wasOnline && Date.now() - this.openedAt >= (this.options.stableAfterMs ?? 10_000)) this.attempt = 0
    this.scheduleReconnect()
  }

  /**
   * Full jitter over initialMs × 2^attempt, capped at maxMs. A server's Retry-After is a floor, with jitter
   * of up to as long again above it: clients refused together (a restarted or overloaded server sheds many
   * at once) do not all come back in the same second.
   */
  private scheduleReconnect (notBeforeMs = 0): void {
    if (this.closedByUser) return
    this.setState(this.everOpened ? 'reconnecting' : 'connecting')
    const initialMs = this.options.backoff?.initialMs ?? 1000
    const maxMs = this.options.backoff?.maxMs ?? 5000
    const backoffMs = this.wakePending ? 0 : Math.random() * Math.min(maxMs, initialMs * 2 ** this.attempt)
    this.wakePending = false
    const delayMs = notBeforeMs > 0 ? notBeforeMs + Math.random() * notBeforeMs : backoffMs
    this.attempt++
    this.emit('reconnect', { attempt: this.attempt, delayMs })
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = setTimeout(() => { void this.openSocket() }, delayMs)
  }

  private fallbackAvailable (): boolean {
    return (this.options.EventSource ?? (globalThis as { EventSource?: unknown }).EventSource) !== undefined && typeof (globalThis as { fetch?: unknown }).fetch === 'function'
  }

  private openFallback (token: string | undefined): WebSocketLike {
    const EventSourceImpl = this.options.EventSource ?? (globalThis as { EventSource?: EventSourceConstructor }).EventSource
    const fetch = (globalThis as { fetch?: FetchLike }).fetch
    if (EventSourceImpl === undefined || fetch === undefined) throw new TypeError('no EventSource or fetch for the SSE fallback')
    // Bound: a browser's fetch called as another object's method throws "Illegal invocation".
    return new SseLink(this.options.url.replace(/^ws/, 'http'), token, EventSourceImpl, fetch.bind(globalThis))
  }

  private useTransport (transport: ClientTransport): void {
    if (this.transport === transport) return
    this.transport = transport
    this.emit('transport', transport)
  }

  /**
   * On the fallback in 'auto', a WebSocket is tried every probeIntervalMs; when one reaches `welcome`, the
   * client moves back: it closes the stream and reconnects over a socket, resuming every room from its
   * positions (the client drops what it has seen, so nothing repeats; history fills what it missed).
   */
  private startProbing (): void {
    clearInterval(this.probeTimer)
    if ((this.options.transport ?? 'auto') !== 'auto' || this.WebSocketImpl === undefined) return
    this.probeTimer = setInterval(() => { void this.probe() }, this.options.probeIntervalMs ?? 30_000)
  }

  private async probe (): Promise<void> {
    if (this.transport !== 'sse' || !this.online || this.WebSocketImpl === undefined) return
    let token: string | undefined
    try {
      token = await this.options.getToken?.()
    } catch {
      return
    }
    const { url, protocols } = this.socketArgs(token)
    let probe: WebSocketLike
    try {
      probe = this.newWebSocket(url, protocols)
    } catch {
      return
    }
    const done = setTimeout(() => this.abandon(probe), this.options.connectTimeoutMs ?? 10_000)
    probe.onerror = () => {}
    probe.onclose = () => clearTimeout(done)
    probe.onmessage = (event) => {
      if (!String(event.data).includes('"type":"welcome"')) return
      clearTimeout(done)
      this.abandon(probe)
      if (this.transport !== 'sse' || this.closedByUser) return
      clearInterval(this.probeTimer)
      this.useTransport('websocket')
      this.wakePending = true
      this.ws?.close(1000, 'moving to a WebSocket')
    }
  }

  private stopTimers (): void {
    clearTimeout(this.resumeRetryTimer)
    clearInterval(this.probeTimer)
    clearInterval(this.heartbeatTimer)
    clearTimeout(this.pongTimer)
    clearTimeout(this.refreshTimer)
    this.ping = undefined
  }
}

/** `createClient<RoomsSchema<typeof options>>({ … })` types requests and events from the server's options. */
export function createClient<S extends ClientSchema = AnySchema> (options: ClientOptions): RoomsClient<S> {
  return new RoomsClient<S>(options)
}

// The fastify-rooms client: reconnecting, token-refreshing, resuming. No runtime dependencies and no
// imports, so this one file runs in browsers (native WebSocket) and in Node (pass WebSocket from ws).

export type ClientState = 'connecting' | 'open' | 'reconnecting' | 'closed'

// An event handler property whose parameter is checked like a method's (bivariantly), so a WebSocket whose
// handlers take a richer event (ws's MessageEvent, the DOM's) still fits without a cast.
type EventHandler<E> = { handle(event: E): void }['handle']

/** The part of the WebSocket API the client uses; browsers' WebSocket and ws's both have it. */
export interface WebSocketLike {
  readonly readyState: number
  send(data: string): void
  close(code?: number, reason?: string): void
  terminate?(): void
  onmessage: EventHandler<{ data: unknown }> | null
  onclose: EventHandler<{ code: number; reason: string }> | null
  onerror: EventHandler<unknown> | null
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike

export interface ClientOptions {
  /** ws:// or wss:// URL of the plugin's route, e.g. `wss://chat.example.com/ws`. */
  url: string
  /**
   * Awaited before every connection attempt and shortly before the token's `exp`. Omit it for a server
   * that signs sockets in with `authenticate` (a cookie session): the browser sends the cookie itself.
   */
  getToken?: () => string | Promise<string>
  /** Defaults to the global WebSocket (browsers, Node 22+); in Node 20 pass `WebSocket` from ws. */
  WebSocket?: WebSocketConstructor
  /** Rooms to join on connect. */
  rooms?: string[]
  /** App-level ping interval (default 15000 ms). */
  heartbeatMs?: number
  /** No pong within this time → the connection is treated as dead (default 10000 ms). */
  pongTimeoutMs?: number
  /** Reconnect delays: full jitter over initialMs × 2^attempt, capped at maxMs (defaults 1000 and 15000 ms). */
  backoff?: { initialMs?: number; maxMs?: number }
  /** A connection open this long resets the backoff (default 10000 ms). */
  stableAfterMs?: number
  /** Requests that may wait while offline (default 100). */
  maxQueue?: number
  /** Default request timeout (default 10000 ms). */
  requestTimeoutMs?: number
  /** Refresh the token this long before its exp, or halfway through a shorter lifetime (default 60000 ms). */
  refreshLeadMs?: number
  /** 'protocol' (default) sends the token as the `bearer.<jwt>` subprotocol entry; 'query' as ?token= (it then shows in URL logs). */
  tokenIn?: 'protocol' | 'query'
  /** Connect at once (default true); otherwise call connect(). */
  autoConnect?: boolean
  /**
   * Fraction of room events (0 to 1, default 0) whose `time` is sent back in a `latency` frame, feeding the
   * server's client-latency histogram (publish → received here, plus the report's way back).
   */
  reportLatency?: number
}

export interface RoomPosition {
  seq: number
  epoch: string
}

/** Any frame the server sends; room events have `room` and `seq`. */
export interface ServerFrame {
  type: string
  id?: string | number
  room?: string
  seq?: number
  payload?: any
  traceId?: string
  time?: number
}

export interface ClientEvents {
  state: (state: ClientState) => void
  error: (error: RoomsClientError) => void
  /** History no longer covered the gap (or the server restarted): refetch the room's state. */
  reset: (reset: { room: string; seq: number; epoch: string }) => void
  welcome: (welcome: { connectionId: string; user: { id: string }; heartbeatMs: number; maxPayload: number }) => void
  /** A reconnect is scheduled: attempt number and the delay before it. */
  reconnect: (info: { attempt: number; delayMs: number }) => void
  /** Round trip of the last app-level ping. */
  pong: (latencyMs: number) => void
}

export class RoomsClientError extends Error {
  constructor (
    /** The server's error code (`forbidden`, `not_in_room`…) or the client's own: `timeout`, `closed`, `queue_full`, `token`, `connection`. */
    readonly code: string,
    message: string,
    readonly details?: unknown,
    /** The room an error is about, when there is one (resume outcomes). */
    readonly room?: string
  ) {
    super(message)
    this.name = 'RoomsClientError'
  }
}

interface Pending {
  frame: { type: string; id: string; room?: string; payload?: unknown }
  resolve: (payload: any) => void
  reject: (error: RoomsClientError) => void
  timer: ReturnType<typeof setTimeout>
}

type Listener = (...args: any[]) => void

export class RoomsClient {
  state: ClientState = 'closed'
  /** Round trip of the last ping, in ms. */
  latencyMs: number | undefined
  /** Reconnect attempts since the last stable connection. */
  attempt = 0
  connectionId: string | undefined

  private readonly WebSocketImpl: WebSocketConstructor
  private ws: WebSocketLike | undefined
  private online = false
  private closedByUser = true
  private openedAt = 0
  /** room → last seen position; null until the first join ack or event. */
  private readonly positions = new Map<string, RoomPosition | null>()
  /** In send order: re-sent with the same id after a reconnect (the server answers each id once). */
  private readonly pending = new Map<string, Pending>()
  private readonly listeners = new Map<string, Set<Listener>>()
  private readonly idPrefix = Math.random().toString(36).slice(2, 10)
  private nextId = 0
  private reconnectTimer: ReturnType<typeof setTimeout> | undefined
  private heartbeatTimer: ReturnType<typeof setInterval> | undefined
  private pongTimer: ReturnType<typeof setTimeout> | undefined
  private refreshTimer: ReturnType<typeof setTimeout> | undefined
  private ping: { id: string; sentAt: number } | undefined
  private resumeId: string | undefined
  private everOpened = false

  constructor (private readonly options: ClientOptions) {
    const WebSocketImpl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket
    if (WebSocketImpl === undefined) throw new TypeError('fastify-rooms client: no global WebSocket; pass options.WebSocket (e.g. from ws)')
    this.WebSocketImpl = WebSocketImpl
    for (const room of options.rooms ?? []) this.positions.set(room, null)
    if (options.autoConnect !== false) this.connect()
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
    if (!this.closedByUser) return
    this.closedByUser = false
    this.attempt = 0
    this.setState('connecting')
    void this.openSocket()
  }

  /** Closes for good: no reconnect; waiting requests reject with `closed`. */
  close (): void {
    this.closedByUser = true
    this.stopTimers()
    clearTimeout(this.reconnectTimer)
    const ws = this.ws
    this.ws = undefined
    this.online = false
    ws?.close(1000, 'client closed')
    for (const [id, pending] of this.pending) {
      clearTimeout(pending.timer)
      this.pending.delete(id)
      pending.reject(new RoomsClientError('closed', 'client closed'))
    }
    this.setState('closed')
  }

  on<K extends keyof ClientEvents>(event: K, listener: ClientEvents[K]): () => void
  on (type: string, listener: (frame: ServerFrame) => void): () => void
  on (type: string, listener: Listener): () => void {
    let set = this.listeners.get(type)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(type, set)
    }
    set.add(listener)
    return () => set.delete(listener)
  }

  /** Joins a room (and re-joins it after every reconnect); resolves with the join ack. */
  async join (room: string): Promise<{ room: string; seq: number; epoch: string; members?: Array<{ id: string }> }> {
    if (!this.positions.has(room)) this.positions.set(room, null)
    try {
      return await this.request('join', undefined, { room })
    } catch (err) {
      if (err instanceof RoomsClientError && err.code !== 'timeout') this.positions.delete(room)
      throw err
    }
  }

  async leave (room: string): Promise<void> {
    this.positions.delete(room)
    await this.request('leave', undefined, { room })
  }

  /**
   * Sends a frame with an id and resolves with the `ack` payload; rejects with the server's error code,
   * or `timeout`. While offline the frame waits (up to maxQueue) and is sent on reconnect.
   */
  request<T = any>(type: string, payload?: unknown, options: { room?: string; timeoutMs?: number } = {}): Promise<T> {
    if (this.closedByUser) return Promise.reject(new RoomsClientError('closed', 'client is closed'))
    if (!this.online && this.pending.size >= (this.options.maxQueue ?? 100)) {
      return Promise.reject(new RoomsClientError('queue_full', 'too many requests waiting for the connection'))
    }
    const id = `${this.idPrefix}-${++this.nextId}`
    const frame: Pending['frame'] = { type, id }
    if (options.room !== undefined) frame.room = options.room
    if (payload !== undefined) frame.payload = payload
    return new Promise<T>((resolve, reject) => {
      const timeoutMs = options.timeoutMs ?? this.options.requestTimeoutMs ?? 10_000
      const timer = setTimeout(() => {
        this.pending.delete(id)
        reject(new RoomsClientError('timeout', `no answer to "${type}" within ${timeoutMs} ms`))
      }, timeoutMs)
      this.pending.set(id, { frame, resolve, reject, timer })
      if (this.online) this.ws?.send(JSON.stringify(frame))
    })
  }

  /** Fire and forget (no id, no answer); false when not connected. */
  send (type: string, payload?: unknown, options: { room?: string } = {}): boolean {
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
    const url = this.options.tokenIn === 'query' && token !== undefined
      ? `${this.options.url}${this.options.url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`
      : this.options.url
    const protocols = this.options.tokenIn === 'query' || token === undefined ? ['rooms.v1'] : ['rooms.v1', `bearer.${token}`]
    let ws: WebSocketLike
    try {
      ws = new this.WebSocketImpl(url, protocols)
    } catch (err) {
      this.emit('error', new RoomsClientError('connection', `cannot open ${this.options.url}: ${(err as Error)?.message}`, err))
      return this.scheduleReconnect()
    }
    this.ws = ws
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
    ws.onclose = () => {
      if (ws === this.ws) this.onDisconnect()
    }
    // A failed handshake or a network error is followed by close; close handles both.
    ws.onerror = () => {}
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
    }
    if (frame.room !== undefined && typeof frame.seq === 'number') {
      const position = this.positions.get(frame.room)
      if (position === undefined) return // a room we left
      if (position !== null && frame.seq <= position.seq) return // already seen: replay and live overlap
      this.positions.set(frame.room, { seq: frame.seq, epoch: position?.epoch ?? '' })
      if (typeof frame.time === 'number' && Math.random() < (this.options.reportLatency ?? 0)) this.send('latency', { time: frame.time })
    }
    this.emit(frame.type, frame)
  }

  private onWelcome (frame: ServerFrame, token: string | undefined): void {
    this.online = true
    this.everOpened = true
    this.openedAt = Date.now()
    this.connectionId = frame.payload?.connectionId
    this.setState('open')
    this.emit('welcome', frame.payload)
    this.startHeartbeat()
    this.scheduleRefresh(token)
    const ws = this.ws!
    // Rooms seen before: resume from the last seq. Rooms never acked: join, unless a join is already waiting.
    const resume: Record<string, RoomPosition> = {}
    const toJoin: string[] = []
    const joining = new Set<string>()
    for (const pending of this.pending.values()) if (pending.frame.type === 'join' && pending.frame.room !== undefined) joining.add(pending.frame.room)
    for (const [room, position] of this.positions) {
      if (position !== null && position.epoch !== '') resume[room] = position
      else if (!joining.has(room)) toJoin.push(room)
    }
    if (Object.keys(resume).length > 0) {
      const id = `${this.idPrefix}-${++this.nextId}`
      this.resumeId = id
      ws.send(JSON.stringify({ type: 'resume', id, payload: { rooms: resume } }))
    }
    // Unanswered requests go again with their ids, then joins for rooms never acked (each sent once).
    for (const pending of this.pending.values()) ws.send(JSON.stringify(pending.frame))
    for (const room of toJoin) void this.join(room).catch((err: RoomsClientError) => this.emit('error', err))
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
    if (frame.type === 'error') {
      const { code, message, details } = frame.payload ?? {}
      return pending.reject(new RoomsClientError(code, message, details))
    }
    if (pending.frame.type === 'join' && pending.frame.room !== undefined && this.positions.has(pending.frame.room)) {
      const room = pending.frame.room
      const current = this.positions.get(room)
      const { seq, epoch } = frame.payload as RoomPosition
      // Events may have arrived before the ack; they are past ack.seq, so keep the larger seq.
      this.positions.set(room, current && (current.epoch === epoch || current.epoch === '') ? { seq: Math.max(current.seq, seq), epoch } : { seq, epoch })
    }
    pending.resolve(frame.payload)
  }

  private onResumed (frame: ServerFrame): void {
    this.resumeId = undefined
    if (frame.type === 'error') {
      // The positions were refused as a whole (a bug, or a server that lost state): start the rooms afresh.
      for (const room of this.positions.keys()) this.positions.set(room, null)
      this.emit('error', new RoomsClientError(frame.payload?.code, frame.payload?.message, frame.payload?.details))
      for (const room of this.positions.keys()) void this.join(room).catch((err: RoomsClientError) => this.emit('error', err))
      return
    }
    const outcomes = (frame.payload?.rooms ?? {}) as Record<string, { result: string; epoch?: string; code?: string; message?: string }>
    for (const [room, outcome] of Object.entries(outcomes)) {
      if (outcome.result === 'error') {
        this.positions.delete(room)
        this.emit('error', new RoomsClientError(outcome.code ?? 'error', outcome.message ?? 'resume failed', undefined, room))
      }
    }
  }

  private onReset (frame: ServerFrame): void {
    const room = frame.room
    if (room === undefined || !this.positions.has(room)) return
    const { seq, epoch } = frame.payload as RoomPosition
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

  private startHeartbeat (): void {
    const heartbeatMs = this.options.heartbeatMs ?? 15_000
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
      await this.request('auth', { token })
      this.scheduleRefresh(token)
    } catch (err) {
      this.emit('error', err instanceof RoomsClientError ? err : new RoomsClientError('token', `token refresh failed: ${(err as Error)?.message}`, err))
    }
  }

  private onDisconnect (): void {
    const wasOnline = this.online
    this.online = false
    this.ws = undefined
    this.resumeId = undefined
    this.stopTimers()
    if (this.closedByUser) return
    if (wasOnline && Date.now() - this.openedAt >= (this.options.stableAfterMs ?? 10_000)) this.attempt = 0
    this.scheduleReconnect()
  }

  private scheduleReconnect (): void {
    if (this.closedByUser) return
    this.setState(this.everOpened ? 'reconnecting' : 'connecting')
    const initialMs = this.options.backoff?.initialMs ?? 1000
    const maxMs = this.options.backoff?.maxMs ?? 15_000
    const delayMs = Math.random() * Math.min(maxMs, initialMs * 2 ** this.attempt)
    this.attempt++
    this.emit('reconnect', { attempt: this.attempt, delayMs })
    clearTimeout(this.reconnectTimer)
    this.reconnectTimer = setTimeout(() => { void this.openSocket() }, delayMs)
  }

  private stopTimers (): void {
    clearInterval(this.heartbeatTimer)
    clearTimeout(this.pongTimer)
    clearTimeout(this.refreshTimer)
    this.ping = undefined
  }
}

/** The token's exp in ms, read without verifying (the server verifies); undefined when absent or unreadable. */
function tokenExp (token: string): number | undefined {
  try {
    const part = token.split('.')[1] ?? ''
    const json = atob(part.replace(/-/g, '+').replace(/_/g, '/'))
    const exp = (JSON.parse(json) as { exp?: unknown }).exp
    return typeof exp === 'number' ? exp * 1000 : undefined
  } catch {
    return undefined
  }
}

export function createClient (options: ClientOptions): RoomsClient {
  return new RoomsClient(options)
}

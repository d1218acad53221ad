// The client's types. Type-only (erased from the emitted JavaScript); the client's one error class is
// errors.ts's.
import type { RoomsClientError } from './errors.js'

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
  onopen?: EventHandler<unknown> | null
  onmessage: EventHandler<{ data: unknown }> | null
  onclose: EventHandler<{ code: number; reason: string }> | null
  /**
   * ws's error event carries `message` ("Unexpected server response: 401"); browsers' carries nothing. An
   * implementation that read the refused handshake's answer may add it as `refusal`.
   */
  onerror: EventHandler<unknown> | null
}
/**
 * The client always passes its subprotocols as an array, and `{ origin }` when the `origin` option is set
 * (ws's third argument; browsers' WebSocket ignores it and sends the page's own Origin).
 */
export type WebSocketConstructor = new (url: string, protocols: string[], options?: { origin?: string }) => WebSocketLike

/** What the SSE fallback uses of an EventSource (browsers' own). */
export interface EventSourceLike {
  onopen: ((event: unknown) => void) | null
  onmessage: ((event: { data: string }) => void) | null
  onerror: ((event: unknown) => void) | null
  addEventListener(type: string, listener: (event: { data: string }) => void): void
  close(): void
}
export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike

/** How the client reaches the server: a WebSocket, or the Server-Sent Events fallback (a stream plus POSTs). */
export type ClientTransport = 'websocket' | 'sse'

/**
 * What a client knows of a server: each message type's payload and the result its handler resolves, and
 * each event type's payload. `RoomsSchema<typeof options>` (from `fastify-rooms`) derives it from the
 * server's options; without one every type and payload is open.
 */
export interface ClientSchema {
  messages: Record<string, { payload: unknown; result: unknown }>
  events: Record<string, unknown>
}

/** The schema of a client that was given none: any type, any payload. */
export interface AnySchema extends ClientSchema {
  messages: Record<string, { payload: any; result: any }>
  events: Record<string, any>
}

export interface ClientOptions {
  /** ws:// or wss:// URL of the plugin's route, e.g. `wss://chat.example.com/ws`. */
  url: string
  /**
   * Awaited before every connection attempt and shortly before the token's `exp`. Omit it for a server
   * that signs sockets in with `authenticate` (a cookie session): the browser sends the cookie itself.
   */
  getToken?: () => string | Promise<string>
  /** Defaults to the global WebSocket (browsers, Node 22+); in Node pass `WebSocket` from ws (with `origin`). */
  WebSocket?: WebSocketConstructor
  /**
   * The Origin a Node client's handshake sends (ws's `origin` option), e.g. `http://localhost:3000`: the
   * server refuses a missing or unknown Origin unless its `allowedOrigins` allows it. Browsers send the
   * page's own Origin and ignore this.
   */
  origin?: string
  /**
   * 'auto' (default): a WebSocket, and the server's Server-Sent Events fallback (its `sse` option) when no
   * socket can open — at once when there is no `WebSocket`, or after two handshakes failed with a network
   * error — while a WebSocket is tried again every `probeIntervalMs`, and used again once it opens.
   * 'websocket' or 'sse' forces one.
   */
  transport?: 'auto' | ClientTransport
  /** Defaults to the global EventSource (browsers). */
  EventSource?: EventSourceConstructor
  /** While on the fallback, how often a WebSocket is tried again (default 30000 ms). */
  probeIntervalMs?: number
  /** Rooms to join on connect. */
  rooms?: string[]
  /** App-level ping interval (default 15000 ms). */
  heartbeatMs?: number
  /** No pong within this time → the connection is treated as dead (default 10000 ms). */
  pongTimeoutMs?: number
  /** A handshake (up to the server's `welcome`) that takes longer is abandoned: `connect_timeout` (default 10000 ms). */
  connectTimeoutMs?: number
  /** Reconnect delays: full jitter over initialMs × 2^attempt, capped at maxMs (defaults 1000 and 5000 ms). */
  backoff?: { initialMs?: number; maxMs?: number }
  /** A connection open this long resets the backoff (default 10000 ms). */
  stableAfterMs?: number
  /** Requests that may wait while offline (default 100). */
  maxQueue?: number
  /** Default request timeout, counted from when the frame is written to an open socket (default 10000 ms). */
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

export interface RequestOptions {
  room?: string
  /** How long to wait for the answer once the frame is written to an open socket (default `requestTimeoutMs`). */
  timeoutMs?: number
  /**
   * How long the frame may wait unsent while the client is offline, in total, before it rejects with
   * `queue_timeout`. Default: as long as the client keeps reconnecting (until `close()`).
   */
  queueTimeoutMs?: number
  /**
   * A W3C traceparent (e.g. from the page's own OpenTelemetry span): the server's handler span becomes its
   * child and `ctx.traceId` its trace id, so events the handler broadcasts carry that trace id.
   */
  traceparent?: string
  /** The W3C tracestate that goes with `traceparent`. */
  tracestate?: string
}

export interface RoomPosition {
  seq: number
  epoch: string
}

/** Any frame the server sends; room events have `room` and `seq`. */
export interface ServerFrame<P = any> {
  type: string
  id?: string | number
  room?: string
  seq?: number
  payload?: P
  /** A room event's trace id (32 hex digits unless the publisher chose one): the same in the server's logs and traces. */
  traceId?: string
  /** A room event whose publish was traced: the W3C traceparent of its publish span, to continue the trace here. */
  traceparent?: string
  time?: number
}

/** A room event or direct frame of a declared type. */
export interface EventFrame<P> extends ServerFrame<P> {
  payload: P
}

/** A `presence` room event: a user joined or left, or (rooms with presence 'count') how many are in. */
export type PresenceEvent = { action: 'join' | 'leave'; user: { id: string } } | { action: 'count'; count: number }

export interface JoinAck {
  room: string
  seq: number
  epoch: string
  /** A join `from` a position: its events were replayed, or history could not reach back (a `reset` event came). */
  from?: 'replayed' | 'reset'
  /** How many events were replayed, for a join `from` a position. */
  replayed?: number
  /** Presence rooms: the members, or (a big room) up to 100 of them. */
  members?: Array<{ id: string; info?: Record<string, unknown> }>
  /** Set when `members` is not everyone: how many users are in the room. */
  memberCount?: number
  /** Presence 'count' rooms: how many users are in the room. */
  count?: number
}

export type { RefusalDetails } from './errors.js'

export interface ClientEvents {
  state: (state: ClientState) => void
  /**
   * A `RoomsClientError`. Refused or failed connection attempts have the codes `unauthorized` (401),
   * `origin_not_allowed` (403), `rate_limited` (429), `unavailable` (503), `connect_timeout`, `network`
   * or `refused` (any other status), with `RefusalDetails`.
   */
  error: (error: RoomsClientError) => void
  /** History no longer covered the gap (or the server restarted): refetch the room's state. */
  reset: (reset: { room: string; seq: number; epoch: string }) => void
  welcome: (welcome: { connectionId: string; user: { id: string }; heartbeatMs: number; maxPayload: number }) => void
  /** A reconnect is scheduled: attempt number and the delay before it. */
  reconnect: (info: { attempt: number; delayMs: number }) => void
  /** The client moved to another transport (`client.transport` says which is in use). */
  transport: (transport: ClientTransport) => void
  /** Round trip of the last app-level ping. */
  pong: (latencyMs: number) => void
  /** Presence room events (users joining and leaving rooms this client is in). */
  presence: (frame: EventFrame<PresenceEvent>) => void
  /** The server took this client out of `frame.room`; it is not re-joined. */
  left: (frame: ServerFrame) => void
  /** The server put this client into `frame.room` (`payload: { seq, epoch, members? }`); it is resumed after reconnects. */
  joined: (frame: EventFrame<{ seq: number; epoch: string; members?: Array<{ id: string }> }>) => void
}

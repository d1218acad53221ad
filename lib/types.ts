// Public types shared by the plugin's files. Kept apart so that no file imports another only for its types.
import type { FastifyBaseLogger } from 'fastify'
import type { Static, TSchema } from 'typebox'
import type { RoomsClient } from './client/index.js'
import type { AnySchema, ClientOptions, ClientSchema } from './client/types.js'
import type { FrameIdValue } from './protocol/protocol.js'
import type { RoomPosition, SqlTransaction } from './brokers/broker.js'

/** What `userFromToken` makes of a verified JWT payload; `id` names the user everywhere (presence, `sendToUser`). */
export interface RoomsUser {
  id: string
  [key: string]: unknown
}

/** One open socket, as handlers see it. */
export interface RoomsConnection {
  readonly id: string
  readonly user: RoomsUser
  /** Rooms this socket has joined. */
  readonly rooms: ReadonlySet<string>
  /** Sends a direct (non-room) frame `{ type, payload, time }`; false when the socket is no longer open. */
  send(type: string, payload: unknown): boolean
  close(code?: number, reason?: string): void
}

export interface MessageContext {
  connection: RoomsConnection
  user: RoomsUser
  /** The frame's room; always set, and joined, when the message type is declared with `room: true`. */
  room: string | undefined
  id: FrameIdValue | undefined
  /** The client's `traceId`, or a new one; broadcasts made through `ctx.rooms` carry it. */
  traceId: string
  log: FastifyBaseLogger
  rooms: RoomsApi
  /** Sends a direct frame to this connection only. */
  reply<T extends RoomsEventType>(type: T, payload: RoomsEventPayload<T>): void
}

/** The room's position for a socket put into it by the server (the `joined` frame's payload, and what `join` resolves). */
export interface JoinPosition {
  room: string
  seq: number
  epoch: string
  members?: RoomMember[]
}

/** What onConnect and onDisconnect get: the socket, and a way to put it into rooms from the server. */
export interface ConnectContext {
  connection: RoomsConnection
  user: RoomsUser
  log: FastifyBaseLogger
  rooms: RoomsApi
  /** Puts this socket into a room (authorizeJoin is not consulted); it gets a `joined` frame with the position. */
  join(room: string): Promise<JoinPosition>
  /** Takes this socket out of a room; it gets a `left` frame (`reason: 'server'`). */
  leave(room: string): Promise<void>
}

/** Whom a server-side join or leave is for: every socket of a user (every process), or one connection. */
export type MembershipTarget = { userId: string } | { connectionId: string }

export interface MessageDefinition<S extends TSchema = TSchema, R = unknown> {
  /** TypeBox schema of `payload`, compiled once at registration. */
  schema: S
  /** The frame must name a room this socket has joined. */
  room?: boolean
  /** The resolved value becomes the `ack` payload when the frame has an `id` (`null` for undefined). */
  handler(ctx: MessageContext, payload: Static<S>): R
}

/**
 * The host's event types, for `fastify.rooms.broadcast`, `sendToUser` and `ctx.reply`. Empty by default
 * (any type, any payload); a host types them with module augmentation, from its events kept in a const
 * of their own (the handlers that broadcast them would otherwise make the type depend on itself):
 * `declare module 'fastify-rooms' { interface RoomsEventMap extends EventPayloads<typeof events> {} }`.
 */
export interface RoomsEventMap {}

/** An event type the server may send: any string until the host declares its events. */
export type RoomsEventType = keyof RoomsEventMap extends never ? string : keyof RoomsEventMap & string
/** The payload of an event type: its declared type, `unknown` until the host declares its events. */
export type RoomsEventPayload<T extends string> = keyof RoomsEventMap extends never
  ? unknown
  : T extends keyof RoomsEventMap ? RoomsEventMap[T] : never

/** `{ [type]: payload }` of an `events` object (`{ [type]: TSchema }`). */
export type EventPayloads<E> = { -readonly [K in keyof E]: E[K] extends TSchema ? Static<E[K]> : never }

/** `{ [type]: payload }` of the `events` option. */
export type EventsOf<O> = O extends { events: infer E } ? EventPayloads<E> : {}

type AckOf<R> = [Awaited<R>] extends [undefined] ? null : [Awaited<R>] extends [void] ? null : Awaited<R>

/** `{ [type]: { payload, result } }` of the `messages` option: what a client sends, and the `ack` it gets. */
export type MessagesOf<O> = O extends { messages: infer M }
  ? { -readonly [K in keyof M]: M[K] extends MessageDefinition<infer S, infer R> ? { payload: Static<S>; result: AckOf<R> } : never }
  : {}

/**
 * What a client of these options sends and receives: `createClient<RoomsSchema<typeof options>>({ … })`
 * types `request` (payload and result) and `on` (event payloads). Define the options with `defineRooms`
 * (or `satisfies RoomsOptions`) so their message and event types are kept.
 */
export interface RoomsSchema<O> {
  messages: MessagesOf<O>
  events: EventsOf<O>
}

export interface BroadcastOptions {
  /** A connection id that must not receive this event (typically the sender's). */
  except?: string
  /** Defaults to a new id (or, through `ctx.rooms`, the frame's traceId). */
  traceId?: string
  /**
   * A publisher's retry key: the same key for the same room within the retry window (`retryWindow.windowMs`,
   * or 5 minutes) publishes once, on every process, and resolves the first `seq`.
   */
  idempotencyKey?: string
  /**
   * The host's `pg` client inside `BEGIN`: the event exists iff that transaction commits. On the Postgres
   * broker it is published in the transaction (delivered after COMMIT, seq order = commit order); with
   * the `outbox` option it is written to the outbox and published by the relay after COMMIT.
   */
  transaction?: SqlTransaction
}

/**
 * What `broadcast` resolves: the event's `seq`. An outbox write (`transaction` with the `outbox` option)
 * has no seq before its COMMIT: `seq` is 0 and `outboxId` is its row.
 */
export interface BroadcastResult {
  seq: number
  outboxId?: string
}

export interface RoomMember {
  id: string
  /** The user's presence data, when `presenceInfo` gives some. */
  info?: Record<string, unknown>
}

/** A room event as clients receive it. */
export interface RoomEvent {
  type: string
  room: string
  seq: number
  payload: unknown
  traceId: string
  time: number
  /** A streamed event's text so far and its state (`fastify.rooms.stream`). */
  stream?: { id: string; state: 'streaming' | 'done' | 'aborted'; text: string; reason?: string }
}

export interface StreamOptions {
  /** Defaults to a new id (or, through `ctx.rooms`, the frame's traceId). */
  traceId?: string
  /** As for `broadcast`: the same key for the same room within the retry window starts one stream. */
  idempotencyKey?: string
}

/**
 * A streamed event (`fastify.rooms.stream`): one room event — one seq, one history entry — whose text grows.
 * Members get the event at once, then its text as it is appended, in order; a client that joins or resumes
 * mid-stream gets the text so far, then the rest.
 */
export interface RoomStream {
  readonly id: string
  readonly room: string
  readonly seq: number
  /** `streaming` until `end()`, `abort()`, `streamIdleMs` without text (aborted, `reason: 'idle'`), or its broker lost it (aborted). */
  readonly state: 'streaming' | 'done' | 'aborted'
  /**
   * Adds text. Synchronous and cheap: what one turn appends leaves as one append. Throws once the stream
   * ended (409), and past `maxStreamBytes` (413; the stream stays open).
   */
  append(text: string): void
  /** Ends the stream (`state: 'done'`); resolves once the last text and the end are stored. */
  end(): Promise<void>
  /** Ends the stream `aborted`, keeping the text appended so far; `reason`: at most 128 characters. */
  abort(reason?: string): Promise<void>
}

export interface RoomHistory {
  /** The room's current position. */
  seq: number
  epoch: string
  /** False when events after `after` were already dropped (history is bounded by count and age). */
  complete: boolean
  /** Retained events with seq > after, oldest first. */
  events: RoomEvent[]
}

export interface RoomsStats {
  /** Open connections, WebSocket and SSE (`sse.streams` of them are SSE streams). */
  connections: number
  /** The SSE fallback on this process: open sessions, and those with a stream attached. */
  sse: { sessions: number; streams: number }
  rooms: number
  members: number
  messagesIn: Record<string, number>
  messagesOut: Record<string, number>
  errors: Record<string, number>
  closes: Record<string, number>
  handshakes: Record<string, number>
  /** Resumes by result: `replayed` or `reset`. */
  resumes: Record<string, number>
  slowConsumerCloses: number
  /** The largest send buffer of any open socket right now, in bytes. */
  maxBufferedBytes: number
  /** From publish to the last local send of each room event: count, sum and max, in seconds. */
  broadcast: { count: number; sumSeconds: number; maxSeconds: number }
  /** From publish to the clients' `latency` reports. */
  clientLatency: { count: number; sumSeconds: number; maxSeconds: number }
}

/** `fastify.rooms` */
export interface RoomsApi {
  broadcast<T extends RoomsEventType>(room: string, type: T, payload: RoomsEventPayload<T>, options?: BroadcastOptions): Promise<BroadcastResult>
  /**
   * Publishes a streamed event: one room event (`seq`) whose text the returned stream appends to. Rejects
   * with a 429 when the room has `maxOpenStreamsPerRoom` open streams, or this process `maxOpenStreams`;
   * otherwise as `broadcast`.
   */
  stream<T extends RoomsEventType>(room: string, type: T, payload?: RoomsEventPayload<T>, options?: StreamOptions): Promise<RoomStream>
  /**
   * The room's position: `{ seq, epoch }` of its last event. With `transaction` (a REPEATABLE READ one),
   * the position that transaction's snapshot sees, so a page can load rows and the position together and
   * join from it (`client.join(room, { from })`) with no gap and no duplicate.
   */
  position(room: string, options?: { transaction?: SqlTransaction }): Promise<RoomPosition>
  sendToUser<T extends RoomsEventType>(userId: string, type: T, payload: RoomsEventPayload<T>): Promise<void>
  members(room: string): Promise<RoomMember[]>
  count(room: string): Promise<number>
  rooms(): Promise<string[]>
  disconnectUser(userId: string, code?: number, reason?: string): Promise<void>
  /**
   * Puts the target's sockets into a room, on every process, without consulting authorizeJoin; each gets a
   * `joined` frame with the room's position, so its client resumes the room after a reconnect. Resolves
   * once the change is on its way to every process.
   */
  join(target: MembershipTarget, room: string): Promise<void>
  /** Takes the target's sockets out of a room, on every process; each gets a `left` frame (`reason: 'server'`). */
  leave(target: MembershipTarget, room: string): Promise<void>
  /** The room's retained events after `after` (default 0: all that are retained). */
  history(room: string, options?: { after?: number }): Promise<RoomHistory>
  stats(): RoomsStats
  /** Prometheus text for a /metrics route; rejects with FST_ROOMS_METRICS_DISABLED unless `metrics` is on. */
  metrics(): Promise<{ contentType: string; body: string }>
}

/** What `inject(user, options)` takes of the client's options: no URL, socket class or token (the user is given). */
export type InjectClientOptions = Omit<ClientOptions, 'url' | 'WebSocket' | 'getToken' | 'tokenIn'>

/** `fastify.rooms`: the API above, and `inject` for a host's own tests. */
/** What the host tells about its API in `fastify.rooms.asyncapi(info)`; the rest comes from the options. */
export interface AsyncApiInfo {
  /** Default 'fastify-rooms'. */
  title?: string
  /** The version of the host's API (default '1.0.0'). */
  version?: string
  description?: string
  /** AsyncAPI server objects by name, e.g. `{ production: { host: 'chat.example.com', protocol: 'wss' } }`. */
  servers?: Record<string, { host: string; protocol: string; pathname?: string; description?: string }>
}

/** An AsyncAPI 3.0 document, as JSON. */
export interface AsyncApiDocument {
  asyncapi: '3.0.0'
  info: { title: string; version: string; description?: string }
  [key: string]: unknown
}

export interface RoomsDecorator extends RoomsApi {
  /**
   * The AsyncAPI 3.0 document of the plugin as configured: the WebSocket channel and its security, every
   * frame both ways with its schema (your messages and events from their TypeBox schemas), namespaces,
   * error and close codes, the SSE fallback when it is on. Serve it as JSON.
   */
  asyncapi(info?: AsyncApiInfo): AsyncApiDocument
  /**
   * A client connected in this process as `user` (no port, no token): the same API as `createClient`, and
   * everything a real socket meets on the server (authorizeJoin, limits, frames, acks, room events, close).
   */
  inject<S extends ClientSchema = AnySchema>(user: RoomsUser, clientOptions?: InjectClientOptions): Promise<RoomsClient<S>>
}

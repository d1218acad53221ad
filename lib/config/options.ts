// Options: the schema, the defaults, and the resolved shape the rest of the plugin reads.
// Everything is checked here, at `register`, with an error that names the option.
// Past 300 lines: one check per option, each naming it; split by option they would share nothing but fail().
import { parse as parseDuration } from '@lukeed/ms'
import Type, { type Static, type TSchema } from 'typebox'
import { Compile, type Validator } from 'typebox/compile'
import type { FastifyJWTOptions } from '@fastify/jwt'
import type { FastifyRequest } from 'fastify'
import type { Registry } from 'prom-client'
import { InvalidOptionError } from './errors.js'
import { RESERVED_TYPES } from '../protocol/protocol.js'
import { isBroker, type Broker } from '../brokers/broker.js'
import { checkOutboxOptions, type OutboxOptions } from '../brokers/outbox.js'
import { namespacePolicies, type NamespaceOptions, type RoomPolicy } from './namespaces.js'
import type { ConnectContext, MessageDefinition, RoomsUser } from '../types.js'

export type { NamespaceOptions, RoomPolicy } from './namespaces.js'

const PositiveInteger = Type.Integer({ minimum: 1 })

/** The options that are plain data; functions and objects (jwt, messages, broker…) are checked by hand below. */
const DataOptions = Type.Object({
  path: Type.Optional(Type.String({ pattern: '^/' })),
  allowedOrigins: Type.Optional(Type.Union([Type.Literal('*'), Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })])),
  allowMissingOrigin: Type.Optional(Type.Boolean()),
  presence: Type.Optional(Type.Union([
    Type.Boolean(),
    Type.Object({ leaveGraceMs: Type.Optional(Type.Integer({ minimum: 0, maximum: 600_000 })) }, { additionalProperties: false }),
  ])),
  heartbeatMs: Type.Optional(Type.Integer({ minimum: 10 })),
  maxPayload: Type.Optional(Type.Integer({ minimum: 128, maximum: 104_857_600 })),
  rateLimit: Type.Optional(Type.Union([
    Type.Literal(false),
    Type.Object({
      messagesPerSecond: Type.Number({ exclusiveMinimum: 0 }),
      burst: PositiveInteger,
      bytesPerSecond: Type.Optional(Type.Number({ exclusiveMinimum: 0 })),
      burstBytes: Type.Optional(PositiveInteger),
    }, { additionalProperties: false }),
  ])),
  abuseLimit: Type.Optional(Type.Union([
    Type.Literal(false),
    Type.Object({ rateLimited: PositiveInteger, windowMs: PositiveInteger }, { additionalProperties: false }),
  ])),
  handshakeRateLimit: Type.Optional(Type.Union([
    Type.Literal(false),
    Type.Object({ max: PositiveInteger, timeWindow: Type.Union([PositiveInteger, Type.String({ minLength: 1 })]) }, { additionalProperties: false }),
  ])),
  loadShedding: Type.Optional(Type.Union([
    Type.Literal(false),
    Type.Object({ maxEventLoopDelayMs: Type.Optional(Type.Integer({ minimum: 10 })), maxHandshakesPerSecond: Type.Optional(PositiveInteger) }, { additionalProperties: false }),
  ])),
  maxRoomsPerConnection: Type.Optional(PositiveInteger),
  maxConnections: Type.Optional(PositiveInteger),
  maxConnectionsPerUser: Type.Optional(PositiveInteger),
  maxBufferedBytes: Type.Optional(Type.Integer({ minimum: 1024 })),
  maxInboxBytes: Type.Optional(Type.Integer({ minimum: 1024 })),
  maxFrameDepth: Type.Optional(Type.Integer({ minimum: 2, maximum: 1000 })),
  maxFrameKeys: Type.Optional(PositiveInteger),
  maxStreamBytes: Type.Optional(Type.Integer({ minimum: 1 })),
  maxOpenStreamsPerRoom: Type.Optional(PositiveInteger),
  maxOpenStreams: Type.Optional(PositiveInteger),
  streamIdleMs: Type.Optional(Type.Integer({ minimum: 10, maximum: 86_400_000 })),
  history: Type.Optional(Type.Object({
    maxEvents: Type.Integer({ minimum: 0 }),
    maxAgeMs: Type.Integer({ minimum: 0 }),
    maxBytes: Type.Optional(Type.Integer({ minimum: 0 })),
  }, { additionalProperties: false })),
  token: Type.Optional(Type.Object({
    requireExp: Type.Optional(Type.Boolean()),
    maxLifetimeMs: Type.Optional(PositiveInteger),
    fromQuery: Type.Optional(Type.Boolean()),
  }, { additionalProperties: false })),
  closeTimeoutMs: Type.Optional(Type.Integer({ minimum: 0 })),
  authenticateTimeoutMs: Type.Optional(PositiveInteger),
  hookTimeoutMs: Type.Optional(PositiveInteger),
  compression: Type.Optional(Type.Union([
    Type.Literal(false),
    Type.Object({ threshold: Type.Optional(Type.Integer({ minimum: 0 })) }, { additionalProperties: false }),
  ])),
  sse: Type.Optional(Type.Union([
    Type.Boolean(),
    Type.Object({ sessionIdleMs: Type.Optional(PositiveInteger) }, { additionalProperties: false }),
  ])),
  serveClient: Type.Optional(Type.Boolean()),
  tracing: Type.Optional(Type.Boolean()),
  retryWindow: Type.Optional(Type.Union([
    Type.Literal(false),
    Type.Object({ maxIdsPerUser: PositiveInteger, windowMs: PositiveInteger }, { additionalProperties: false }),
  ])),
})
const dataOptionsValidator = Compile(DataOptions)

const HAND_CHECKED = ['jwt', 'authenticate', 'userFromToken', 'messages', 'events', 'onConnect', 'onDisconnect', 'namespaces', 'presenceInfo', 'authorizeJoin', 'broker', 'outbox', 'metrics'] as const
// Fastify passes its own register options through to the plugin.
const FASTIFY_REGISTER_OPTIONS = new Set(['prefix', 'logLevel', 'logSerializers'])
const KNOWN_OPTIONS = new Set<string>([...Object.keys(DataOptions.properties), ...HAND_CHECKED])
const MESSAGE_TYPE_PATTERN = /^[A-Za-z][A-Za-z0-9_.:-]{0,63}$/

export interface JwtOptions {
  /** Passed to @fastify/jwt as `secret`. */
  secret: FastifyJWTOptions['secret']
  /** Passed to @fastify/jwt as `verify` (algorithms, allowedIss, allowedAud, clockTolerance…). */
  verify?: FastifyJWTOptions['verify']
}

export interface RoomsOptions {
  path?: string
  /** `{ secret, verify? }` for a JWT verifier of our own; `false` to use the @fastify/jwt the host registered. */
  jwt?: JwtOptions | false
  /**
   * Instead of `jwt`: who the upgrade request is (e.g. from a cookie session), or null to refuse it with 401.
   * Runs before the 101; a throw is logged and answered 401.
   */
  authenticate?: (request: FastifyRequest) => RoomsUser | null | Promise<RoomsUser | null>
  /** An `authenticate` that has not answered by then is abandoned: the upgrade gets 503 (default 10000 ms). */
  authenticateTimeoutMs?: number
  /**
   * After admission, before the socket's first frame runs (frames wait, in order). May join rooms
   * (`ctx.join`); a thrown FrameError closes the socket 1008 with its message, any other throw 1011.
   */
  onConnect?: (ctx: ConnectContext) => void | Promise<void>
  /** Once per socket, after it closed (its rooms are being left). A throw is logged. */
  onDisconnect?: (ctx: ConnectContext, close: { code: number; reason: string }) => void | Promise<void>
  /** A hook that has not finished by then is no longer waited for: onConnect's socket is closed 1011 (default 5000 ms). */
  hookTimeoutMs?: number
  /**
   * Compress room events once per publish for every socket that negotiates permessage-deflate (off by
   * default). `threshold`: smaller events go uncompressed (default 1024 bytes). No zlib context per socket
   * for what the server sends; the plugin must register @fastify/websocket itself (see README).
   */
  compression?: { threshold?: number } | false
  /**
   * The Server-Sent Events fallback on `<path>/sse` (off by default): a session opened by a POST with the
   * socket's credentials, its frames on an EventSource stream, the client's as POSTs. `sessionIdleMs`: a
   * session with no stream attached is dropped after this long (default 30000).
   */
  sse?: boolean | { sessionIdleMs?: number }
  /**
   * Serve the browser client as one ES module on `<path>/client.js` (revalidated by ETag) and
   * `<path>/client@<version>.js` (immutable), for pages without a bundler (default true).
   */
  serveClient?: boolean
  /**
   * OpenTelemetry spans for admission, frames, publishes and fan-outs when the host has
   * `@opentelemetry/api` installed and a tracer provider registered (default true; false: none, at no cost).
   */
  tracing?: boolean
  /** `{ [name]: options }` for the rooms named `name:…` (see NamespaceOptions). */
  namespaces?: Record<string, NamespaceOptions>
  /**
   * A user's public presence data (a name, an avatar URL), at most 1 KiB of JSON: in `members()`, the join
   * ack's members and presence `join` events as `{ id, info }`. Kept only while the user is present.
   */
  presenceInfo?: (user: RoomsUser) => Record<string, unknown> | undefined
  userFromToken?: (payload: Record<string, unknown>) => RoomsUser
  allowedOrigins: readonly string[] | '*'
  allowMissingOrigin?: boolean
  messages?: Record<string, MessageDefinition<any, any>>
  /**
   * What the server sends: `{ [type]: TSchema }` for room events and direct frames. `broadcast`,
   * `sendToUser` and `ctx.reply` check payloads of these types (once per publish), and `RoomsSchema`
   * types the client with them.
   */
  events?: Record<string, TSchema>
  authorizeJoin?: (user: RoomsUser, room: string) => boolean | Promise<boolean>
  /**
   * Presence events and member lists (default true). `{ leaveGraceMs }`: when a socket closes, its user's
   * `leave` waits this long, and is not published if a socket of that user rejoins or resumes the room
   * meanwhile, on any process (default 5000 ms; an explicit `leave` frame is published at once).
   */
  presence?: boolean | { leaveGraceMs?: number }
  heartbeatMs?: number
  maxPayload?: number
  /** Per connection: frames per second (`burst` at once) and bytes per second (`burstBytes` at once). */
  rateLimit?: { messagesPerSecond: number; burst: number; bytesPerSecond?: number; burstBytes?: number } | false
  abuseLimit?: { rateLimited: number; windowMs: number } | false
  handshakeRateLimit?: { max: number; timeWindow: number | string } | false
  /**
   * Handshakes (upgrades, SSE session opens) this process refuses with 503 and a spread Retry-After, before
   * verifying any token, while its event loop's delay is above `maxEventLoopDelayMs` (default 1000) or past
   * `maxHandshakesPerSecond` (default: no limit). `false` never sheds.
   */
  loadShedding?: { maxEventLoopDelayMs?: number; maxHandshakesPerSecond?: number } | false
  maxRoomsPerConnection?: number
  maxConnections?: number
  maxConnectionsPerUser?: number
  maxBufferedBytes?: number
  /** Bytes of frames that may wait for this socket's running frame (default 1 MiB). */
  maxInboxBytes?: number
  /** Frames nested deeper are refused before they are parsed (default 32). */
  maxFrameDepth?: number
  /** Frames with more object keys plus array elements are refused before they are parsed (default 1000). */
  maxFrameKeys?: number
  /** Bytes of one streamed event's text as it travels (UTF-8, JSON-escaped; default 256 KiB, at most `maxBufferedBytes / 2`). */
  maxStreamBytes?: number
  /** Streams open at once in one room, across processes (default 16). */
  maxOpenStreamsPerRoom?: number
  /** Streams open at once on this process (default 10,000). */
  maxOpenStreams?: number
  /** A stream that gets no text for this long is aborted (`reason: 'idle'`; default 30 s). */
  streamIdleMs?: number
  /** `maxBytes`: the memory broker's history budget for all rooms of this process (default 64 MiB). */
  history?: { maxEvents: number; maxAgeMs: number; maxBytes?: number }
  token?: TokenPolicyOptions
  closeTimeoutMs?: number
  retryWindow?: { maxIdsPerUser: number; windowMs: number } | false
  broker?: Broker
  /**
   * With the memory or Redis broker and your data in PostgreSQL: `broadcast(…, { transaction })` writes
   * the event to an outbox table in that transaction, and a relay publishes it after COMMIT.
   */
  outbox?: OutboxOptions
  /** `true` for a prom-client Registry of our own, or your Registry; Prometheus text from `fastify.rooms.metrics()`. */
  metrics?: boolean | Registry
}

export interface TokenPolicyOptions {
  /** Refuse tokens without `exp` (default true). */
  requireExp?: boolean
  /** Refuse tokens whose `exp` is further away than this; a token without `exp` (when allowed) lives this long (default 24 h). */
  maxLifetimeMs?: number
  /** Also read the token from `?token=` (default false: URLs end up in logs and proxies). */
  fromQuery?: boolean
}

export interface TokenPolicy {
  requireExp: boolean
  maxLifetimeMs: number
  fromQuery: boolean
}

export interface CompiledMessage {
  type: string
  room: boolean
  validator: Validator<any, TSchema>
  handler: MessageDefinition['handler']
}

export interface ResolvedOptions {
  path: string
  /** Exactly one of `jwt` and `authenticate` is set. */
  jwt: JwtOptions | false | undefined
  authenticate: RoomsOptions['authenticate']
  authenticateTimeoutMs: number
  onConnect: RoomsOptions['onConnect']
  onDisconnect: RoomsOptions['onDisconnect']
  hookTimeoutMs: number
  compression: { threshold: number } | false
  sse: { sessionIdleMs: number } | false
  serveClient: boolean
  tracing: boolean
  /** The policy of a room: its namespace's, or the top-level one. */
  roomPolicy: (room: string) => RoomPolicy
  presenceInfo: RoomsOptions['presenceInfo']
  userFromToken: (payload: Record<string, unknown>) => RoomsUser
  /** `null` means any origin (`'*'`). */
  allowedOrigins: ReadonlySet<string> | null
  allowMissingOrigin: boolean
  messages: ReadonlyMap<string, CompiledMessage>
  events: ReadonlyMap<string, Validator<any, TSchema>>
  /** How long a closed socket's presence lingers (see RoomsOptions.presence). */
  leaveGraceMs: number
  heartbeatMs: number
  maxPayload: number
  rateLimit: { messagesPerSecond: number; burst: number; bytesPerSecond: number; burstBytes: number } | false
  abuseLimit: { rateLimited: number; windowMs: number } | false
  handshakeRateLimit: { max: number; timeWindow: number | string } | false
  loadShedding: { maxEventLoopDelayMs: number; maxHandshakesPerSecond: number | undefined } | false
  maxRoomsPerConnection: number
  maxConnections: number
  maxConnectionsPerUser: number
  maxBufferedBytes: number
  maxInboxBytes: number
  maxFrameDepth: number
  maxFrameKeys: number
  maxStreamBytes: number
  maxOpenStreamsPerRoom: number
  maxOpenStreams: number
  streamIdleMs: number
  history: { maxEvents: number; maxAgeMs: number; maxBytes: number }
  token: TokenPolicy
  closeTimeoutMs: number
  retryWindow: { maxIdsPerUser: number; windowMs: number } | false
  broker: Broker | undefined
  outbox: OutboxOptions | undefined
  metrics: boolean | Registry
}

export const defaults = {
  path: '/ws',
  allowMissingOrigin: false,
  presence: true,
  leaveGraceMs: 5000,
  heartbeatMs: 30_000,
  maxPayload: 65_536,
  rateLimit: { messagesPerSecond: 20, burst: 40, bytesPerSecond: 131_072, burstBytes: 262_144 },
  abuseLimit: { rateLimited: 100, windowMs: 10_000 },
  handshakeRateLimit: { max: 60, timeWindow: '1 minute' },
  loadShedding: { maxEventLoopDelayMs: 1000 },
  maxRoomsPerConnection: 100,
  maxConnectionsPerUser: 16,
  maxBufferedBytes: 1_048_576,
  maxInboxBytes: 1_048_576,
  maxFrameDepth: 32,
  maxFrameKeys: 1000,
  maxStreamBytes: 262_144,
  maxOpenStreamsPerRoom: 16,
  maxOpenStreams: 10_000,
  streamIdleMs: 30_000,
  history: { maxEvents: 1000, maxAgeMs: 300_000, maxBytes: 67_108_864 },
  token: { requireExp: true, maxLifetimeMs: 86_400_000, fromQuery: false },
  closeTimeoutMs: 5000,
  authenticateTimeoutMs: 10_000,
  hookTimeoutMs: 5000,
  retryWindow: { maxIdsPerUser: 256, windowMs: 300_000 },
} as const

export function defaultUserFromToken (payload: Record<string, unknown>): RoomsUser {
  return { id: payload.sub as string }
}

function fail (option: string, problem: string): never {
  throw new InvalidOptionError(option, problem)
}

export function resolveOptions (raw: unknown): ResolvedOptions {
  if (typeof raw !== 'object' || raw === null) fail('(options)', 'must be an object')
  const options = raw as Record<string, unknown>
  for (const key of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(key) && !FASTIFY_REGISTER_OPTIONS.has(key)) fail(key, 'is not a fastify-rooms option')
  }

  const data: Record<string, unknown> = {}
  for (const key of Object.keys(DataOptions.properties)) if (options[key] !== undefined) data[key] = options[key]
  if (!dataOptionsValidator.Check(data)) {
    // A union (`false | { … }`) reports every branch: the deepest error is the one that names the real problem.
    const errors = dataOptionsValidator.Errors(data).filter((error) => error.keyword !== 'anyOf' && error.keyword !== 'boolean')
    const deepest = errors.reduce<(typeof errors)[number] | undefined>((best, error) =>
      best === undefined || error.instancePath.length > best.instancePath.length ? error : best, undefined)
    const option = deepest === undefined ? '' : deepest.instancePath.slice(1).replaceAll('/', '.')
    fail(option || '(options)', deepest?.message ?? 'is invalid')
  }
  const checked = data as Static<typeof DataOptions>

  if (checked.allowedOrigins === undefined) fail('allowedOrigins', "is required: list the exact origins allowed to connect, or '*' to allow any")
  if (Array.isArray(checked.allowedOrigins)) {
    for (const origin of checked.allowedOrigins) {
      if (origin === '*') fail('allowedOrigins', "takes '*' on its own, not inside a list")
      if (!isExactOrigin(origin)) fail('allowedOrigins', `has "${origin}", which is not an origin like https://chat.example.com (scheme, host, optional port; no path)`)
    }
  }

  const timeWindow = checked.handshakeRateLimit === undefined || checked.handshakeRateLimit === false ? undefined : checked.handshakeRateLimit.timeWindow
  if (typeof timeWindow === 'string' && parseDuration(timeWindow) === undefined) {
    fail('handshakeRateLimit.timeWindow', `"${timeWindow}" is not a duration (a number of ms, or e.g. '1 minute')`)
  }

  const maxPayload = checked.maxPayload ?? defaults.maxPayload
  // A larger maxPayload raises the default byte burst with it: one frame of maxPayload bytes must always pass.
  const rateLimit = checked.rateLimit === false
    ? false
    : { ...defaults.rateLimit, burstBytes: Math.max(defaults.rateLimit.burstBytes, maxPayload), ...checked.rateLimit }
  if (rateLimit !== false && rateLimit.burstBytes < maxPayload) {
    fail('rateLimit.burstBytes', `must be >= maxPayload (${maxPayload}), or frames of maxPayload bytes could never pass`)
  }

  return {
    path: checked.path ?? defaults.path,
    ...checkAuthentication(options),
    userFromToken: checkFunction(options, 'userFromToken') ?? defaultUserFromToken,
    allowedOrigins: checked.allowedOrigins === '*' ? null : new Set(checked.allowedOrigins),
    allowMissingOrigin: checked.allowMissingOrigin ?? defaults.allowMissingOrigin,
    messages: compileMessages(options.messages),
    events: compileEvents(options.events),
    // Without presence events there is no flapping to avoid: a closed socket leaves at once.
    leaveGraceMs: checked.presence === false ? 0 : typeof checked.presence === 'object' ? checked.presence.leaveGraceMs ?? defaults.leaveGraceMs : defaults.leaveGraceMs,
    heartbeatMs: checked.heartbeatMs ?? defaults.heartbeatMs,
    maxPayload,
    rateLimit,
    abuseLimit: checked.abuseLimit ?? defaults.abuseLimit,
    handshakeRateLimit: checked.handshakeRateLimit ?? defaults.handshakeRateLimit,
    loadShedding: checked.loadShedding === false
      ? false
      : { maxEventLoopDelayMs: checked.loadShedding?.maxEventLoopDelayMs ?? defaults.loadShedding.maxEventLoopDelayMs, maxHandshakesPerSecond: checked.loadShedding?.maxHandshakesPerSecond },
    maxRoomsPerConnection: checked.maxRoomsPerConnection ?? defaults.maxRoomsPerConnection,
    maxConnections: checked.maxConnections ?? Infinity,
    maxConnectionsPerUser: checked.maxConnectionsPerUser ?? defaults.maxConnectionsPerUser,
    maxBufferedBytes: checked.maxBufferedBytes ?? defaults.maxBufferedBytes,
    maxInboxBytes: checked.maxInboxBytes ?? defaults.maxInboxBytes,
    maxFrameDepth: checked.maxFrameDepth ?? defaults.maxFrameDepth,
    maxFrameKeys: checked.maxFrameKeys ?? defaults.maxFrameKeys,
    maxStreamBytes: checkStreamBytes(checked.maxStreamBytes, checked.maxBufferedBytes ?? defaults.maxBufferedBytes),
    maxOpenStreamsPerRoom: checked.maxOpenStreamsPerRoom ?? defaults.maxOpenStreamsPerRoom,
    maxOpenStreams: checked.maxOpenStreams ?? defaults.maxOpenStreams,
    streamIdleMs: checked.streamIdleMs ?? defaults.streamIdleMs,
    history: { ...defaults.history, ...checked.history },
    token: { ...defaults.token, ...checked.token },
    closeTimeoutMs: checked.closeTimeoutMs ?? defaults.closeTimeoutMs,
    authenticateTimeoutMs: checked.authenticateTimeoutMs ?? defaults.authenticateTimeoutMs,
    onConnect: checkFunction(options, 'onConnect'),
    onDisconnect: checkFunction(options, 'onDisconnect'),
    hookTimeoutMs: checked.hookTimeoutMs ?? defaults.hookTimeoutMs,
    compression: checked.compression === undefined || checked.compression === false ? false : { threshold: checked.compression.threshold ?? 1024 },
    sse: checked.sse === undefined || checked.sse === false ? false : { sessionIdleMs: (checked.sse === true ? undefined : checked.sse.sessionIdleMs) ?? 30_000 },
    serveClient: checked.serveClient ?? true,
    tracing: checked.tracing ?? true,
    presenceInfo: checkFunction(options, 'presenceInfo'),
    roomPolicy: namespacePolicies(options.namespaces, {
      history: { maxEvents: (checked.history ?? defaults.history).maxEvents, maxAgeMs: (checked.history ?? defaults.history).maxAgeMs },
      presence: checked.presence !== false,
      maxMembers: Infinity,
      authorizeJoin: checkFunction(options, 'authorizeJoin'),
      latestOnJoin: false,
    }),
    retryWindow: checked.retryWindow ?? defaults.retryWindow,
    broker: checkBroker(options.broker),
    outbox: checkOutbox(options.outbox, options.broker),
    metrics: checkMetrics(options.metrics),
  }
}

// A stream's whole text travels in one frame with its event (history, a joiner's snapshot), and that frame
// must fit a socket's send buffer: the text (counted as it travels, JSON-escaped) takes at most half of it,
// the event's own payload the other half.
function checkStreamBytes (maxStreamBytes: number | undefined, maxBufferedBytes: number): number {
  const limit = Math.floor(maxBufferedBytes / 2)
  if (maxStreamBytes === undefined) return Math.min(defaults.maxStreamBytes, limit)
  if (maxStreamBytes > limit) fail('maxStreamBytes', `must be at most maxBufferedBytes / 2 = ${limit}: a stream's whole text reaches a joiner in one frame`)
  return maxStreamBytes
}

function isExactOrigin (origin: string): boolean {
  try {
    return new URL(origin).origin === origin
  } catch {
    return false
  }
}

function checkAuthentication (options: Record<string, unknown>): Pick<ResolvedOptions, 'jwt' | 'authenticate'> {
  const authenticate = checkFunction(options, 'authenticate')
  if (authenticate === undefined) return { jwt: checkJwt(options.jwt), authenticate: undefined }
  if (options.jwt !== undefined) fail('authenticate', 'cannot be combined with jwt: pass one of them')
  if (options.userFromToken !== undefined) fail('userFromToken', 'applies to JWTs; authenticate returns the user itself')
  return { jwt: undefined, authenticate }
}

function checkJwt (jwt: unknown): JwtOptions | false {
  if (jwt === false) return false
  if (jwt === undefined) fail('jwt', 'is required: { secret } to verify tokens, false to use an @fastify/jwt you registered, or pass authenticate instead')
  if (typeof jwt !== 'object' || jwt === null) fail('jwt', 'must be { secret, verify? } or false')
  const { secret, verify, ...rest } = jwt as Record<string, unknown>
  const unknown = Object.keys(rest)
  if (unknown.length > 0) fail(`jwt.${unknown[0]}`, 'is not supported (use jwt.secret and jwt.verify)')
  const secretOk = (typeof secret === 'string' && secret.length > 0) || Buffer.isBuffer(secret) || typeof secret === 'function' ||
    (typeof secret === 'object' && secret !== null && 'public' in secret)
  if (!secretOk) fail('jwt.secret', 'must be a non-empty string, a Buffer, { public, private? } or a function')
  if (verify !== undefined && (typeof verify !== 'object' || verify === null)) fail('jwt.verify', 'must be an object of @fastify/jwt verify options')
  return jwt as JwtOptions
}

function checkFunction<K extends 'userFromToken' | 'authorizeJoin' | 'authenticate' | 'onConnect' | 'onDisconnect' | 'presenceInfo'> (options: Record<string, unknown>, key: K): NonNullable<RoomsOptions[K]> | undefined {
  const value = options[key]
  if (value === undefined) return undefined
  if (typeof value !== 'function') fail(key, 'must be a function')
  return value as NonNullable<RoomsOptions[K]>
}

function compileMessages (messages: unknown): Map<string, CompiledMessage> {
  const compiled = new Map<string, CompiledMessage>()
  if (messages === undefined) return compiled
  if (typeof messages !== 'object' || messages === null || Array.isArray(messages)) fail('messages', 'must be an object of { [type]: { schema, room?, handler } }')
  for (const [type, definition] of Object.entries(messages)) {
    const option = `messages.${type}`
    if (!MESSAGE_TYPE_PATTERN.test(type)) fail(option, 'has a type name that is not a letter followed by up to 63 of [A-Za-z0-9_.:-]')
    if (RESERVED_TYPES.has(type)) fail(option, 'uses a type name the protocol reserves')
    if (typeof definition !== 'object' || definition === null) fail(option, 'must be { schema, room?, handler }')
    const { schema, room, handler } = definition as Record<string, unknown>
    if (typeof schema !== 'object' || schema === null) fail(`${option}.schema`, 'must be a TypeBox schema')
    if (room !== undefined && typeof room !== 'boolean') fail(`${option}.room`, 'must be a boolean')
    if (typeof handler !== 'function') fail(`${option}.handler`, 'must be a function')
    let validator: Validator<any, TSchema>
    try {
      validator = Compile(schema as TSchema)
    } catch (err) {
      fail(`${option}.schema`, `does not compile: ${(err as Error).message}`)
    }
    compiled.set(type, { type, room: room === true, validator, handler: handler as CompiledMessage['handler'] })
  }
  return compiled
}

function compileEvents (events: unknown): Map<string, Validator<any, TSchema>> {
  const compiled = new Map<string, Validator<any, TSchema>>()
  if (events === undefined) return compiled
  if (typeof events !== 'object' || events === null || Array.isArray(events)) fail('events', 'must be an object of { [type]: TypeBox schema }')
  for (const [type, schema] of Object.entries(events)) {
    if (!MESSAGE_TYPE_PATTERN.test(type)) fail(`events.${type}`, 'has a type name that is not a letter followed by up to 63 of [A-Za-z0-9_.:-]')
    if (RESERVED_TYPES.has(type)) fail(`events.${type}`, 'uses a type name the protocol reserves')
    if (typeof schema !== 'object' || schema === null) fail(`events.${type}`, 'must be a TypeBox schema')
    try {
      compiled.set(type, Compile(schema as TSchema) as Validator<any, TSchema>)
    } catch (err) {
      fail(`events.${type}`, `is not a valid schema: ${(err as Error).message}`)
    }
  }
  return compiled
}

function checkBroker (broker: unknown): Broker | undefined {
  if (broker === undefined) return undefined
  if (!isBroker(broker)) fail('broker', 'must be a Broker (memoryBroker() or redisBroker({ url }))')
  return broker
}

function checkOutbox (outbox: unknown, broker: unknown): OutboxOptions | undefined {
  const checked = checkOutboxOptions(outbox)
  if (checked !== undefined && typeof (broker as Partial<Broker> | undefined)?.publishIn === 'function') {
    fail('outbox', 'is for the memory and Redis brokers: the Postgres broker publishes inside the transaction itself')
  }
  return checked
}

function checkMetrics (metrics: unknown): boolean | Registry {
  if (metrics === undefined || typeof metrics === 'boolean') return metrics ?? false
  // Duck-typed: the host's prom-client may be another copy than ours.
  const registry = metrics as Partial<Registry>
  if (typeof registry.registerMetric !== 'function' || typeof registry.metrics !== 'function') fail('metrics', 'must be true, false or a prom-client Registry')
  return metrics as Registry
}

// The schema validates what the interface documents: each data option's type must be the same in both
// (arrays compared without `readonly`, which only widens what callers may pass), so the two lists cannot
// drift apart: a disagreement is a compile error naming the option.
type DataOptionTypes = Static<typeof DataOptions>
type Writable<T> = T extends ReadonlyArray<infer U> ? U[] : T
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false
type Agreement = { [K in keyof DataOptionTypes]-?: K extends keyof RoomsOptions ? Same<NonNullable<DataOptionTypes[K]>, Writable<NonNullable<RoomsOptions[K]>>> : false }
type Disagreeing = { [K in keyof Agreement]: Agreement[K] extends true ? never : K }[keyof Agreement]
const everyDataOptionAgrees: [Disagreeing] extends [never] ? true : Disagreeing = true
void everyDataOptionAgrees
// And every option of the interface is either in the schema or checked by hand (an unknown key is refused).
const everyOptionKnown: Same<keyof DataOptionTypes | (typeof HAND_CHECKED)[number], keyof RoomsOptions> = true
void everyOptionKnown

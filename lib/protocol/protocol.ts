// Wire protocol v1: the envelope, the built-in frames, error codes and close codes.
// Everything a client can send is parsed and validated here, before any handler sees it.
import Type, { type Static, type TSchema } from 'typebox'
import { Compile, type Validator } from 'typebox/compile'
import secureJson from 'secure-json-parse'
import { InvalidArgumentError, PayloadTooLargeError } from '../config/errors.js'
import { MAX_TRACESTATE_LENGTH, parseTraceparent, TRACEPARENT_PATTERN } from './trace-context.js'

export const PROTOCOL_VERSION = 1
/** The subprotocol the server answers with; a token offered as `bearer.<jwt>` is never echoed. */
export const SUBPROTOCOL = 'rooms.v1'
export const BEARER_PROTOCOL_PREFIX = 'bearer.'

export const ErrorCode = {
  invalidJson: 'invalid_json',
  invalidMessage: 'invalid_message',
  unknownType: 'unknown_type',
  rateLimited: 'rate_limited',
  forbidden: 'forbidden',
  notInRoom: 'not_in_room',
  tooManyRooms: 'too_many_rooms',
  /** The room holds its namespace's maxMembers users already. */
  roomFull: 'room_full',
  tokenExpired: 'token_expired',
  internalError: 'internal_error',
  /** Retryable: a dependency (Redis) did not answer in time, or is away. Send the frame again later. */
  unavailable: 'unavailable',
} as const
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode]

export const CloseCode = {
  normal: 1000,
  goingAway: 1001,
  policyViolation: 1008,
  messageTooBig: 1009,
  internalError: 1011,
  tryAgainLater: 1013,
} as const
export type CloseCode = (typeof CloseCode)[keyof typeof CloseCode]

/** ws refuses (throws) a close reason over 123 UTF-8 bytes. */
const MAX_CLOSE_REASON_BYTES = 123

/**
 * A close code an endpoint may send (RFC 6455 §7.4; 1004–1006 and 1015 are never sent): what ws accepts.
 * Anything else is the caller's error, thrown before ws could throw it somewhere worse.
 */
export function checkCloseCode (code: unknown): number {
  const sendable = typeof code === 'number' && Number.isInteger(code) &&
    ((code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006) || (code >= 3000 && code <= 4999))
  if (!sendable) throw new InvalidArgumentError('code', 'must be an integer close code an endpoint may send: 1000–1003, 1007–1014 or 3000–4999')
  return code as number
}

/** The reason cut to 123 UTF-8 bytes on a character boundary. */
export function truncateCloseReason (reason: string): string {
  if (reason.length <= MAX_CLOSE_REASON_BYTES / 3 || Buffer.byteLength(reason) <= MAX_CLOSE_REASON_BYTES) return reason
  let bytes = 0
  let end = 0
  for (const character of reason) {
    bytes += Buffer.byteLength(character)
    if (bytes > MAX_CLOSE_REASON_BYTES) break
    end += character.length
  }
  return reason.slice(0, end)
}

/** Types the client sends that the plugin itself answers; host message types may not reuse them. */
export const BUILT_IN_CLIENT_TYPES = ['join', 'leave', 'ping', 'auth', 'resume', 'latency'] as const
/** Types the server sends on its own; neither host messages nor room events may use them. */
export const SERVER_TYPES = ['welcome', 'ack', 'error', 'pong', 'reset', 'presence', 'left', 'joined', 'append'] as const
/** Types no host message or event may use: every frame type of the protocol, in either direction. */
export const RESERVED_TYPES: ReadonlySet<string> = new Set<string>([...BUILT_IN_CLIENT_TYPES, ...SERVER_TYPES])

export const RoomName = Type.String({ minLength: 1, maxLength: 128 })
export const MessageType = Type.String({ pattern: '^[A-Za-z][A-Za-z0-9_.:-]{0,63}$' })
const FrameId = Type.Union([Type.String({ minLength: 1, maxLength: 64 }), Type.Integer()])

const Envelope = Type.Object(
  {
    type: Type.String({ minLength: 1, maxLength: 64 }),
    id: Type.Optional(FrameId),
    room: Type.Optional(RoomName),
    payload: Type.Optional(Type.Unknown()),
    traceId: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
    traceparent: Type.Optional(Type.String({ pattern: TRACEPARENT_PATTERN })),
    tracestate: Type.Optional(Type.String({ maxLength: MAX_TRACESTATE_LENGTH })),
  },
  { additionalProperties: false }
)
export type Frame = Static<typeof Envelope>
export type FrameIdValue = Static<typeof FrameId>

export const AuthPayload = Type.Object({ token: Type.String({ minLength: 1, maxLength: 8192 }) })
/** Unfinished streamed events a resume may name per room (id → how much text it has, UTF-16 code units). */
export const MAX_RESUMED_STREAMS = 16
export const ResumePayload = Type.Object({
  rooms: Type.Record(Type.String(), Type.Object({
    seq: Type.Integer({ minimum: 0 }),
    epoch: Type.String({ minLength: 1, maxLength: 64 }),
    streams: Type.Optional(Type.Record(Type.String({ minLength: 1, maxLength: 64 }), Type.Integer({ minimum: 0 }), { maxProperties: MAX_RESUMED_STREAMS })),
  }, { additionalProperties: false })),
}, { additionalProperties: false })

const envelopeValidator = Compile(Envelope)
const roomNameValidator = Compile(RoomName)

// Control characters and lone surrogates: the first can split internal messages and logs, the second
// turn into U+FFFD on their way to Redis (UTF-8), so two names would share one room.
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const UNSAFE_TEXT = /[\u0000-\u001f\u007f-\u009f]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

/** Well-formed UTF-16 without control characters: safe as a room name, user id or key, on every broker. */
export function isSafeText (value: string): boolean {
  return !UNSAFE_TEXT.test(value)
}

export function isRoomName (value: unknown): value is string {
  return roomNameValidator.Check(value) && isSafeText(value as string)
}

export const SAFE_TEXT_MESSAGE = 'must be well-formed text without control characters'
/** A client's report of a room event's `time`, as it received the event: feeds the client latency histogram. */
export const LatencyPayload = Type.Object({ time: Type.Integer({ minimum: 0 }) }, { additionalProperties: false })
const latencyValidator = Compile(LatencyPayload)
const authValidator = Compile(AuthPayload)
const resumeValidator = Compile(ResumePayload)

export interface ErrorDetail {
  path: string
  message: string
}

/** A frame the server must answer with an `error`; `id` echoes the client's when one could be read. */
export class FrameError extends Error {
  constructor (
    readonly code: ErrorCode | (string & {}),
    message: string,
    readonly details?: { errors: ErrorDetail[] }
  ) {
    super(message)
    this.name = 'FrameError'
  }
}

const MAX_REPORTED_ERRORS = 10

/** TypeBox errors as `{ path, message }`, at most ten, with paths relative to `prefix`. */
export function validationErrors (validator: Validator<any, any>, value: unknown, prefix = ''): ErrorDetail[] {
  const errors: ErrorDetail[] = []
  for (const error of validator.Errors(value)) {
    // additionalProperties reports twice (once as `schema is false` on the key); keep the readable one.
    if (error.keyword === 'boolean') continue
    errors.push({ path: prefix + error.instancePath, message: error.message })
    if (errors.length === MAX_REPORTED_ERRORS) break
  }
  return errors
}

/** A payload of a type the host declared in `events` must match its schema: the host's bug, thrown at the call. */
export function checkEventPayload (events: ReadonlyMap<string, Validator<any, TSchema>>, type: string, payload: unknown): void {
  const validator = events.get(type)
  if (validator === undefined || validator.Check(payload)) return
  const [first] = validationErrors(validator, payload, '')
  throw new InvalidArgumentError('payload', `does not match events.${type}${first === undefined ? '' : `: ${first.path || '/'} ${first.message}`}`)
}

export function checkPayload<S extends TSchema> (validator: Validator<any, S>, payload: unknown, type: string): Static<S> {
  if (!validator.Check(payload)) {
    throw new FrameError(ErrorCode.invalidMessage, `invalid payload for "${type}"`, {
      errors: validationErrors(validator, payload, '/payload'),
    })
  }
  return payload as Static<S>
}

export function checkAuthPayload (payload: unknown): Static<typeof AuthPayload> {
  return checkPayload(authValidator, payload, 'auth')
}

export function checkLatencyPayload (payload: unknown): Static<typeof LatencyPayload> {
  return checkPayload(latencyValidator, payload, 'latency')
}

export function checkResumePayload (payload: unknown): Static<typeof ResumePayload> {
  return checkPayload(resumeValidator, payload, 'resume')
}

export type ParseResult = { frame: Frame; error?: undefined } | { frame?: undefined; error: FrameError; id?: FrameIdValue }

// Cheap pre-check: only frames that could spell a dangerous key (directly or with \u escapes) are scanned.
const SUSPECT_KEY = /__proto__|constructor|\\u00[0-9A-Fa-f]{2}/

/**
 * Parses one text frame. Keys that could reach a prototype (`__proto__`, `constructor.prototype`) are
 * rejected rather than stripped, as Fastify does for JSON bodies, so a handler never sees a frame that
 * differs from what was sent.
 */
export function parseFrame (text: string): ParseResult {
  let value: unknown
  try {
    value = JSON.parse(text)
  } catch {
    return { error: new FrameError(ErrorCode.invalidJson, 'frame is not valid JSON') }
  }
  if (SUSPECT_KEY.test(text) && typeof value === 'object' && value !== null) {
    try {
      secureJson.scan(value, { protoAction: 'error', constructorAction: 'error' })
    } catch {
      return withId(value, new FrameError(ErrorCode.invalidMessage, 'frame contains a forbidden key (__proto__ or constructor.prototype)'))
    }
  }
  if (envelopeValidator.Check(value)) {
    const frame = value
    if (frame.room !== undefined && !isSafeText(frame.room)) return withId(value, unsafeField('room'))
    if (frame.traceId !== undefined && !isSafeText(frame.traceId)) return withId(value, unsafeField('traceId'))
    if (frame.tracestate !== undefined && !isSafeText(frame.tracestate)) return withId(value, unsafeField('tracestate'))
    if (frame.traceparent !== undefined && parseTraceparent(frame.traceparent) === undefined) {
      return withId(value, new FrameError(ErrorCode.invalidMessage, 'traceparent is not a valid W3C traceparent', { errors: [{ path: '/traceparent', message: 'must not have version ff or an all-zero id' }] }))
    }
    return { frame }
  }
  return withId(value, new FrameError(ErrorCode.invalidMessage, 'frame does not match the protocol envelope', {
    errors: validationErrors(envelopeValidator, value),
  }))
}

function unsafeField (field: 'room' | 'traceId' | 'tracestate'): FrameError {
  return new FrameError(ErrorCode.invalidMessage, `${field} ${SAFE_TEXT_MESSAGE}`, { errors: [{ path: `/${field}`, message: SAFE_TEXT_MESSAGE }] })
}

function withId (value: unknown, error: FrameError): ParseResult {
  const id = readId(value)
  return id === undefined ? { error } : { error, id }
}

function readId (value: unknown): FrameIdValue | undefined {
  if (typeof value !== 'object' || value === null) return undefined
  const id = (value as { id?: unknown }).id
  if (typeof id === 'string' && id.length > 0 && id.length <= 64) return id
  if (typeof id === 'number' && Number.isInteger(id)) return id
  return undefined
}

// Server frames are assembled by hand where they are hot (room events) and by JSON.stringify elsewhere.
// Key order is fixed so clients and tests can rely on it.

export function directFrame (type: string, payload: unknown, id?: FrameIdValue): string {
  return JSON.stringify(id === undefined ? { type, payload, time: Date.now() } : { type, id, payload, time: Date.now() })
}

/** Runs a serialization of a host's payload; a value JSON cannot carry (a BigInt, a cycle) is the host's error, said so. */
function serialized<T> (serialize: () => T): T {
  try {
    return serialize()
  } catch (err) {
    throw new InvalidArgumentError('payload', `must be serializable as JSON (${(err as Error).message})`)
  }
}

/** A host payload as JSON, for a room event. */
export function payloadJson (payload: unknown): string {
  return serialized(() => JSON.stringify(payload) ?? 'null')
}

/** A direct frame from the host, refused up front when it is larger than any socket's send buffer may hold. */
export function boundedDirectFrame (type: string, payload: unknown, maxBytes: number): string {
  const frame = serialized(() => directFrame(type, payload))
  const bytes = Buffer.byteLength(frame)
  if (bytes > maxBytes) throw new PayloadTooLargeError(bytes, maxBytes)
  return frame
}

export function errorFrame (error: FrameError, id?: FrameIdValue): string {
  const payload = error.details === undefined
    ? { code: error.code, message: error.message }
    : { code: error.code, message: error.message, details: error.details }
  return directFrame('error', payload, id)
}

/** A server frame about one room that is not a room event (no seq of its own): `reset`. */
export function directRoomFrame (type: string, room: string, payload: unknown): string {
  return JSON.stringify({ type, room, payload, time: Date.now() })
}

export function pongFrame (id?: FrameIdValue): string {
  return JSON.stringify(id === undefined ? { type: 'pong', time: Date.now() } : { type: 'pong', id, time: Date.now() })
}

const MAX_USER_ID_LENGTH = 256

/** A user id that can name a user everywhere (presence, Redis keys, logs) without colliding with another. */
export function isUserId (id: unknown): id is string {
  return typeof id === 'string' && id.length > 0 && id.length <= MAX_USER_ID_LENGTH && isSafeText(id)
}

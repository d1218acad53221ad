// Every `FST_ROOMS_*` code the plugin answers or throws: at registration (bad options), before the 101
// (rejected upgrades), on the SSE fallback's routes and the client module's, and from `fastify.rooms`.
import { STATUS_CODES } from 'node:http'
import createError, { type FastifyErrorConstructor } from '@fastify/error'
import type { FastifyReply } from 'fastify'

export const InvalidOptionError = createError<[option: string, problem: string]>(
  'FST_ROOMS_INVALID_OPTION',
  'fastify-rooms: option "%s" %s'
)

export const ForbiddenOriginError = createError('FST_ROOMS_FORBIDDEN_ORIGIN', 'Origin not allowed', 403)
export const UnauthorizedError = createError<[reason: string]>('FST_ROOMS_UNAUTHORIZED', 'Unauthorized: %s', 401)
export const TooManyAttemptsError = createError('FST_ROOMS_TOO_MANY_ATTEMPTS', 'too many failed sign-in attempts from this address: try again later', 429)
export const UnavailableError = createError<[reason: string]>('FST_ROOMS_UNAVAILABLE', 'Service unavailable: %s', 503)
export const BrokerError = createError<[reason: string]>('FST_ROOMS_BROKER', 'fastify-rooms broker: %s', 503)
/** The broker's backend (Redis) did not answer within its command timeout: retry later. */
export const BrokerTimeoutError = createError<[reason: string]>('FST_ROOMS_BROKER_TIMEOUT', 'fastify-rooms broker: %s', 503)
export const PayloadTooLargeError = createError<[bytes: number, limit: number]>(
  'FST_ROOMS_PAYLOAD_TOO_LARGE',
  'fastify-rooms: the frame would be %d bytes, more than maxBufferedBytes (%d): no socket could receive it',
  413
)

/** A broker failure (backend away or too slow): retryable, not a bug. */
export function isBrokerError (err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code
  return typeof code === 'string' && (code === 'FST_ROOMS_BROKER' || code === 'FST_ROOMS_BROKER_TIMEOUT')
}
/** `fastify.rooms.stream`: the room (or this process) has as many open streams as its limit allows. */
export const StreamLimitError = createError<[scope: string, limit: number]>('FST_ROOMS_TOO_MANY_STREAMS', 'fastify-rooms: %s has %d open streams already: end one first', 429)
/** A stream that ended (end, abort, idle, or its broker lost it) takes no more text. */
export const StreamEndedError = createError<[state: string]>('FST_ROOMS_STREAM_ENDED', 'fastify-rooms: the stream is %s: it takes no more text', 409)
export const StreamTooLargeError = createError<[bytes: number, limit: number]>('FST_ROOMS_STREAM_TOO_LARGE', 'fastify-rooms: the stream\'s text would be %d bytes, more than maxStreamBytes (%d)', 413)
/** The broker has no streams (a custom one without the StreamBroker methods). */
export const StreamsUnsupportedError = createError<[broker: string]>('FST_ROOMS_STREAMS_UNSUPPORTED', 'fastify-rooms: the %s broker does not store streams', 500)
export const MetricsDisabledError = createError('FST_ROOMS_METRICS_DISABLED', 'fastify-rooms: metrics are off; register with metrics: true or a prom-client Registry', 500)
export const InvalidArgumentError = createError<[argument: string, problem: string]>(
  'FST_ROOMS_INVALID_ARGUMENT',
  'fastify-rooms: %s %s',
  400
)

// Answers of the SSE fallback's routes and the client module's route, sent as the body of a reply.
export const UpgradeRequiredError = createError<[message: string]>('FST_ROOMS_UPGRADE_REQUIRED', '%s', 426)
export const BadSessionRequestError = createError('FST_ROOMS_BAD_SESSION_REQUEST', 'the body is JSON: {} or { "resume": <last event id> }', 400)
export const SessionExpiredError = createError('FST_ROOMS_SESSION_EXPIRED', 'the session\'s token expired: open a new session', 401)
export const FrameTextError = createError('FST_ROOMS_FRAME_TEXT', 'send one frame as JSON text', 415)
export const RateLimitedError = createError('FST_ROOMS_RATE_LIMITED', 'too many frames: slow down', 429)
export const NoStreamError = createError('FST_ROOMS_NO_STREAM', 'open the session\'s stream first', 409)
export const NotYourSessionError = createError('FST_ROOMS_NOT_YOUR_SESSION', 'this session belongs to another user', 403)
export const NoSessionError = createError('FST_ROOMS_NO_SESSION', 'no such session (it ended, expired, or was opened on another process)', 404)
export const ClientNotBuiltError = createError('FST_ROOMS_CLIENT_NOT_BUILT', 'the client module is not built (run `npm run build` in fastify-rooms)', 503)

/** Answers with an error's body as Fastify's error handler would write it, without going through it. */
export function answer (reply: FastifyReply, error: InstanceType<FastifyErrorConstructor>): FastifyReply {
  const statusCode = error.statusCode ?? 500
  return reply.code(statusCode).send({ statusCode, code: error.code, error: STATUS_CODES[statusCode], message: error.message })
}

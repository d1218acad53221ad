// Errors the plugin throws to Fastify: at registration (bad options) and before the 101 (rejected upgrades).
import createError from '@fastify/error'

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
export const MetricsDisabledError = createError('FST_ROOMS_METRICS_DISABLED', 'fastify-rooms: metrics are off; register with metrics: true or a prom-client Registry', 500)
export const InvalidArgumentError = createError<[argument: string, problem: string]>(
  'FST_ROOMS_INVALID_ARGUMENT',
  'fastify-rooms: %s %s',
  400
)

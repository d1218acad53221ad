// Errors the plugin throws to Fastify: at registration (bad options) and before the 101 (rejected upgrades).
import createError from '@fastify/error'

export const InvalidOptionError = createError<[option: string, problem: string]>(
  'FST_ROOMS_INVALID_OPTION',
  'fastify-rooms: option "%s" %s',
)

export const ForbiddenOriginError = createError('FST_ROOMS_FORBIDDEN_ORIGIN', 'Origin not allowed', 403)
export const UnauthorizedError = createError<[reason: string]>('FST_ROOMS_UNAUTHORIZED', 'Unauthorized: %s', 401)
export const UnavailableError = createError<[reason: string]>('FST_ROOMS_UNAVAILABLE', 'Service unavailable: %s', 503)
export const BrokerError = createError<[reason: string]>('FST_ROOMS_BROKER', 'fastify-rooms broker: %s', 503)
export const MetricsDisabledError = createError('FST_ROOMS_METRICS_DISABLED', 'fastify-rooms: metrics are off; register with metrics: true or a prom-client Registry', 500)
export const InvalidArgumentError = createError<[argument: string, problem: string]>(
  'FST_ROOMS_INVALID_ARGUMENT',
  'fastify-rooms: %s %s',
  400,
)

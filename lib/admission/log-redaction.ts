// Tokens never reach a log line: the route's request serializer redacts them from URLs.
import type { FastifyRequest } from 'fastify'

/**
 * A request serializer with every query parameter whose name contains "token" redacted, judged on the
 * decoded name (`?%74oken=` is `token` to Fastify's parser). The plugin's route uses it; a host installs
 * it as its logger's `req` serializer to cover every other route (404s for near-miss paths included).
 */
export function redactedRequest (request: FastifyRequest): Record<string, unknown> {
  return {
    method: request.method,
    url: redactUrl(request.url),
    host: request.host,
    remoteAddress: request.ip,
    remotePort: request.socket?.remotePort,
  }
}

export function redactUrl (url: string): string {
  const query = url.indexOf('?')
  if (query === -1) return url
  const parameters = url.slice(query + 1).split('&').map((parameter) => {
    const equals = parameter.indexOf('=')
    const name = equals === -1 ? parameter : parameter.slice(0, equals)
    return /token/i.test(decodeName(name)) ? `${name}=[REDACTED]` : parameter
  })
  return url.slice(0, query + 1) + parameters.join('&')
}

function decodeName (name: string): string {
  try {
    return decodeURIComponent(name.replaceAll('+', ' '))
  } catch {
    // Not valid percent-encoding: judged as written.
    return name
  }
}

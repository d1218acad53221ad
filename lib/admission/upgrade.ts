// Everything that happens before the 101: the Origin allowlist, the token (token.ts) or the host's
// `authenticate`, the connection limits. These run as hooks of the /ws route, so a rejected client gets an
// HTTP status and no WebSocket is ever created.
import type { FastifyReply, FastifyRequest, onRequestHookHandler, preValidationHookHandler } from 'fastify'
import { answer, ForbiddenOriginError, UnauthorizedError, UnavailableError, UpgradeRequiredError } from '../config/errors.js'
import type { HandshakeResult, Stats } from '../observability/metrics.js'
import type { TokenPolicy } from '../config/options.js'
import { limitReached, LIMIT_MESSAGES, type ConnectionLimits } from './connection-limits.js'
import type { LoadShedding } from './load-shedding.js'
import { INJECT_HEADER } from './inject-header.js'
import { extractToken, PROBLEM_MESSAGES, TokenRejectedError, type Admission, type TokenVerifier } from './token.js'
import { isUserId, SUBPROTOCOL } from '../protocol/protocol.js'
import type { RoomsUser } from '../types.js'

/** ws `handleProtocols`: answer `rooms.v1` when offered; a `bearer.<jwt>` entry is never chosen, so never echoed. */
export function handleProtocols (protocols: Set<string>): string | false {
  return protocols.has(SUBPROTOCOL) ? SUBPROTOCOL : false
}

class AuthenticateTimeout extends Error {}

export interface UpgradeGate {
  onRequest: onRequestHookHandler
  preValidation: preValidationHookHandler
  preflight: (request: FastifyRequest, reply: FastifyReply) => FastifyReply
  /**
   * The socket's admission for another transport's request (the SSE fallback): Origin, then the token or
   * `authenticate`, then (unless `limits` is false) the connection limits. Throws the same HTTP errors.
   */
  admit(request: FastifyRequest, limits: boolean): Promise<Admission>
  /** CORS headers on an answer to an allowed Origin (the SSE fallback's POSTs, read cross-origin). */
  cors(request: FastifyRequest, reply: FastifyReply): void
  /** The Origin check alone (for a request that carries no credentials of its own: the SSE stream). */
  checkOrigin(request: FastifyRequest): void
  /** A CORS preflight for another transport's routes: allowed origins only. */
  preflightFor(methods: string, headers: string): (request: FastifyRequest, reply: FastifyReply) => FastifyReply
}

export interface UpgradeGateOptions extends ConnectionLimits {
  token: TokenPolicy
  authenticate: ((request: FastifyRequest) => RoomsUser | null | Promise<RoomsUser | null>) | undefined
  authenticateTimeoutMs: number
  allowedOrigins: ReadonlySet<string> | null
  allowMissingOrigin: boolean
  /** Sheds handshakes under overload (a 503 before the token is looked at); undefined never sheds. */
  shedding: LoadShedding | undefined
}

export interface UpgradeState {
  /** The user of an injected connection's ticket (fastify.rooms.inject), used up by this call. */
  takeInjected(ticket: unknown): RoomsUser | undefined
  isClosing(): boolean
  openConnections(): number
  openConnectionsOf(userId: string): number
}

function upgradeRequired (reply: FastifyReply, message = 'this route only accepts WebSocket upgrades'): FastifyReply {
  return answer(reply.header('upgrade', 'websocket'), new UpgradeRequiredError(message))
}

export function createUpgradeGate (options: UpgradeGateOptions, verifyToken: TokenVerifier, state: UpgradeState, stats: Stats): UpgradeGate {
  /** Counts and logs a refused handshake (one line, with the reason; never the token) and returns its error. */
  function reject<E extends Error> (request: FastifyRequest, reason: HandshakeResult, error: E, details: Record<string, unknown> = {}): E {
    // An upgrade and an SSE session's opening POST are handshakes; a diagnostic request repeats one the
    // client already made, and a frame POST or a stream belongs to a session already counted: logged only.
    const route = request.routeOptions.url ?? ''
    const sse = route.endsWith('/sse') || route.endsWith('/sse/:session')
    const opensSession = sse && request.method === 'POST' && route.endsWith('/sse')
    if (request.ws || opensSession) stats.handshake(reason)
    const kind = request.ws ? 'handshake' : opensSession ? 'SSE session' : sse ? 'SSE request' : 'diagnostic request'
    request.log.info({ reason, ...details, remoteAddress: request.ip }, `fastify-rooms: ${kind} rejected: ${error.message}`)
    return error
  }
  function checkLimits (request: FastifyRequest, user: RoomsUser): void {
    const reached = limitReached(options, state.openConnections(), state.openConnectionsOf(user.id))
    if (reached === 'total') throw reject(request, 'unavailable', new UnavailableError(LIMIT_MESSAGES.total))
    if (reached === 'user') throw reject(request, 'unavailable', new UnavailableError(LIMIT_MESSAGES.user), { userId: user.id })
  }
  /** CORS headers for an allowed Origin (credentials included, so the origin is echoed, never `*`). */
  function allowCors (request: FastifyRequest, reply: FastifyReply): boolean {
    const origin = request.headers.origin
    reply.header('vary', 'Origin')
    if (origin === undefined || (options.allowedOrigins !== null && !options.allowedOrigins.has(origin))) return false
    reply.header('access-control-allow-origin', origin)
      .header('access-control-allow-credentials', 'true')
      .header('access-control-expose-headers', 'retry-after')
    return true
  }
  async function admitByToken (request: FastifyRequest): Promise<Admission> {
    const token = extractToken(request, options.token.fromQuery)
    if (token === undefined) throw new TokenRejectedError('missing', PROBLEM_MESSAGES.missing)
    return verifyToken(token)
  }
  async function admitBySession (request: FastifyRequest, authenticate: NonNullable<UpgradeGateOptions['authenticate']>): Promise<Admission> {
    let user: RoomsUser | null
    let timer: NodeJS.Timeout | undefined
    try {
      // A session store that hangs must not hold the upgrade (and its socket) forever.
      const timeout = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new AuthenticateTimeout()), options.authenticateTimeoutMs)
      })
      user = await Promise.race([(async () => authenticate(request))(), timeout])
    } catch (err) {
      if (err instanceof AuthenticateTimeout) throw err
      // The host's code failed: its error is logged for the host, the client only learns it is not signed in.
      request.log.warn({ err }, 'fastify-rooms: authenticate threw; answering 401')
      throw new TokenRejectedError('authenticate_failed', PROBLEM_MESSAGES.authenticate_failed)
    } finally {
      clearTimeout(timer)
    }
    if (user === null || user === undefined) throw new TokenRejectedError('no_session', PROBLEM_MESSAGES.no_session)
    if (typeof user !== 'object' || !isUserId(user.id)) {
      request.log.warn('fastify-rooms: authenticate returned a user without a well-formed id; answering 401')
      throw new TokenRejectedError('no_user', 'authenticate returned no well-formed user id')
    }
    return { user, exp: undefined }
  }
  function checkOrigin (request: FastifyRequest): void {
    // Browsers send no Origin on a same-origin GET: a request from the page's own origin says so in
    // Sec-Fetch-Site, and its origin is then the server's own as the browser addressed it.
    const origin = request.headers.origin ??
      (!request.ws && request.headers['sec-fetch-site'] === 'same-origin' ? `${request.protocol}://${request.host}` : undefined)
    const originAllowed = origin === undefined
      ? options.allowMissingOrigin
      : options.allowedOrigins === null || options.allowedOrigins.has(origin)
    if (!originAllowed) throw reject(request, 'forbidden_origin', new ForbiddenOriginError(), { origin: origin ?? null })
  }
  function preflightFor (methods: string, headers: string) {
    return (request: FastifyRequest, reply: FastifyReply): FastifyReply => {
      if (!allowCors(request, reply)) return answer(reply, new ForbiddenOriginError())
      return reply.code(204)
        .header('access-control-allow-methods', methods)
        .header('access-control-allow-headers', headers)
        .header('access-control-max-age', '600')
        .send()
    }
  }
  /** A handshake is refused before its admission costs anything when this process is overloaded. */
  function shed (request: FastifyRequest): void {
    const shedding = options.shedding?.check()
    if (shedding === undefined) return
    const error = reject(request, 'unavailable', new UnavailableError('server is overloaded; retry after the Retry-After delay'), { shed: shedding.reason, retryAfterSeconds: shedding.retryAfterSeconds })
    // Fastify's error handler sends an error's `headers` with its answer.
    throw Object.assign(error, { headers: { 'retry-after': String(shedding.retryAfterSeconds) } })
  }
  async function admit (request: FastifyRequest, limits: boolean): Promise<Admission> {
    if (limits) shed(request)
    checkOrigin(request)
    let admission: Admission
    try {
      admission = options.authenticate === undefined ? await admitByToken(request) : await admitBySession(request, options.authenticate)
    } catch (err) {
      if (err instanceof AuthenticateTimeout) {
        throw reject(request, 'unavailable', new UnavailableError('authentication did not answer in time'), { timeoutMs: options.authenticateTimeoutMs })
      }
      if (!(err instanceof TokenRejectedError)) throw err
      throw reject(request, 'unauthorized', new UnauthorizedError(err.message), { problem: err.problem })
    }
    if (limits) checkLimits(request, admission.user)
    return admission
  }
  return {
    // Cheap refusals first, before @fastify/rate-limit (appended after this hook) counts the attempt.
    async onRequest (request: FastifyRequest, reply: FastifyReply) {
      // @fastify/websocket's injectWS sends Sec-WebSocket-Version as the number 13 (after the caller's
      // headers), and ws ≥ 8.23.1 compares it as a string: every injected upgrade was refused with 400. A
      // request off the network always has a string here; only an injected one can have a number.
      const version: unknown = request.raw.headers['sec-websocket-version']
      if (typeof version === 'number') request.raw.headers['sec-websocket-version'] = String(version)
      if (!request.ws) {
        // A plain GET is the client's diagnostic after a failed handshake (browsers hide its status): the
        // same checks, answered over HTTP. Readable cross-origin only by allowed origins.
        allowCors(request, reply)
        if (request.method !== 'GET') return upgradeRequired(reply)
      }
      if (state.isClosing()) throw reject(request, 'unavailable', new UnavailableError('server is shutting down'))
    },
    // Checks that must be counted by the handshake rate limit run after it.
    async preValidation (request: FastifyRequest, reply: FastifyReply) {
      const ticket = request.headers[INJECT_HEADER]
      if (ticket !== undefined) {
        // fastify.rooms.inject(): admitted as the ticket's user, then the same limits as any socket.
        const user = request.ws ? state.takeInjected(ticket) : undefined
        if (user === undefined) throw reject(request, 'unauthorized', new UnauthorizedError('unknown or used inject ticket'))
        checkLimits(request, user)
        request.roomsAdmission = { user, exp: undefined }
        return
      }
      const admission = await admit(request, true)
      if (!request.ws) return upgradeRequired(reply, 'credentials accepted; this route only accepts WebSocket upgrades')
      request.roomsAdmission = admission
    },
    admit,
    cors: (request, reply) => { allowCors(request, reply) },
    checkOrigin,
    preflightFor,
    // The preflight of a cross-origin diagnostic request (it carries Authorization): allowed origins only.
    preflight: preflightFor('GET', 'authorization'),
  }
}

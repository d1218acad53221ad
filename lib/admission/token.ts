// Tokens: where a handshake carries one, and what makes one acceptable (a verified JWT naming a
// well-formed user, with an exp the policy allows). Used at the upgrade and for every `auth` refresh.
import type { FastifyRequest } from 'fastify'
import type { TokenPolicy } from '../config/options.js'
import { BEARER_PROTOCOL_PREFIX, isUserId } from '../protocol/protocol.js'
import type { RoomsUser } from '../types.js'

/** What a verified upgrade hands to the connection. */
export interface Admission {
  user: RoomsUser
  /**
   * When the socket must be re-authenticated, in seconds: the token's `exp`, or for a token without one
   * (allowed only by `token.requireExp: false`) now + `token.maxLifetimeMs`. Never unbounded for a JWT.
   * Undefined for a socket admitted by `authenticate`: a session has no exp the plugin can see, so the
   * socket lives until it closes or the host ends it (`disconnectUser` when the session ends).
   */
  exp: number | undefined
}

export type TokenProblem = 'missing' | 'expired' | 'not_yet_valid' | 'malformed' | 'invalid' | 'no_user' | 'no_exp' | 'too_long_lived' |
  'no_session' | 'authenticate_failed' | 'not_token_based'

export class TokenRejectedError extends Error {
  constructor (readonly problem: TokenProblem, message: string) {
    super(message)
    this.name = 'TokenRejectedError'
  }
}

/** The part of @fastify/jwt's decorator we use: verify a token with the configured secret and options. */
export interface JwtVerifier {
  verify(token: string): unknown
}

export type TokenVerifier = (token: string) => Promise<Admission>

// fast-jwt's error codes, mapped to what we tell the client (never the token itself).
const FAST_JWT_PROBLEMS: Record<string, TokenProblem> = {
  FAST_JWT_EXPIRED: 'expired',
  FAST_JWT_INACTIVE: 'not_yet_valid',
  FAST_JWT_MALFORMED: 'malformed',
  FAST_JWT_INVALID_TYPE: 'malformed',
}
export const PROBLEM_MESSAGES: Record<TokenProblem, string> = {
  missing: 'no token (send Authorization: Bearer or the bearer.<jwt> subprotocol)',
  expired: 'token expired',
  not_yet_valid: 'token not yet valid',
  malformed: 'token malformed',
  invalid: 'token rejected',
  no_user: 'token does not name a user (a well-formed id of 1 to 256 characters without control characters)',
  no_exp: "token has no exp (sign tokens with an expiry, e.g. @fastify/jwt's sign: { expiresIn: '15m' }, or set token.requireExp: false)",
  too_long_lived: 'token exp is further away than the server allows',
  no_session: 'not signed in',
  authenticate_failed: 'not signed in',
  not_token_based: 'this server signs sockets in with authenticate(), not tokens: auth frames are not accepted',
}

export function createTokenVerifier (jwt: JwtVerifier, userFromToken: (payload: Record<string, unknown>) => RoomsUser, policy: TokenPolicy): TokenVerifier {
  return async (token) => {
    let payload: unknown
    try {
      // Sync for a static secret, a promise for a key function: awaiting covers both.
      payload = await jwt.verify(token)
    } catch (err) {
      const problem = FAST_JWT_PROBLEMS[(err as { code?: string }).code ?? ''] ?? 'invalid'
      throw new TokenRejectedError(problem, PROBLEM_MESSAGES[problem])
    }
    if (typeof payload !== 'object' || payload === null) throw new TokenRejectedError('malformed', PROBLEM_MESSAGES.malformed)
    const claims = payload as Record<string, unknown>
    const user = userFromToken(claims)
    if (!isUserId(user?.id)) throw new TokenRejectedError('no_user', PROBLEM_MESSAGES.no_user)
    const nowSeconds = Date.now() / 1000
    const maxExp = nowSeconds + policy.maxLifetimeMs / 1000
    if (typeof claims.exp !== 'number') {
      if (policy.requireExp) throw new TokenRejectedError('no_exp', PROBLEM_MESSAGES.no_exp)
      return { user, exp: Math.floor(maxExp) }
    }
    if (claims.exp > maxExp) throw new TokenRejectedError('too_long_lived', PROBLEM_MESSAGES.too_long_lived)
    return { user, exp: claims.exp }
  }
}

/** For a server that admits sockets with `authenticate`: there is no token to refresh. */
export const refuseTokens: TokenVerifier = async () => {
  throw new TokenRejectedError('not_token_based', PROBLEM_MESSAGES.not_token_based)
}

/** First found wins: `Authorization: Bearer`, then the `bearer.<jwt>` subprotocol entry, then `?token=` when enabled. */
export function extractToken (request: FastifyRequest, fromQuery: boolean): string | undefined {
  const authorization = request.headers.authorization
  if (authorization !== undefined) {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization)
    if (match !== null) return match[1]
  }
  const protocols = request.headers['sec-websocket-protocol']
  if (protocols !== undefined) {
    for (const entry of protocols.split(',')) {
      const protocol = entry.trim()
      if (protocol.startsWith(BEARER_PROTOCOL_PREFIX) && protocol.length > BEARER_PROTOCOL_PREFIX.length) {
        return protocol.slice(BEARER_PROTOCOL_PREFIX.length)
      }
    }
  }
  if (!fromQuery) return undefined
  const token = (request.query as Record<string, unknown> | undefined)?.token
  return typeof token === 'string' && token.length > 0 ? token : undefined
}

// The connection limits, one rule for every way in: an upgrade, an SSE session's open, and a connection
// starting after its handshake (a limit may have filled while it was in flight).

export interface ConnectionLimits {
  maxConnections: number
  maxConnectionsPerUser: number
}

/** Why one more connection of a user may not open now (`open` on this process, `openOfUser` hers), or undefined. */
export function limitReached (limits: ConnectionLimits, open: number, openOfUser: number): 'total' | 'user' | undefined {
  if (open >= limits.maxConnections) return 'total'
  if (openOfUser >= limits.maxConnectionsPerUser) return 'user'
  return undefined
}

export const LIMIT_MESSAGES = {
  total: 'connection limit reached',
  user: 'connection limit for this user reached',
} as const

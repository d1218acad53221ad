// Messages for a user or one connection, as every many-process broker sends them (Redis pub/sub, Postgres
// NOTIFY), and how a process hands one to its delivery. A message that does not parse throws; the
// broker's listener logs and drops it.
import type { BrokerDelivery } from './broker.js'

/** User messages are JSON arrays: no user id or reason can spell a separator and reach someone else. */
export type UserMessage =
  | ['m', userId: string, frame: string]
  | ['d', userId: string, code: number, reason: string]
  | ['s', userId: string, sessionId: string, frame: string]
  | ['j' | 'l', userId: string, room: string]
  | ['jc' | 'lc', connectionId: string, room: string]

export function encodeUserMessage (message: UserMessage): string {
  return JSON.stringify(message)
}

/** Hands a user message to the delivery it is for; throws on a malformed one. */
export function deliverUserMessage (message: string, delivery: BrokerDelivery | undefined): void {
  const parts = JSON.parse(message) as unknown
  if (!Array.isArray(parts) || typeof parts[1] !== 'string') throw new Error('malformed user message')
  const [kind, userId, ...rest] = parts as [unknown, string, ...unknown[]]
  if (kind === 'm' && typeof rest[0] === 'string') return delivery?.userMessage(userId, rest[0])
  if (kind === 'd' && typeof rest[0] === 'number' && typeof rest[1] === 'string') return delivery?.userDisconnect(userId, rest[0], rest[1])
  if (kind === 's' && typeof rest[0] === 'string' && typeof rest[1] === 'string') return delivery?.sessionFrame?.(userId, rest[0], rest[1])
  // Server-side joins and leaves: `j`/`l` for a user's sockets, `jc`/`lc` for one connection (the id in place of the user's).
  if (typeof rest[0] === 'string' && (kind === 'j' || kind === 'l' || kind === 'jc' || kind === 'lc')) {
    const target = kind.length === 1 ? { userId } : { connectionId: userId }
    return delivery?.serverMembership({ action: kind[0] === 'j' ? 'join' : 'leave', room: rest[0], target })
  }
  throw new Error('malformed user message')
}

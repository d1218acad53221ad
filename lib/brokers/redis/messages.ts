// What travels on the broker's channels, and how a process reads it back. A message that does not parse
// throws; the subscriber's listener logs and drops it.
import type { BrokerDelivery } from '../broker.js'
import type { LiveEvent } from './ordered-streams.js'

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

/**
 * The fan-out message: except \n type \n seq \n epoch \n publishedAt \n frame (JSON has no raw
 * newline, so the frame is the rest). Throws on anything else.
 */
export function parseLiveEvent (message: string): LiveEvent {
  const a = message.indexOf('\n')
  const b = message.indexOf('\n', a + 1)
  const c = message.indexOf('\n', b + 1)
  const d = message.indexOf('\n', c + 1)
  const e = message.indexOf('\n', d + 1)
  const seq = Number(message.slice(b + 1, c))
  if (a === -1 || e === -1 || !Number.isInteger(seq) || seq < 1 || message.charCodeAt(e + 1) !== 0x7b) throw new Error('malformed room event message')
  return {
    except: message.slice(0, a),
    type: message.slice(a + 1, b),
    seq,
    epoch: message.slice(c + 1, d),
    publishedAt: Number(message.slice(d + 1, e)),
    frame: message.slice(e + 1),
  }
}

/** A process's presence entry (single instance) names its room and connection as a JSON pair: any room name round-trips. */
export function memberField (room: string, connectionId: string): string {
  return JSON.stringify([room, connectionId])
}

export function parseMemberField (entry: string): [room: string, connectionId: string] | undefined {
  try {
    const parsed = JSON.parse(entry) as unknown
    if (Array.isArray(parsed) && parsed.length === 2 && typeof parsed[0] === 'string' && typeof parsed[1] === 'string') return [parsed[0], parsed[1]]
  } catch {
    // Not ours: reported by the caller.
  }
  return undefined
}

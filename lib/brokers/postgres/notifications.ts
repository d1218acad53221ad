// What travels on the Postgres broker's channels. A notification is only a wake-up with what fits in it:
// readers go by seq, so a notification that never arrives (or a frame too large for one) is read from
// the events table instead. A payload that does not parse throws; the listener logs and drops it.
import type { LiveEvent } from '../ordered-streams.js'
import { EVENT_SHARDS } from './schema.js'

/** The channel of a room's events: one of EVENT_SHARDS per schema (FNV-1a of the room's UTF-16 units). */
export function eventChannel (schema: string, room: string): string {
  return `${schema}_ev_${roomShard(room)}`
}

export function roomShard (room: string): number {
  let hash = 0x811c9dc5
  for (let index = 0; index < room.length; index++) {
    hash ^= room.charCodeAt(index)
    hash = Math.imul(hash, 0x01000193)
  }
  return (hash >>> 0) % EVENT_SHARDS
}

export function usersChannel (schema: string): string {
  return `${schema}_users`
}

/** A room event notification: room \n except \n type \n seq \n epoch \n publishedAt \n frame ('' when it did not fit). */
export function parseEventNotification (payload: string): { room: string; event: LiveEvent } {
  const parts: string[] = []
  let start = 0
  for (let field = 0; field < 6; field++) {
    const end = payload.indexOf('\n', start)
    if (end === -1) throw new Error('malformed room event notification')
    parts.push(payload.slice(start, end))
    start = end + 1
  }
  const [room, except, type, seqText, epoch, publishedAt] = parts as [string, string, string, string, string, string]
  const seq = Number(seqText)
  const frame = payload.slice(start)
  if (room === '' || type === '' || epoch === '' || !Number.isInteger(seq) || seq < 1 || (frame !== '' && frame.charCodeAt(0) !== 0x7b)) {
    throw new Error('malformed room event notification')
  }
  return { room, event: { except, type, seq, epoch, publishedAt: Number(publishedAt), frame } }
}

/** A user message too large for a notification travels as `@<id>` of its row in S.messages. */
export function storedMessageId (payload: string): string | undefined {
  if (payload.charCodeAt(0) !== 0x40) return undefined
  const id = payload.slice(1)
  if (!/^[0-9]{1,19}$/.test(id)) throw new Error('malformed user message')
  return id
}

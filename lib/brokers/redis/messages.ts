// What travels on the Redis broker's room channels, and its presence entries. A message that does not
// parse throws; the subscriber's listener logs and drops it. User messages are ../user-messages.ts's.
import type { LiveEvent } from '../ordered-streams.js'

/**
 * A fan-out message: one record per event, joined by newlines, each except \n type \n publishedAt \n seq
 * \n epoch \n frame (JSON has no raw newline, so a frame ends at the next newline or the message's end).
 * Throws on anything else.
 */
export function parseLiveEvents (message: string): LiveEvent[] {
  const events: LiveEvent[] = []
  let start = 0
  do {
    const a = message.indexOf('\n', start)
    const b = message.indexOf('\n', a + 1)
    const c = message.indexOf('\n', b + 1)
    const d = message.indexOf('\n', c + 1)
    const e = message.indexOf('\n', d + 1)
    const seq = Number(message.slice(c + 1, d))
    if (a === -1 || e === -1 || !Number.isInteger(seq) || seq < 1 || message.charCodeAt(e + 1) !== 0x7b) throw new Error('malformed room event message')
    let end = message.indexOf('\n', e + 1)
    if (end === -1) end = message.length
    events.push({
      except: message.slice(start, a),
      type: message.slice(a + 1, b),
      seq,
      epoch: message.slice(d + 1, e),
      publishedAt: Number(message.slice(b + 1, c)),
      frame: message.slice(e + 1, end),
    })
    start = end + 1
  } while (start < message.length)
  return events
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

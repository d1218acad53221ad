// What travels on the Redis broker's room channels, and its presence entries. A message that does not
// parse throws; the subscriber's listener logs and drops it. User messages are ../user-messages.ts's.
import type { LiveEvent } from '../ordered-streams.js'

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

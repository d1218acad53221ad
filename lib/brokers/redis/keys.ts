// Every key and channel name of the Redis broker, under one prefix. A room's keys carry the hash tag
// `{<room>}` (one slot on a cluster); a user's the tag `{…:<length>:<id>}`, the length making it unambiguous.

export type RoomKeyKind = 'meta' | 'history' | 'presence' | 'users' | 'info' | 'idem' | 'streams' | 'ended'

export class RedisKeys {
  constructor (readonly prefix: string) {}

  room (room: string, kind: RoomKeyKind): string {
    return `${this.prefix}{${room}}:${kind}`
  }

  /** What every key of a room begins with (scripts that name a room's keys by id add the rest). */
  roomPrefix (room: string): string {
    return `${this.prefix}{${room}}:`
  }

  /** A streamed event's state (`stream:<id>`) or text (`text:<id>`). */
  stream (room: string, part: 'stream' | 'text', id: string): string {
    return `${this.roomPrefix(room)}${part}:${id}`
  }

  /** A key or channel of the whole deployment (`procs`, `users`, `rooms`, `proc:<id>`…). */
  global (name: string): string {
    return this.prefix + name
  }

  /** The answers of one user and their index share a slot. */
  answers (userId: string): string {
    return `${this.prefix}{answer:${userId.length}:${userId}}:`
  }

  /** One user's messages on a cluster. */
  userChannel (userId: string): string {
    return `${this.prefix}{user:${userId.length}:${userId}}:u`
  }

  /** A process's presence entries in a room (cluster): in the room's slot. */
  processEntries (room: string, processId: string): string {
    return `${this.prefix}{${room}}:proc:${processId}`
  }
}

/** A literal for a SCAN MATCH pattern. */
export function globEscape (text: string): string {
  return text.replace(/[*?[\]\\]/g, '\\$&')
}

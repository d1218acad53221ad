// Namespaces: the rooms named `<name>:…` take their namespace's options (history, presence, maxMembers,
// authorizeJoin, latestOnJoin) over the top-level ones. Checked at register, like every option.
import { InvalidOptionError } from './errors.js'
import type { RoomsUser } from '../types.js'

/** What rooms named `<namespace>:…` get instead of the top-level options. */
export interface NamespaceOptions {
  /** `{ maxEvents, maxAgeMs }`, or false: no history (and no Redis stream); a resume that missed events gets `reset`. */
  history?: { maxEvents: number; maxAgeMs: number } | false
  /** true (events and member lists), false (none), or 'count': throttled `{ action: 'count', count }` events and `count` in the join ack. */
  presence?: boolean | 'count'
  /** Users a room may hold; a client join or resume past it gets `room_full`. */
  maxMembers?: number
  /** Replaces the top-level authorizeJoin for these rooms. */
  authorizeJoin?: (user: RoomsUser, room: string) => boolean | Promise<boolean>
  /** The join ack is followed by the room's latest event (a ticker's price, a document's state). */
  latestOnJoin?: boolean
}

/** How one room behaves: its namespace's options over the top-level ones. */
export interface RoomPolicy {
  history: { maxEvents: number; maxAgeMs: number }
  presence: boolean | 'count'
  maxMembers: number
  authorizeJoin: ((user: RoomsUser, room: string) => boolean | Promise<boolean>) | undefined
  latestOnJoin: boolean
}

function fail (option: string, problem: string): never {
  throw new InvalidOptionError(option, problem)
}

const NAMESPACE_NAME = /^[A-Za-z0-9_.-]{1,64}$/
const NAMESPACE_KEYS = new Set(['history', 'presence', 'maxMembers', 'authorizeJoin', 'latestOnJoin'])

/** The namespaces' policies, checked; a room's namespace is the part of its name before the first ':'. */
export function namespacePolicies (namespaces: unknown, base: RoomPolicy): (room: string) => RoomPolicy {
  if (namespaces === undefined) return () => base
  if (typeof namespaces !== 'object' || namespaces === null || Array.isArray(namespaces)) fail('namespaces', 'must be an object of { [name]: options }')
  const policies = new Map<string, RoomPolicy>()
  for (const [name, raw] of Object.entries(namespaces)) {
    const option = `namespaces.${name}`
    if (!NAMESPACE_NAME.test(name)) fail(option, 'has a name that is not 1 to 64 of [A-Za-z0-9_.-] (rooms "<name>:…" belong to it)')
    if (typeof raw !== 'object' || raw === null) fail(option, 'must be an object')
    const entries = raw as Record<string, unknown>
    for (const key of Object.keys(entries)) if (!NAMESPACE_KEYS.has(key)) fail(`${option}.${key}`, 'is not a namespace option')
    const { history, presence, maxMembers, authorizeJoin, latestOnJoin } = entries
    const policy: RoomPolicy = { ...base }
    if (history === false) policy.history = { maxEvents: 0, maxAgeMs: base.history.maxAgeMs }
    else if (history !== undefined) {
      const limits = history as Record<string, unknown>
      if (typeof history !== 'object' || history === null || !isNonNegativeInteger(limits.maxEvents) || !isNonNegativeInteger(limits.maxAgeMs) || Object.keys(limits).length !== 2) {
        fail(`${option}.history`, 'must be { maxEvents, maxAgeMs } (integers >= 0) or false')
      }
      policy.history = { maxEvents: limits.maxEvents as number, maxAgeMs: limits.maxAgeMs as number }
    }
    if (presence !== undefined) {
      if (presence !== true && presence !== false && presence !== 'count') fail(`${option}.presence`, "must be true, false or 'count'")
      policy.presence = presence
    }
    if (maxMembers !== undefined) {
      if (!Number.isInteger(maxMembers) || (maxMembers as number) < 1) fail(`${option}.maxMembers`, 'must be an integer >= 1')
      policy.maxMembers = maxMembers as number
    }
    if (authorizeJoin !== undefined) {
      if (typeof authorizeJoin !== 'function') fail(`${option}.authorizeJoin`, 'must be a function')
      policy.authorizeJoin = authorizeJoin as RoomPolicy['authorizeJoin']
    }
    if (latestOnJoin !== undefined) {
      if (typeof latestOnJoin !== 'boolean') fail(`${option}.latestOnJoin`, 'must be a boolean')
      if (latestOnJoin && policy.history.maxEvents === 0) fail(`${option}.latestOnJoin`, 'needs history (maxEvents >= 1): the latest event comes from it')
      policy.latestOnJoin = latestOnJoin
    }
    policies.set(name, policy)
  }
  return (room) => {
    const colon = room.indexOf(':')
    return (colon > 0 ? policies.get(room.slice(0, colon)) : undefined) ?? base
  }
}

function isNonNegativeInteger (value: unknown): boolean {
  return Number.isInteger(value) && (value as number) >= 0
}

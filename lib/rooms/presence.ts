// Presence: who is in a room and how they are shown (members with their presence data), and the
// `presence` room events — join and leave in the order they happened for each user and room (never before
// the joiner's own ack), or throttled counts for 'count' rooms.
import { newTraceId } from '../protocol/trace-context.js'
import type { FastifyBaseLogger } from 'fastify'
import type { EventBroker, PresenceBroker, PresenceSample } from '../brokers/broker.js'
import { isBrokerError } from '../config/errors.js'
import type { Connection } from '../socket/connection.js'
import type { RoomPolicy } from '../config/namespaces.js'
import type { RoomMember, RoomsUser } from '../types.js'

/** A user's presence data is public and sent with every join: small by design. */
const MAX_PRESENCE_INFO_BYTES = 1024
/** At most one member count event per room in this interval, from each process. */
const COUNT_INTERVAL_MS = 1000

export class Presence {
  /** (room, user) → the last of that user's announcements there. */
  private readonly tails = new Map<string, Promise<void>>()
  /** Count rooms: when each last published, and the trailing publish waiting out the interval. */
  private readonly counts = new Map<string, { at: number; timer: NodeJS.Timeout | undefined }>()

  constructor (
    private readonly roomPolicy: (room: string) => RoomPolicy,
    private readonly presenceInfo: ((user: RoomsUser) => Record<string, unknown> | undefined) | undefined,
    // Presence is stored in the broker's presence part and announced as room events.
    private readonly broker: PresenceBroker & Pick<EventBroker, 'publish'>,
    private readonly log: FastifyBaseLogger
  ) {}

  /** The users present, with their presence data. */
  async members (room: string): Promise<RoomMember[]> {
    const [ids, infos] = await Promise.all([this.broker.presence(room), this.broker.presenceInfo?.(room) ?? Promise.resolve({} as Record<string, string>)])
    return ids.map((id) => {
      const info = infos[id]
      return info === undefined ? { id } : { id, info: JSON.parse(info) as Record<string, unknown> }
    })
  }

  /** How many users are present: one read, whatever the room's size. */
  async count (room: string): Promise<number> {
    if (this.broker.presenceCount !== undefined) return this.broker.presenceCount(room)
    return (await this.broker.presence(room)).length
  }

  async isPresent (room: string, userId: string): Promise<boolean> {
    return this.broker.isPresent === undefined ? (await this.broker.presence(room)).includes(userId) : this.broker.isPresent(room, userId)
  }

  /**
   * At most `limit` members, within `maxBytes` of JSON, and how many there are: what a join answers with, so
   * that a joiner of a room of any size gets an ack its send buffer can hold.
   */
  async sample (room: string, limit: number, maxBytes: number): Promise<{ members: RoomMember[]; total: number }> {
    let sample: PresenceSample
    if (this.broker.presenceSample !== undefined) {
      sample = await this.broker.presenceSample(room, limit)
    } else {
      const [ids, info] = await Promise.all([this.broker.presence(room), this.broker.presenceInfo?.(room) ?? Promise.resolve({} as Record<string, string>)])
      sample = { total: ids.length, ids: ids.slice(0, limit), info }
    }
    const members: RoomMember[] = []
    let bytes = 0
    for (const id of sample.ids) {
      const info = sample.info[id]
      bytes += id.length * 3 + 16 + (info === undefined ? 0 : info.length * 3)
      if (bytes > maxBytes) break
      members.push(info === undefined ? { id } : { id, info: JSON.parse(info) as Record<string, unknown> })
    }
    return { members, total: sample.total }
  }

  /** The user's presence data as JSON, bounded; a host function that throws or returns too much is logged, not fatal. */
  infoOf (connection: Connection): string | undefined {
    const presenceInfo = this.presenceInfo
    if (presenceInfo === undefined) return undefined
    try {
      const info = presenceInfo(connection.user)
      if (info === undefined || info === null) return undefined
      const json = JSON.stringify(info)
      if (typeof info !== 'object' || json === undefined) throw new TypeError('presenceInfo must return an object')
      if (Buffer.byteLength(json) > MAX_PRESENCE_INFO_BYTES) {
        connection.log.warn({ bytes: Buffer.byteLength(json) }, `fastify-rooms: presenceInfo over ${MAX_PRESENCE_INFO_BYTES} bytes; left out`)
        return undefined
      }
      return json
    } catch (err) {
      connection.log.warn({ err }, 'fastify-rooms: presenceInfo failed; left out')
      return undefined
    }
  }

  /**
   * Publishes a presence change after the user's earlier ones in that room (and, for a join, after
   * `after`: the joiner's ack). Never rejects: a failure is logged.
   */
  announce (room: string, userId: string, action: 'join' | 'leave', after?: Promise<void>, info?: string): Promise<void> {
    // Room names and user ids hold no control characters: NUL cannot be part of either.
    const key = `${room}\u0000${userId}`
    const previous = this.tails.get(key)
    const tail = (async () => {
      await previous
      await after
      // info is JSON already (checked and bounded by membership.ts): spliced in, not parsed again.
      const user = info === undefined ? JSON.stringify({ id: userId }) : `{"id":${JSON.stringify(userId)},"info":${info}}`
      await this.broker.publish({ room, type: 'presence', payloadJson: `{"action":"${action}","user":${user}}`, traceId: newTraceId() })
    })().catch((err: unknown) => {
      if (isBrokerError(err)) this.log.warn({ err, room, action }, 'fastify-rooms: presence announcement failed: broker unavailable')
      else this.log.error({ err, room, action }, 'fastify-rooms: presence announcement failed')
    })
    this.tails.set(key, tail)
    void tail.finally(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key)
    })
    return tail
  }

  /** A user's presence in the room changed: announced as its room's presence option says. */
  changed (room: string, userId: string, action: 'join' | 'leave'): void {
    const { presence } = this.roomPolicy(room)
    if (presence === true) void this.announce(room, userId, action)
    else if (presence === 'count') this.countChanged(room)
  }

  /**
   * A 'count' room's membership changed: `{ action: 'count', count }` is published now, or at the end of
   * the current interval (one trailing event for all the changes meanwhile).
   */
  countChanged (room: string): void {
    const now = Date.now()
    const state = this.counts.get(room)
    if (state?.timer !== undefined) return
    const wait = state === undefined ? 0 : Math.max(0, state.at + COUNT_INTERVAL_MS - now)
    const publish = () => {
      this.counts.set(room, { at: Date.now(), timer: undefined })
      void this.publishCount(room)
    }
    if (wait === 0) return publish()
    const timer = setTimeout(publish, wait)
    timer.unref()
    this.counts.set(room, { at: state!.at, timer })
  }

  private async publishCount (room: string): Promise<void> {
    try {
      const count = await this.count(room)
      await this.broker.publish({ room, type: 'presence', payloadJson: JSON.stringify({ action: 'count', count }), traceId: newTraceId() })
    } catch (err) {
      if (isBrokerError(err)) this.log.warn({ err, room }, 'fastify-rooms: presence count failed: broker unavailable')
      else this.log.error({ err, room }, 'fastify-rooms: presence count failed')
    }
    // Forget quiet rooms: the map holds rooms changing within the last interval only.
    setTimeout(() => {
      const state = this.counts.get(room)
      if (state !== undefined && state.timer === undefined && Date.now() - state.at >= COUNT_INTERVAL_MS) this.counts.delete(room)
    }, COUNT_INTERVAL_MS).unref()
  }

  /** At shutdown: trailing count events are not published. */
  stop (): void {
    for (const state of this.counts.values()) clearTimeout(state.timer)
    this.counts.clear()
  }
}

// Presence announcements: the `presence` room events (join, leave), published in the order they happened
// for each user and room, and never before the joiner's own ack.
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import type { Broker } from './brokers/broker.js'
import { isBrokerError } from './errors.js'

export class Presence {
  /** (room, user) → the last of that user's announcements there. */
  private readonly tails = new Map<string, Promise<void>>()

  constructor (private readonly enabled: boolean, private readonly broker: Broker, private readonly log: FastifyBaseLogger) {}

  /**
   * Publishes a presence change after the user's earlier ones in that room (and, for a join, after
   * `after`: the joiner's ack). Never rejects: a failure is logged.
   */
  announce (room: string, userId: string, action: 'join' | 'leave', after?: Promise<void>): Promise<void> {
    // Room names and user ids hold no control characters: NUL cannot be part of either.
    const key = `${room}\u0000${userId}`
    const previous = this.tails.get(key)
    const tail = (async () => {
      await previous
      await after
      await this.broker.publish({ room, type: 'presence', payloadJson: JSON.stringify({ action, user: { id: userId } }), traceId: randomUUID() })
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

  /** Presence changed without a local join or leave (a dead process's members removed, or this process's restored). */
  changed (room: string, userId: string, action: 'join' | 'leave'): void {
    if (this.enabled) void this.announce(room, userId, action)
  }
}

// What the campaign asks of every subscriber, raw-protocol or the package's client, on any transport.
import type { SubscriberHistory } from './history.js'

export interface Subscriber {
  readonly history: SubscriberHistory
  /** Proxy ports of the server processes; `server` picks the one used on the next connection. */
  server: number
  start(): void
  join(room: string): void
  leave(room: string): void
  say(room: string): void
  talk(room: string, count: number): void
  /** Stops reading its socket for `ms` (a slow reader). */
  slow(ms: number): void
  /** Drops its connection; it reconnects (to `server`) and resumes. */
  drop(): void
  /** Whether it is connected with every room it wants joined. */
  settled(): boolean
  /** The rooms it wants and has joined. */
  joinedRooms(): string[]
  /** The last seq it holds for a room (what it would resume from). */
  position(room: string): { seq: number; epoch: string } | undefined
  stop(): void
}

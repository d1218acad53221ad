// The package's client as a campaign subscriber, on WebSocket or on the SSE fallback, as an app uses it:
// events through `on`, requests through `request`.
import WebSocket from 'ws'
import { createClient, isStreamed, type EventFrame, type RoomsClient, type StreamedEvent } from '../lib/client/index.js'
import { NodeEventSource } from '../test/helpers/event-source.js'
import type { Publish, SubscriberHistory } from './history.js'
import { CHAOS_ORIGIN, sign } from './protocol.js'
import type { Subscriber } from './subscriber.js'

/** ws with the Origin a browser would send. */
class OriginWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: CHAOS_ORIGIN })
  }
}

/** The package's client, as an app uses it: events through `on`, requests through `request`. */
export class ClientSubscriber implements Subscriber {
  readonly history: SubscriberHistory
  server = 0
  private client: RoomsClient | undefined
  private readonly wanted = new Set<string>()
  private readonly joined = new Set<string>()
  /** room → the seq of its last join (its own or the server's): open streams handed over are at or before it. */
  private readonly handedUpTo = new Map<string, number>()
  private readonly transport: 'websocket' | 'sse'

  constructor (name: string, transport: 'ws' | 'sse', private readonly ports: () => number[], private readonly publishes: Publish[], private readonly now: () => number) {
    this.transport = transport === 'ws' ? 'websocket' : 'sse'
    this.history = { name, user: name, kind: transport === 'ws' ? 'client-ws' : 'client-sse', seen: [], requests: [], finalRooms: [], connected: false }
  }

  start (): void {
    const chosen = () => this.ports()[this.server % this.ports().length]!
    // The proxy is chosen per connection attempt: a client moved to another process follows `server`.
    class Routed extends OriginWebSocket {
      constructor (url: string, protocols?: string | string[]) {
        super(url.replace(/:\d+\//, `:${chosen()}/`), protocols)
      }
    }
    const client = createClient({
      url: `ws://127.0.0.1:${chosen()}/ws`,
      getToken: () => sign(this.history.user),
      WebSocket: Routed,
      EventSource: NodeEventSource,
      transport: this.transport,
      backoff: { initialMs: 50, maxMs: 500 },
      heartbeatMs: 2000,
      pongTimeoutMs: 4000,
    })
    this.client = client
    for (const type of ['news', 'said', 'talk', 'presence']) {
      client.on(type, (frame: EventFrame<{ pid?: string }> | StreamedEvent<{ pid?: string }>) => {
        // An open streamed event a join handed over (at or before its seq) is not a delivery.
        const room = frame.room!
        const seq = frame.seq!
        const upTo = this.handedUpTo.get(room)
        const handed = isStreamed(frame) && upTo !== undefined && seq <= upTo
        // Handovers come before the room's next events: past them, a seq is a delivery again.
        if (upTo !== undefined && seq > upTo) this.handedUpTo.delete(room)
        const streamed = isStreamed(frame) ? frame : undefined
        const stream = streamed === undefined ? undefined : { id: streamed.id, state: streamed.state, text: streamed.text, count: (streamed.payload as { count?: number }).count ?? 0 }
        this.history.seen.push({ at: this.now(), conn: 0, k: 'event', room, seq, type, ...(typeof frame.payload?.pid === 'string' ? { pid: frame.payload.pid } : {}), ...(handed ? { snapshot: true as const } : {}), ...(stream === undefined ? {} : { stream }) })
        // The client assembles the text itself: what it ends with is recorded as one append after what the
        // event carried, so the checker compares the finished text with what was streamed.
        if (streamed !== undefined && stream!.state === 'streaming') {
          const from = stream!.text.length
          streamed.on('end', (state) => this.history.seen.push({ at: this.now(), conn: 0, k: 'append', room, seq, id: streamed.id, offset: from, text: streamed.text.slice(from), state }))
        }
      })
    }
    client.on('joined', (frame) => {
      // A room it follows in the same epoch keeps the client's own position (its resume fills the rest);
      // otherwise the client starts the room at the frame's position: a join, as the checker counts them.
      const held = client.position(frame.room!)
      const adopted = held?.seq === frame.payload.seq && held.epoch === frame.payload.epoch
      if (this.joined.has(frame.room!) && !adopted) return
      this.wanted.add(frame.room!)
      this.joined.add(frame.room!)
      this.handedUpTo.set(frame.room!, frame.payload.seq)
      this.history.seen.push({ at: this.now(), conn: 0, k: 'joined', room: frame.room!, seq: frame.payload.seq, epoch: frame.payload.epoch })
    })
    // A room the server refused on a resume is dropped by the client (and the error names it): left.
    client.on('error', (err) => {
      const room = err.room
      if (room === undefined || !this.joined.has(room) || client.rooms.includes(room)) return
      this.joined.delete(room)
      this.wanted.delete(room)
      this.history.seen.push({ at: this.now(), conn: 0, k: 'left', room })
    })
    client.on('reset', (reset) => {
      this.handedUpTo.delete(reset.room)
      this.history.seen.push({ at: this.now(), conn: 0, k: 'reset', room: reset.room, seq: reset.seq, epoch: reset.epoch })
    })
  }

  join (room: string): void {
    if (this.client === undefined || this.wanted.has(room)) return
    this.wanted.add(room)
    const sentIndex = this.history.seen.length
    this.client!.join(room).then((ack) => {
      if (!this.wanted.has(room) || this.joined.has(room)) return
      this.joined.add(room)
      // The ack's open streams may be handed to the app after this continuation: marked when they come.
      this.handedUpTo.set(room, ack.seq)
      // Events that followed the ack may have been handed out before this continuation ran: the join goes first.
      const seen = this.history.seen
      let index = seen.length
      for (let i = sentIndex; i < seen.length; i++) {
        const record = seen[i]!
        if ('room' in record && record.room === room) { index = i; break }
      }
      seen.splice(index, 0, { at: index < seen.length ? seen[index]!.at : this.now(), conn: 0, k: 'joined', room, seq: ack.seq, epoch: ack.epoch })
      // The room's open streamed events come with the ack, at or before its seq: handed over, not delivered.
      for (let i = index + 1; i < seen.length; i++) {
        const record = seen[i]!
        if (record.k === 'event' && record.room === room && record.seq <= ack.seq) record.snapshot = true
      }
    }, () => {
      this.wanted.delete(room)
    })
  }

  leave (room: string): void {
    if (this.client === undefined || !this.joined.has(room)) return
    this.wanted.delete(room)
    this.joined.delete(room)
    this.history.seen.push({ at: this.now(), conn: 0, k: 'left', room })
    this.client!.leave(room).catch(() => {})
  }

  say (room: string): void {
    if (this.client === undefined || !this.joined.has(room)) return
    const pid = `${this.history.name}-say-${this.history.requests.length + 1}`
    const publish: Publish = { pid, room, sentAt: this.now(), answeredAt: 0, outcome: 'failed' }
    this.history.requests.push({ id: pid, room, at: publish.sentAt })
    this.client!.request('say', { pid }, { room, timeoutMs: 20_000 }).then((result: { seq: number }) => {
      publish.outcome = 'acked'
      publish.seq = result.seq
    }, () => {}).finally(() => {
      publish.answeredAt = this.now()
      this.publishes.push(publish)
      // An answer, as the checker counts them (the client's own ids are its business).
      this.history.seen.push({ at: publish.answeredAt, conn: 0, k: 'answer', id: pid, ok: publish.outcome === 'acked' })
    })
  }

  talk (): void {}

  slow (): void {}

  drop (): void {
    // The client reconnects by itself; a cut proxy is how its connection drops.
  }

  settled (): boolean {
    const client = this.client
    return client !== undefined && client.state === 'open' && [...this.wanted].every((room) => this.joined.has(room) && client.position(room) !== undefined)
  }

  position (room: string): { seq: number; epoch: string } | undefined {
    return this.client?.position(room) ?? undefined
  }

  joinedRooms (): string[] {
    return [...this.joined]
  }

  stop (): void {
    if (this.client === undefined) return
    this.history.connected = this.settled()
    this.history.finalRooms = this.joinedRooms()
    this.client.close()
    this.client = undefined
  }
}

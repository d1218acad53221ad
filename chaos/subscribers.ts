// The campaign's subscribers: raw-protocol WebSocket clients (our own code of the wire protocol: resume
// with positions and open streams, re-send unanswered requests with the same id, no dedupe), and the
// package's client on WebSocket and on the SSE fallback. Each records what it saw for the checker.
import WebSocket from 'ws'
import { createClient, type RoomsClient } from '../lib/client/index.js'
import { NodeEventSource } from '../test/helpers/event-source.js'
import type { Publish, Seen, SubscriberHistory } from './history.js'
import { CHAOS_ORIGIN, sign } from './protocol.js'

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
  stop(): void
}

type Position = { seq: number; epoch: string }

/** Our own implementation of the protocol, strict and without dedupe: what a third-party client does. */
export class RawSubscriber implements Subscriber {
  readonly history: SubscriberHistory
  server = 0
  private ws: WebSocket | undefined
  private conn = 0
  private stopped = false
  private readonly wanted = new Set<string>()
  private readonly positions = new Map<string, Position>()
  /** room → stream id → length held. */
  private readonly streams = new Map<string, Map<string, number>>()
  private readonly pendingJoins = new Map<string, string>()
  private readonly requests = new Map<string, { frame: Record<string, unknown>; publish?: Publish }>()
  private resumeId: string | undefined
  private nextId = 0
  private welcomed = false
  private retryTimer: NodeJS.Timeout | undefined

  constructor (name: string, private readonly ports: () => number[], private readonly publishes: Publish[], private readonly now: () => number) {
    this.history = { name, user: name, kind: 'raw-ws', seen: [], requests: [], finalRooms: [], connected: false }
  }

  private record (seen: Seen): void {
    this.history.seen.push(seen)
  }

  start (): void {
    const port = this.ports()[this.server % this.ports().length]!
    const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, ['rooms.v1'], { headers: { authorization: `Bearer ${sign(this.history.user)}` }, origin: CHAOS_ORIGIN, perMessageDeflate: false, handshakeTimeout: 5000 })
    this.ws = ws
    const conn = ++this.conn
    this.welcomed = false
    ws.on('message', (data) => {
      try {
        this.onFrame(conn, JSON.parse(data.toString()))
      } catch (err) {
        this.record({ at: this.now(), conn, k: 'answer', id: '(unparsable frame)', ok: false, code: String(err) })
      }
    })
    ws.on('error', () => {})
    ws.on('close', (code) => {
      if (this.ws !== ws) return
      this.ws = undefined
      this.welcomed = false
      this.resumeId = undefined
      this.pendingJoins.clear()
      this.record({ at: this.now(), conn, k: 'closed', code })
      if (!this.stopped) setTimeout(() => { if (!this.stopped && this.ws === undefined) this.start() }, 30 + Math.floor(Math.random() * 200)).unref()
    })
  }

  /** False when there is no welcomed connection: what was not sent goes with the next one's resume. */
  private send (frame: Record<string, unknown>): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN || !this.welcomed) return false
    this.ws.send(JSON.stringify(frame))
    return true
  }

  private id (kind: string): string {
    return `${this.history.name}-${kind}-${++this.nextId}`
  }

  private onFrame (conn: number, frame: { type: string; id?: string; room?: string; seq?: number; payload?: any; stream?: any; offset?: number; text?: string; state?: string }): void {
    const at = this.now()
    if (frame.type === 'welcome') {
      this.welcomed = true
      this.resume()
      return
    }
    if (frame.type === 'ack' || frame.type === 'error') return this.onAnswer(conn, at, frame)
    if (frame.type === 'pong') return
    if (frame.type === 'reset') {
      this.record({ at, conn, k: 'reset', room: frame.room!, seq: frame.payload.seq, epoch: frame.payload.epoch })
      this.positions.set(frame.room!, { seq: frame.payload.seq, epoch: frame.payload.epoch })
      this.streams.delete(frame.room!)
      return
    }
    if (frame.type === 'left') {
      this.record({ at, conn, k: 'left', room: frame.room! })
      this.positions.delete(frame.room!)
      return
    }
    if (frame.type === 'append') {
      this.record({ at, conn, k: 'append', room: frame.room!, seq: frame.seq!, id: (frame as { id: string }).id, offset: frame.offset!, text: frame.text!, ...(frame.state === undefined ? {} : { state: frame.state }) })
      const open = this.streams.get(frame.room!)
      if (open?.has((frame as { id: string }).id)) {
        if (frame.state === undefined) open.set((frame as { id: string }).id, frame.offset! + frame.text!.length)
        else open.delete((frame as { id: string }).id)
      }
      return
    }
    if (typeof frame.room === 'string' && typeof frame.seq === 'number') {
      const stream = frame.stream === undefined ? undefined : { id: frame.stream.id, state: frame.stream.state, text: frame.stream.text, count: frame.payload?.count ?? 0 }
      this.record({ at, conn, k: 'event', room: frame.room, seq: frame.seq, type: frame.type, ...(typeof frame.payload?.pid === 'string' ? { pid: frame.payload.pid } : {}), ...(stream === undefined ? {} : { stream }) })
      const position = this.positions.get(frame.room)
      if (position !== undefined) position.seq = frame.seq
      if (stream?.state === 'streaming') {
        let open = this.streams.get(frame.room)
        if (open === undefined) this.streams.set(frame.room, open = new Map())
        open.set(stream.id, stream.text.length)
      }
    }
  }

  /** The first frame of every connection: resume the rooms it has positions for, then join the rest. */
  private resume (): void {
    const rooms: Record<string, unknown> = {}
    for (const [room, position] of this.positions) {
      const open = this.streams.get(room)
      const streams = open === undefined || open.size === 0 ? undefined : Object.fromEntries([...open].slice(0, 16))
      rooms[room] = streams === undefined ? { ...position } : { ...position, streams }
    }
    if (Object.keys(rooms).length > 0) {
      this.resumeId = this.id('resume')
      this.send({ type: 'resume', id: this.resumeId, payload: { rooms } })
    } else {
      this.afterResume()
    }
  }

  private afterResume (): void {
    this.resumeId = undefined
    for (const room of this.wanted) if (!this.positions.has(room)) this.sendJoin(room)
    for (const request of this.requests.values()) this.send(request.frame)
  }

  private sendJoin (room: string): void {
    if ([...this.pendingJoins.values()].includes(room)) return
    const id = this.id('join')
    if (this.send({ type: 'join', id, room })) this.pendingJoins.set(id, room)
  }

  private onAnswer (conn: number, at: number, frame: { type: string; id?: string; payload?: any }): void {
    const id = frame.id
    if (id === undefined) return
    if (id === this.resumeId) {
      if (frame.type === 'error') {
        // The whole resume was refused (Redis away): try again on this connection shortly.
        this.retryLater(() => { if (this.resumeId === id) this.resume() })
        return
      }
      for (const [room, outcome] of Object.entries(frame.payload.rooms as Record<string, { result: string; seq?: number; epoch?: string }>)) {
        this.record({ at, conn, k: 'resumed', room, result: outcome.result, ...(outcome.seq === undefined ? {} : { seq: outcome.seq }), ...(outcome.epoch === undefined ? {} : { epoch: outcome.epoch }) })
        if (outcome.result === 'error') {
          this.positions.delete(room)
          this.streams.delete(room)
        } else {
          this.positions.set(room, { seq: outcome.seq!, epoch: outcome.epoch! })
        }
      }
      this.afterResume()
      return
    }
    const joining = this.pendingJoins.get(id)
    if (joining !== undefined) {
      this.pendingJoins.delete(id)
      if (frame.type === 'ack' && this.wanted.has(joining)) {
        this.record({ at, conn, k: 'joined', room: joining, seq: frame.payload.seq, epoch: frame.payload.epoch })
        this.positions.set(joining, { seq: frame.payload.seq, epoch: frame.payload.epoch })
        for (const stream of frame.payload.streams ?? []) {
          this.record({ at, conn, k: 'event', room: joining, seq: stream.seq, type: stream.type, snapshot: true, stream: { id: stream.stream.id, state: stream.stream.state, text: stream.stream.text, count: stream.payload?.count ?? 0 } })
        }
      } else if (frame.type === 'ack') {
        // Left while the join was on its way: leave again.
        this.send({ type: 'leave', id: this.id('leave'), room: joining })
      } else {
        this.retryLater(() => { if (this.wanted.has(joining) && !this.positions.has(joining)) this.sendJoin(joining) })
      }
      return
    }
    if (id.includes('-leave-')) {
      if (frame.type === 'ack') this.record({ at, conn, k: 'left', room: frame.payload.room })
      return
    }
    const request = this.requests.get(id)
    if (request === undefined) {
      this.record({ at, conn, k: 'answer', id, ok: frame.type === 'ack', ...(frame.type === 'error' ? { code: frame.payload.code } : {}) })
      return
    }
    this.requests.delete(id)
    this.record({ at, conn, k: 'answer', id, ok: frame.type === 'ack', ...(frame.type === 'error' ? { code: frame.payload.code } : {}) })
    if (request.publish !== undefined) {
      request.publish.answeredAt = at
      if (frame.type === 'ack') {
        request.publish.outcome = 'acked'
        request.publish.seq = frame.payload.seq
      }
      this.publishes.push(request.publish)
    }
  }

  private retryLater (fn: () => void): void {
    if (this.retryTimer !== undefined) return
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      if (!this.stopped) fn()
    }, 300).unref()
  }

  join (room: string): void {
    this.wanted.add(room)
    if (this.resumeId === undefined && !this.positions.has(room)) this.sendJoin(room)
  }

  leave (room: string): void {
    if (!this.wanted.delete(room)) return
    const known = this.positions.delete(room)
    this.streams.delete(room)
    // Offline, the room is simply not resumed: it is left from now on.
    if (known && !this.send({ type: 'leave', id: this.id('leave'), room })) this.record({ at: this.now(), conn: this.conn, k: 'left', room })
  }

  say (room: string): void {
    if (!this.positions.has(room)) return
    const id = this.id('say')
    const pid = `${id}`
    const frame = { type: 'say', id, room, payload: { pid } }
    const at = this.now()
    this.requests.set(id, { frame, publish: { pid, room, sentAt: at, answeredAt: 0, outcome: 'failed' } })
    this.history.requests.push({ id, room, at })
    if (this.resumeId === undefined) this.send(frame)
  }

  talk (room: string, count: number): void {
    if (!this.positions.has(room)) return
    const id = this.id('talk')
    const frame = { type: 'talk', id, room, payload: { count } }
    this.requests.set(id, { frame })
    this.history.requests.push({ id, room, at: this.now() })
    if (this.resumeId === undefined) this.send(frame)
  }

  slow (ms: number): void {
    const socket = (this.ws as unknown as { _socket?: { pause(): void; resume(): void } | null } | undefined)?._socket
    if (socket === undefined || socket === null) return
    socket.pause()
    setTimeout(() => socket.resume(), ms).unref()
  }

  drop (): void {
    this.ws?.terminate()
  }

  settled (): boolean {
    return this.ws?.readyState === WebSocket.OPEN && this.welcomed && this.resumeId === undefined &&
      [...this.wanted].every((room) => this.positions.has(room)) && this.requests.size === 0
  }

  joinedRooms (): string[] {
    return [...this.wanted].filter((room) => this.positions.has(room))
  }

  stop (): void {
    if (this.stopped) return
    this.history.connected = this.settled()
    this.history.finalRooms = this.joinedRooms()
    this.stopped = true
    clearTimeout(this.retryTimer)
    this.ws?.terminate()
  }
}

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
      client.on(type, (frame: { room?: string; seq?: number; payload?: { pid?: string } }) => {
        this.history.seen.push({ at: this.now(), conn: 0, k: 'event', room: frame.room!, seq: frame.seq!, type, ...(typeof frame.payload?.pid === 'string' ? { pid: frame.payload.pid } : {}) })
      })
    }
    client.on('reset', (reset) => this.history.seen.push({ at: this.now(), conn: 0, k: 'reset', room: reset.room, seq: reset.seq, epoch: reset.epoch }))
  }

  join (room: string): void {
    if (this.client === undefined || this.wanted.has(room)) return
    this.wanted.add(room)
    const sentIndex = this.history.seen.length
    this.client!.join(room).then((ack) => {
      if (!this.wanted.has(room)) return
      this.joined.add(room)
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

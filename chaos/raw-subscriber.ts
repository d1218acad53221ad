// Past 300 lines: the whole client side of the wire protocol that a third party would write (join, leave,
// resume with positions and open streams, re-sent requests, answers) in one class, as one state machine.
//
// A raw-protocol subscriber: our own code of the wire protocol (resume with positions and open streams,
// re-send unanswered requests with the same id, no dedupe), recording everything it sees for the checker.
import type { Publish, Seen, SubscriberHistory } from './history.js'
import type { Subscriber } from './subscriber.js'

type Position = { seq: number; epoch: string }

/**
 * Our own implementation of the protocol, strict and without dedupe: what a third-party client does. The
 * transport (a WebSocket, or the SSE fallback's stream and POSTs) is the subclass's.
 */
export abstract class RawSubscriber implements Subscriber {
  readonly history: SubscriberHistory
  server = 0
  protected conn = 0
  protected stopped = false
  private readonly wanted = new Set<string>()
  private readonly positions = new Map<string, Position>()
  /** room → stream id → length held. */
  private readonly streams = new Map<string, Map<string, number>>()
  private readonly pendingJoins = new Map<string, string>()
  /** Leave request id → room. */
  private readonly pendingLeaves = new Map<string, string>()
  private readonly requests = new Map<string, { frame: Record<string, unknown>; publish?: Publish }>()
  protected resumeId: string | undefined
  private nextId = 0
  protected welcomed = false
  private retryTimer: NodeJS.Timeout | undefined
  private readonly retries: Array<() => void> = []

  constructor (name: string, kind: SubscriberHistory['kind'], protected readonly ports: () => number[], private readonly publishes: Publish[], protected readonly now: () => number) {
    this.history = { name, user: name, kind, seen: [], requests: [], finalRooms: [], connected: false }
  }

  protected record (seen: Seen): void {
    this.history.seen.push(seen)
  }

  /** Opens a connection (to `port()`); its frames go to `onFrame`, its end to `onClosed`. */
  abstract start (): void
  /** Writes a frame on the welcomed connection; false when there is none. */
  protected abstract write (frame: Record<string, unknown>): boolean
  /** Whether the connection is open and welcomed. */
  protected abstract get open (): boolean
  /** Resumes the rooms it holds positions for, as the transport does it, once welcomed. */
  protected abstract resumeOnWelcome (): void
  abstract slow (ms: number): void
  abstract drop (): void
  /** Ends the connection for good. */
  protected abstract end (): void
  /** Whether the server resumes what the last event id names, whatever this client holds (SSE). */
  protected readonly resumesFromLastEventId: boolean = false

  protected hasPositions (): boolean {
    return this.positions.size > 0
  }

  protected port (): number {
    return this.ports()[this.server % this.ports().length]!
  }

  /** A connection ended: recorded, and another one opened shortly unless stopped. */
  protected onClosed (conn: number, code: number): void {
    this.welcomed = false
    this.resumeId = undefined
    this.pendingJoins.clear()
    this.pendingLeaves.clear()
    this.record({ at: this.now(), conn, k: 'closed', code })
    if (!this.stopped) setTimeout(() => { if (!this.stopped && !this.open) this.start() }, 30 + Math.floor(Math.random() * 200)).unref()
  }

  protected onText (conn: number, text: string): void {
    try {
      this.onFrame(conn, JSON.parse(text))
    } catch (err) {
      this.record({ at: this.now(), conn, k: 'answer', id: '(unparsable frame)', ok: false, code: String(err) })
    }
  }

  /** False when there is no welcomed connection: what was not sent goes with the next one's resume. */
  protected send (frame: Record<string, unknown>): boolean {
    return this.welcomed && this.write(frame)
  }

  private id (kind: string): string {
    return `${this.history.name}-${kind}-${++this.nextId}`
  }

  protected onFrame (conn: number, frame: { type: string; id?: string; room?: string; seq?: number; payload?: any; stream?: any; offset?: number; text?: string; state?: string }): void {
    const at = this.now()
    if (frame.type === 'welcome') {
      this.welcomed = true
      this.resumeOnWelcome()
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
    if (frame.type === 'joined') {
      const room = frame.room!
      this.wanted.add(room)
      this.record({ at, conn, k: 'joined', room, seq: frame.payload.seq, epoch: frame.payload.epoch })
      this.positions.set(room, { seq: frame.payload.seq, epoch: frame.payload.epoch })
      this.recordHandedStreams(at, conn, room, frame.payload.streams)
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

  /** The first frame of a connection: resume the rooms it has positions for, then join the rest. */
  protected resume (): void {
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

  protected afterResume (): void {
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
      const outcomes = frame.payload.rooms as Record<string, { result: string; seq?: number; epoch?: string }>
      for (const [room, outcome] of Object.entries(outcomes)) {
        this.record({ at, conn, k: 'resumed', room, result: outcome.result, ...(outcome.seq === undefined ? {} : { seq: outcome.seq }), ...(outcome.epoch === undefined ? {} : { epoch: outcome.epoch }) })
        if (outcome.result === 'error') {
          this.positions.delete(room)
          this.streams.delete(room)
        } else {
          // A reset sent before this answer supersedes it, and live events held during the replay may have
          // gone past the outcome's seq (docs/reference/protocol.md): the position only moves forward.
          const current = this.positions.get(room)
          if (current === undefined) this.positions.set(room, { seq: outcome.seq!, epoch: outcome.epoch! })
          else if (current.epoch === outcome.epoch) current.seq = Math.max(current.seq, outcome.seq!)
          // Resumed from an SSE id that still named a room left since: leave it again.
          if (!this.wanted.has(room)) this.sendLeave(room)
        }
      }
      // A room the resume did not name is not joined on this connection: joined afresh below.
      for (const room of [...this.positions.keys()]) {
        if (outcomes[room] !== undefined) continue
        this.record({ at, conn, k: 'resumed', room, result: 'error' })
        this.positions.delete(room)
        this.streams.delete(room)
      }
      this.afterResume()
      return
    }
    const joining = this.pendingJoins.get(id)
    if (joining !== undefined) {
      this.pendingJoins.delete(id)
      if (frame.type === 'ack' && this.positions.has(joining)) {
        // A server-side join got there first: this ack only repeats the room's position.
      } else if (frame.type === 'ack' && this.wanted.has(joining)) {
        this.record({ at, conn, k: 'joined', room: joining, seq: frame.payload.seq, epoch: frame.payload.epoch })
        this.positions.set(joining, { seq: frame.payload.seq, epoch: frame.payload.epoch })
        this.recordHandedStreams(at, conn, joining, frame.payload.streams)
      } else if (frame.type === 'ack') {
        // Left while the join was on its way: leave again.
        this.sendLeave(joining)
      } else {
        this.retryLater(() => { if (this.wanted.has(joining) && !this.positions.has(joining)) this.sendJoin(joining) })
      }
      return
    }
    const leaving = this.pendingLeaves.get(id)
    if (leaving !== undefined) {
      this.pendingLeaves.delete(id)
      const room = leaving
      // `not_in_room`: out already (a leave answered before, on a connection since cut). Another error
      // left nothing changed: the leave is sent again later, as an app would.
      if (frame.type === 'ack' || frame.payload?.code === 'not_in_room') {
        this.record({ at, conn, k: 'left', room })
        this.positions.delete(room)
        this.streams.delete(room)
        // Wanted again while the leave was on its way: joined afresh.
        if (this.wanted.has(room)) this.sendJoin(room)
      } else {
        this.retryLater(() => { if (!this.wanted.has(room) && this.positions.has(room)) this.sendLeave(room) })
      }
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

  /** The open streamed events a join hands over, as frames with their text so far. */
  private recordHandedStreams (at: number, conn: number, room: string, streams: any[] | undefined): void {
    for (const stream of streams ?? []) {
      this.record({ at, conn, k: 'event', room, seq: stream.seq, type: stream.type, snapshot: true, stream: { id: stream.stream.id, state: stream.stream.state, text: stream.stream.text, count: stream.payload?.count ?? 0 } })
      if (stream.stream.state !== 'streaming') continue
      let open = this.streams.get(room)
      if (open === undefined) this.streams.set(room, open = new Map())
      open.set(stream.stream.id, stream.stream.text.length)
    }
  }

  private retryLater (fn: () => void): void {
    this.retries.push(fn)
    if (this.retryTimer !== undefined) return
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined
      const due = this.retries.splice(0)
      if (!this.stopped) for (const retry of due) retry()
    }, 300).unref()
  }

  private sendLeave (room: string): boolean {
    const id = this.id('leave')
    if (!this.send({ type: 'leave', id, room })) return false
    this.pendingLeaves.set(id, room)
    return true
  }

  join (room: string): void {
    this.wanted.add(room)
    if (this.resumeId === undefined && !this.positions.has(room)) this.sendJoin(room)
  }

  leave (room: string): void {
    if (!this.wanted.delete(room)) return
    if (!this.positions.has(room)) return
    if (this.sendLeave(room)) return
    // Offline, a WebSocket client simply does not resume the room: it is left from now on. On SSE the
    // server resumes what the last event id names, so the room is left once that resume is answered.
    if (this.resumesFromLastEventId) return
    this.positions.delete(room)
    this.streams.delete(room)
    this.record({ at: this.now(), conn: this.conn, k: 'left', room })
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

  settled (): boolean {
    return this.open && this.welcomed && this.resumeId === undefined &&
      [...this.wanted].every((room) => this.positions.has(room)) && this.requests.size === 0
  }

  position (room: string): { seq: number; epoch: string } | undefined {
    return this.positions.get(room)
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
    this.end()
  }
}

// The RoomRegistry behind `fastify.rooms`: this process's connections and room membership, presence,
// publishing through the Broker, and fan-out of what the Broker delivers to local sockets.
// ~480 lines: membership, presence order, the API's argument checks and fan-out still share this file;
// issue 13 splits membership and the connection lifecycle into a module of their own.
import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger } from 'fastify'
import { Compile } from 'typebox/compile'
import type { Broker, BrokerDelivery, RoomPosition, SharedAnswers } from './brokers/broker.js'
import type { Connection } from './connection.js'
import { InvalidArgumentError, isBrokerError, MetricsDisabledError, PayloadTooLargeError } from './errors.js'
import { frameText } from './framing.js'
import type { ResolvedOptions } from './options.js'
import { preciseNow, type Gauges, type Stats } from './metrics.js'
import {
  boundedDirectFrame, checkCloseCode, checkEventPayload, CloseCode, directRoomFrame, ErrorCode, FrameError, isRoomName, isSafeText, MessageType, payloadJson,
  SAFE_TEXT_MESSAGE, SERVER_TYPES, truncateCloseReason,
} from './protocol.js'
import { isUserId } from './upgrade.js'
import type { BroadcastOptions, RoomEvent, RoomHistory, RoomMember, RoomsApi, RoomsStats } from './types.js'

export interface RegistryOptions {
  presence: boolean
  /** Validators of the payloads of the event types the host declared. */
  events: ResolvedOptions['events']
  maxRoomsPerConnection: number
  /** No frame larger than a socket's send buffer is published: no socket could receive it. */
  maxBufferedBytes: number
  authorizeJoin: ((user: Connection['user'], room: string) => boolean | Promise<boolean>) | undefined
}

export interface JoinAck extends RoomPosition {
  room: string
  members?: RoomMember[]
}

export type ResumeOutcome =
  | { result: 'replayed'; seq: number; epoch: string; replayed: number }
  | { result: 'reset'; seq: number; epoch: string }
  | { result: 'error'; code: string; message: string }

const messageTypeValidator = Compile(MessageType)
const RESERVED_EVENT_TYPES = new Set<string>(SERVER_TYPES)
// Keys, the seq digits, the time and a WebSocket header around a room event's payload, type, room and traceId.
const ROOM_EVENT_OVERHEAD_BYTES = 96

export class RoomRegistry implements BrokerDelivery, Gauges {
  readonly connections = new Set<Connection>()
  private readonly byUser = new Map<string, Set<Connection>>()
  private readonly localRooms = new Map<string, Set<Connection>>()
  /** The broker subscription of each local room, settled or in flight. */
  private readonly subscriptions = new Map<string, Promise<void>>()
  private whenEmpty: (() => void) | undefined
  private readonly leaving = new Set<Promise<void>>()
  /** (room, user) → the last of that user's presence announcements there: they are published in the order they happened. */
  private readonly presenceTails = new Map<string, Promise<void>>()
  readonly api: RoomsApi

  constructor (
    private readonly options: RegistryOptions,
    private readonly broker: Broker,
    private readonly stats: Stats,
    private readonly log: FastifyBaseLogger
  ) {
    this.api = {
      broadcast: (room, type, payload, broadcastOptions) => this.broadcast(room, type, payload, broadcastOptions),
      sendToUser: (userId, type, payload) => this.sendToUser(userId, type, payload),
      members: async (room) => this.members(checkRoom(room)),
      count: async (room) => (await this.broker.presence(checkRoom(room))).length,
      rooms: () => this.broker.rooms(),
      disconnectUser: async (userId, code = CloseCode.policyViolation, reason = 'disconnected by the server') => {
        checkUserId(userId)
        checkCloseCode(code)
        if (typeof reason !== 'string') throw new InvalidArgumentError('reason', 'must be a string')
        await this.broker.disconnectUser(userId, code, truncateCloseReason(reason))
      },
      history: async (room, options = {}) => this.history(checkRoom(room), options.after ?? 0),
      stats: () => this.snapshot(),
      metrics: async () => {
        if (this.stats.registry === undefined) throw new MetricsDisabledError()
        return { contentType: this.stats.registry.contentType, body: await this.stats.registry.metrics() }
      },
    }
  }

  connectionCount (): number {
    return this.connections.size
  }

  connectionsOf (userId: string): number {
    return this.byUser.get(userId)?.size ?? 0
  }

  add (connection: Connection): void {
    this.connections.add(connection)
    let own = this.byUser.get(connection.user.id)
    if (own === undefined) {
      own = new Set()
      this.byUser.set(connection.user.id, own)
    }
    own.add(connection)
  }

  /** A socket closed: it leaves every room (presence `leave` for its user's last socket there). */
  remove (connection: Connection): void {
    if (!this.connections.delete(connection)) return
    const own = this.byUser.get(connection.user.id)
    own?.delete(connection)
    if (own?.size === 0) this.byUser.delete(connection.user.id)
    for (const room of connection.rooms) {
      const leaving = this.leave(connection, room).catch((err: unknown) => this.log.error({ err, room }, 'fastify-rooms: leaving a room on close failed'))
      // Shutdown waits for these, so the broker is not closed under them.
      this.leaving.add(leaving)
      void leaving.finally(() => this.leaving.delete(leaving))
    }
    if (this.connections.size === 0) this.whenEmpty?.()
  }

  /**
   * Joins a room. Local membership starts before the position is read, so every event with
   * seq > ack.seq reaches this socket. Presence is announced by the caller after the ack is sent.
   */
  async join (connection: Connection, room: string): Promise<{ ack: JoinAck; announced?: (() => void) | undefined }> {
    if (connection.rooms.has(room)) return { ack: await this.joinAck(room) }
    await this.admit(connection, room, false)
    const announced = await this.attach(connection, room)
    try {
      const ack = await this.joinAck(room)
      // On Redis this process's live stream may still bring events at or below ack.seq: not again.
      connection.setFence(room, ack.seq)
      return { ack, announced }
    } catch (err) {
      announced?.()
      await this.leave(connection, room).catch(() => {})
      throw err
    }
  }

  /**
   * Joins a room and sends what the socket missed since `from`: the retained events after from.seq, then
   * the live events that arrived meanwhile, each once and in order; or a `reset` when the epoch changed or
   * history no longer reaches back to from.seq + 1.
   */
  async resume (connection: Connection, room: string, from: RoomPosition): Promise<{ outcome: ResumeOutcome; announced?: (() => void) | undefined }> {
    // The caller authorized the room before reading anything about it.
    await this.admit(connection, room, true)
    // Hold live events back from before membership starts until the replay is out.
    connection.startReplay(room)
    let announced: (() => void) | undefined
    try {
      announced = await this.attach(connection, room)
      const slice = await this.broker.history(room, from.seq)
      const { seq, epoch } = slice.position
      if (epoch === from.epoch && slice.complete) {
        const replayed = connection.finishReplay(room, slice.events, from.seq)
        this.stats.resume('replayed')
        return { outcome: { result: 'replayed', seq, epoch, replayed }, announced }
      }
      connection.sendFrame(directRoomFrame('reset', room, slice.position))
      connection.finishReplay(room, [], seq)
      this.stats.resume('reset')
      return { outcome: { result: 'reset', seq, epoch }, announced }
    } catch (err) {
      announced?.()
      connection.cancelReplay(room)
      await this.leave(connection, room).catch(() => {})
      throw err
    }
  }

  /** The broker's shared answers, when it spans processes (Redis); one process needs only the local cache. */
  sharedAnswers (): SharedAnswers | undefined {
    const { claimAnswer, storeAnswer } = this.broker
    return claimAnswer === undefined || storeAnswer === undefined ? undefined : (this.broker as SharedAnswers)
  }

  /** A room's position when it exists; never creates one (a client's resume must not create rooms it may not join). */
  peekPosition (room: string): Promise<RoomPosition | undefined> {
    return this.broker.peekPosition(room)
  }

  /** authorizeJoin for this user and room; throws `forbidden` when it does not answer true. */
  async authorize (connection: Connection, room: string): Promise<void> {
    const allowed = this.options.authorizeJoin === undefined || (await this.options.authorizeJoin(connection.user, room)) === true
    if (!allowed) throw new FrameError(ErrorCode.forbidden, `not allowed to join "${room}"`)
  }

  /** Limits, and authorizeJoin unless the caller already ran it; throws the FrameError to answer with. */
  private async admit (connection: Connection, room: string, authorized: boolean): Promise<void> {
    if (connection.pendingJoins.has(room)) throw new FrameError(ErrorCode.invalidMessage, `a join of "${room}" is already in progress`)
    if (connection.rooms.size + connection.pendingJoins.size >= this.options.maxRoomsPerConnection) {
      throw new FrameError(ErrorCode.tooManyRooms, `a connection may join at most ${this.options.maxRoomsPerConnection} rooms`)
    }
    if (!authorized) {
      connection.pendingJoins.add(room)
      try {
        await this.authorize(connection, room)
      } finally {
        connection.pendingJoins.delete(room)
      }
    }
    if (!connection.isOpen) throw closedDuringJoin()
  }

  /**
   * Local membership, the broker subscription and presence. When this is the user's first connection in
   * the room, its presence `join` is queued now (so it stays ahead of any later `leave`) and published
   * once the caller calls the returned function, after its ack.
   */
  private async attach (connection: Connection, room: string): Promise<(() => void) | undefined> {
    connection.rooms.add(room)
    try {
      let local = this.localRooms.get(room)
      if (local === undefined) {
        local = new Set()
        this.localRooms.set(room, local)
        this.subscriptions.set(room, this.broker.subscribe(room))
      }
      local.add(connection)
      // Every joiner waits for the subscription, not only the first: events must flow before the position is read.
      await this.subscriptions.get(room)
      // Left (the socket closed) meanwhile: recording presence now would leave a ghost nobody removes.
      if (!connection.rooms.has(room)) throw closedDuringJoin()
      // A leave that starts from here on reaches the broker after this join, and is queued after it.
      const first = await this.broker.presenceJoin(room, connection.user.id, connection.id)
      if (!first || !this.options.presence) return undefined
      let release!: () => void
      const acked = new Promise<void>((resolve) => (release = resolve))
      void this.queueAnnouncement(room, connection.user.id, 'join', acked)
      return release
    } catch (err) {
      // Undo what was done, so a failed join leaves no half-member behind.
      await this.leave(connection, room).catch(() => {})
      throw err
    }
  }

  /**
   * After an `auth` refresh: every joined room is authorized again for the new claims; the rooms now
   * refused are left, each named in a `left` frame (`payload.reason: 'forbidden'`).
   */
  async reauthorize (connection: Connection): Promise<void> {
    if (this.options.authorizeJoin === undefined) return
    for (const room of [...connection.rooms]) {
      try {
        await this.authorize(connection, room)
        continue
      } catch (err) {
        // A throwing authorizeJoin fails closed: the room is left, like a refusal.
        if (!(err instanceof FrameError)) connection.log.error({ err, room }, 'fastify-rooms: authorizeJoin failed during a token refresh; leaving the room')
      }
      if (!connection.rooms.has(room)) continue
      if (connection.sendFrame(directRoomFrame('left', room, { reason: 'forbidden' }))) this.stats.messageOut('left')
      await this.leave(connection, room)
    }
  }

  /** Leaves a room; presence `leave` is published when it was this user's last connection there. */
  async leave (connection: Connection, room: string): Promise<void> {
    if (!connection.rooms.delete(room)) return
    connection.clearFence(room)
    const local = this.localRooms.get(room)
    if (local !== undefined) {
      local.delete(connection)
      if (local.size === 0) {
        this.localRooms.delete(room)
        this.subscriptions.delete(room)
        await this.broker.unsubscribe(room)
      }
    }
    const last = await this.broker.presenceLeave(room, connection.user.id, connection.id)
    if (last && this.options.presence) await this.queueAnnouncement(room, connection.user.id, 'leave')
  }

  /**
   * Publishes a presence change after the user's earlier ones in that room (and, for a join, after
   * `after`: the joiner's ack). Never rejects: a failure is logged.
   */
  private queueAnnouncement (room: string, userId: string, action: 'join' | 'leave', after?: Promise<void>): Promise<void> {
    // Room names and user ids hold no control characters: NUL cannot be part of either.
    const key = `${room}\u0000${userId}`
    const previous = this.presenceTails.get(key)
    const tail = (async () => {
      await previous
      await after
      await this.publish(room, 'presence', { action, user: { id: userId } }, randomUUID(), undefined)
    })().catch((err: unknown) => {
      if (isBrokerError(err)) this.log.warn({ err, room, action }, 'fastify-rooms: presence announcement failed: broker unavailable')
      else this.log.error({ err, room, action }, 'fastify-rooms: presence announcement failed')
    })
    this.presenceTails.set(key, tail)
    void tail.finally(() => {
      if (this.presenceTails.get(key) === tail) this.presenceTails.delete(key)
    })
    return tail
  }

  async broadcast (room: string, type: string, payload: unknown, options: BroadcastOptions = {}): Promise<{ seq: number }> {
    checkRoom(room)
    checkEventType(type)
    checkEventPayload(this.options.events, type, payload)
    checkBroadcastOptions(options)
    const traceId = options.traceId ?? randomUUID()
    const json = payloadJson(payload)
    const bytes = Buffer.byteLength(json) + Buffer.byteLength(type) + Buffer.byteLength(room) + Buffer.byteLength(traceId) + ROOM_EVENT_OVERHEAD_BYTES
    if (bytes > this.options.maxBufferedBytes) throw new PayloadTooLargeError(bytes, this.options.maxBufferedBytes)
    const { seq } = await this.broker.publish({ room, type, payloadJson: json, traceId, except: options.except, idempotencyKey: options.idempotencyKey })
    return { seq }
  }

  async sendToUser (userId: string, type: string, payload: unknown): Promise<void> {
    checkUserId(userId)
    checkEventType(type)
    checkEventPayload(this.options.events, type, payload)
    await this.broker.sendToUser(userId, boundedDirectFrame(type, payload, this.options.maxBufferedBytes))
  }

  async history (room: string, after: number): Promise<RoomHistory> {
    if (!Number.isInteger(after) || after < 0) throw new InvalidArgumentError('after', 'must be an integer >= 0')
    const slice = await this.broker.history(room, after)
    return {
      seq: slice.position.seq,
      epoch: slice.position.epoch,
      complete: slice.complete,
      events: slice.events.map((event) => JSON.parse(event.frame) as RoomEvent),
    }
  }

  async members (room: string): Promise<RoomMember[]> {
    const ids = await this.broker.presence(room)
    return ids.map((id) => ({ id }))
  }

  // BrokerDelivery: what every process receives. The frame was serialized once by the publisher; it is
  // turned into bytes once here, and each member costs a state check, a buffer check and one write.
  roomEvent (room: string, type: string, seq: number, frame: string, except: string | undefined, publishedAt?: number): void {
    const local = this.localRooms.get(room)
    if (local === undefined) return
    const event = frameText(frame)
    let recipients = 0
    for (const connection of local) {
      if (connection.id !== except && connection.deliver(room, seq, event)) recipients++
    }
    this.stats.messageOut(type, recipients)
    if (publishedAt !== undefined) this.stats.broadcast(Math.max(0, preciseNow() - publishedAt) / 1000)
  }

  // Gauges, read by stats() and by Prometheus at scrape time.
  roomCount (): number {
    return this.localRooms.size
  }

  memberCount (): number {
    let members = 0
    for (const local of this.localRooms.values()) members += local.size
    return members
  }

  maxBufferedBytes (): number {
    let max = 0
    for (const connection of this.connections) max = Math.max(max, connection.bufferedAmount)
    return max
  }

  userMessage (userId: string, frame: string): void {
    const own = this.byUser.get(userId)
    if (own === undefined) return
    for (const connection of own) connection.sendFrame(frame)
  }

  roomReset (room: string, position: RoomPosition): void {
    const local = this.localRooms.get(room)
    if (local === undefined) return
    const frame = directRoomFrame('reset', room, position)
    for (const connection of local) {
      connection.clearFence(room)
      connection.sendFrame(frame)
    }
    this.stats.messageOut('reset', local.size)
  }

  presenceChanged (room: string, userId: string, action: 'join' | 'leave'): void {
    if (!this.options.presence) return
    void this.queueAnnouncement(room, userId, action)
  }

  userDisconnect (userId: string, code: number, reason: string): void {
    const own = this.byUser.get(userId)
    if (own === undefined) return
    for (const connection of own) connection.close(code, reason)
  }

  /** Closes every socket with 1001 and resolves once all have closed; stragglers are cut after timeoutMs. */
  async shutdown (timeoutMs: number): Promise<void> {
    await this.closeAll(timeoutMs)
    await Promise.allSettled(this.leaving)
  }

  private async closeAll (timeoutMs: number): Promise<void> {
    if (this.connections.size === 0) return
    const empty = new Promise<void>((resolve) => {
      this.whenEmpty = resolve
    })
    for (const connection of this.connections) connection.close(CloseCode.goingAway, 'server shutting down')
    const cutoff = setTimeout(() => {
      for (const connection of this.connections) connection.terminate()
    }, timeoutMs)
    cutoff.unref()
    await empty
    clearTimeout(cutoff)
  }

  private async publish (room: string, type: string, payload: unknown, traceId: string, except: string | undefined): Promise<RoomPosition> {
    return this.broker.publish({ room, type, payloadJson: payloadJson(payload), traceId, except })
  }

  private async joinAck (room: string): Promise<JoinAck> {
    const position = await this.broker.position(room)
    if (!this.options.presence) return { room, ...position }
    return { room, ...position, members: await this.members(room) }
  }

  private snapshot (): RoomsStats {
    return {
      connections: this.connections.size,
      rooms: this.roomCount(),
      members: this.memberCount(),
      messagesIn: { ...this.stats.messagesIn },
      messagesOut: { ...this.stats.messagesOut },
      errors: { ...this.stats.errors },
      closes: { ...this.stats.closes },
      handshakes: { ...this.stats.handshakes },
      resumes: { ...this.stats.resumes },
      slowConsumerCloses: this.stats.slowConsumerCloses,
      maxBufferedBytes: this.maxBufferedBytes(),
      broadcast: { ...this.stats.broadcastTiming },
      clientLatency: { ...this.stats.clientLatency },
    }
  }
}

function checkRoom (room: string): string {
  if (!isRoomName(room)) throw new InvalidArgumentError('room', `must be a string of 1 to 128 characters (${SAFE_TEXT_MESSAGE})`)
  return room
}

function closedDuringJoin (): FrameError {
  return new FrameError(ErrorCode.invalidMessage, 'connection closed during join')
}

function checkOptionalText (options: BroadcastOptions, name: 'except' | 'traceId' | 'idempotencyKey', maxLength: number): void {
  const value = options[name]
  if (value === undefined) return
  if (typeof value !== 'string' || value.length === 0 || value.length > maxLength || !isSafeText(value)) {
    throw new InvalidArgumentError(name, `must be a string of 1 to ${maxLength} characters (${SAFE_TEXT_MESSAGE})`)
  }
}

function checkBroadcastOptions (options: BroadcastOptions): void {
  if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options', 'must be an object')
  checkOptionalText(options, 'except', 64)
  checkOptionalText(options, 'traceId', 64)
  checkOptionalText(options, 'idempotencyKey', 128)
}

function checkEventType (type: string): void {
  if (!messageTypeValidator.Check(type)) throw new InvalidArgumentError('type', 'must be a letter followed by up to 63 of [A-Za-z0-9_.:-]')
  if (RESERVED_EVENT_TYPES.has(type)) throw new InvalidArgumentError('type', `"${type}" is reserved by the protocol`)
}

function checkUserId (userId: string): string {
  if (!isUserId(userId)) throw new InvalidArgumentError('userId', `must be a string of 1 to 256 characters (${SAFE_TEXT_MESSAGE})`)
  return userId
}

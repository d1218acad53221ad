// The RoomRegistry behind `fastify.rooms`: the API's argument checks, publishing through the Broker, and
// fan-out of what the Broker delivers to this process's sockets (framed once per event). Who is in which
// room is membership.ts's; this module only reads it.
import type { Broker, BrokerDelivery, MembershipChange, PublishRequest, RoomPosition, SharedAnswers, SqlTransaction } from '../brokers/broker.js'
import type { Membership } from './membership.js'
import type { Presence } from './presence.js'
import { InvalidArgumentError, MetricsDisabledError, PayloadTooLargeError } from '../config/errors.js'
import { checkBroadcastOptions, checkEventType, checkOptionalText, checkRoom, checkTarget, checkUserId } from './arguments.js'
import { frameText } from '../out/framing.js'
import type { ResolvedOptions } from '../config/options.js'
import { preciseNow, type Gauges, type Stats } from '../observability/metrics.js'
import { boundedDirectFrame, checkCloseCode, checkEventPayload, CloseCode, directRoomFrame, payloadJson, truncateCloseReason } from '../protocol/protocol.js'
import { streamOfFrame, type StreamAppend } from '../protocol/stream-frames.js'
import type { StreamRelay } from './stream-relay.js'
import type { StreamWriter } from './streams.js'
import type { PublishTrace, Tracing } from '../observability/tracing.js'
import { newTraceId } from '../protocol/trace-context.js'
import type { BroadcastOptions, BroadcastResult, RoomEvent, RoomHistory, RoomsApi, RoomsStats, RoomStream, StreamOptions } from '../types.js'

export interface RegistryOptions {
  /** Validators of the payloads of the event types the host declared. */
  events: ResolvedOptions['events']
  /** No frame larger than a socket's send buffer is published: no socket could receive it. */
  maxBufferedBytes: number
  /** A streamed event's text may take this much of that buffer; its payload the rest. */
  maxStreamBytes: number
}

const NO_TRANSACTIONS = 'needs the Postgres broker (fastify-rooms/postgres) or the outbox option'

/** What the registry asks of the outbox (brokers/outbox.ts). */
export interface TransactionalOutbox {
  write(transaction: SqlTransaction, request: PublishRequest): Promise<{ id: string }>
  positionIn(transaction: SqlTransaction, room: string): Promise<RoomPosition>
}
// Keys, the seq digits, the time and a WebSocket header around a room event's payload, type, room and traceId.
const ROOM_EVENT_OVERHEAD_BYTES = 96
// A streamed event's stream object around its text: keys, its id, its state and reason.
const STREAM_OVERHEAD_BYTES = 256

/** A traced event's bytes: its traceId, and its traceparent with its key. */
function traceBytes (trace: PublishTrace): number {
  return Buffer.byteLength(trace.traceId) + (trace.traceparent === undefined ? 0 : 72)
}

/** What the registry asks of the SSE fallback's sessions on this process. */
export interface SessionDirectory {
  deliver(userId: string, sessionId: string, frame: string): void
  /** `disconnectUser`: the user's sessions end with her connections. */
  endSessionsOf(userId: string): void
  counts(): { sessions: number; streams: number }
}

export class RoomRegistry implements BrokerDelivery, Gauges {
  readonly api: RoomsApi

  constructor (
    private readonly options: RegistryOptions,
    private readonly membership: Membership,
    private readonly presence: Presence,
    private readonly broker: Broker,
    private readonly stats: Stats,
    /** This process's SSE sessions, when the fallback is on (made with the route, after this). */
    private readonly sessions: () => SessionDirectory | undefined = () => undefined,
    /** Streamed events: written here (`stream`), and followed for local members as they grow. */
    private readonly streams: { writer: StreamWriter; relay: StreamRelay } | undefined,
    /** The outbox, with the `outbox` option (the memory and Redis brokers). */
    private readonly outbox: TransactionalOutbox | undefined,
    /** Spans for publishes and fan-outs; undefined when tracing is off (or @opentelemetry/api is absent). */
    private readonly tracing: Tracing | undefined
  ) {
    this.api = {
      broadcast: (room, type, payload, broadcastOptions) => this.broadcast(room, type, payload, broadcastOptions),
      stream: (room, type, payload, streamOptions) => this.stream(room, type, payload, streamOptions),
      position: async (room, positionOptions = {}) => this.position(checkRoom(room), positionOptions),
      sendToUser: (userId, type, payload) => this.sendToUser(userId, type, payload),
      members: async (room) => this.membership.members(checkRoom(room)),
      count: async (room) => this.presence.count(checkRoom(room)),
      rooms: () => this.broker.rooms(),
      disconnectUser: async (userId, code = CloseCode.policyViolation, reason = 'disconnected by the server') => {
        checkUserId(userId)
        checkCloseCode(code)
        if (typeof reason !== 'string') throw new InvalidArgumentError('reason', 'must be a string')
        await this.broker.disconnectUser(userId, code, truncateCloseReason(reason))
      },
      history: async (room, options = {}) => this.history(checkRoom(room), options.after ?? 0),
      join: async (target, room) => this.broker.changeMembership({ action: 'join', room: checkRoom(room), target: checkTarget(target) }),
      leave: async (target, room) => this.broker.changeMembership({ action: 'leave', room: checkRoom(room), target: checkTarget(target) }),
      stats: () => this.snapshot(),
      metrics: async () => {
        if (this.stats.registry === undefined) throw new MetricsDisabledError()
        return { contentType: this.stats.registry.contentType, body: await this.stats.registry.metrics() }
      },
    }
  }

  /** The broker's shared answers, when it spans processes (Redis); one process needs only the local cache. */
  sharedAnswers (): SharedAnswers | undefined {
    const { claimAnswer, storeAnswer } = this.broker
    return claimAnswer === undefined || storeAnswer === undefined ? undefined : (this.broker as SharedAnswers)
  }

  async broadcast (room: string, type: string, payload: unknown, options: BroadcastOptions = {}): Promise<BroadcastResult> {
    checkRoom(room)
    checkEventType(type)
    checkEventPayload(this.options.events, type, payload)
    checkBroadcastOptions(options)
    const json = payloadJson(payload)
    return this.traced(room, type, options.traceId, (trace) => this.publish(room, type, json, options, trace))
  }

  /** Runs a publish with its trace: inside its span when tracing is on; else the caller's trace id or a new one. */
  private traced<R extends { seq: number }> (room: string, type: string, chosenTraceId: string | undefined, run: (trace: PublishTrace) => Promise<R>): Promise<R> {
    if (this.tracing === undefined) return run({ traceId: chosenTraceId ?? newTraceId(), traceparent: undefined })
    return this.tracing.publish({ room, type, broker: this.broker.name }, chosenTraceId, run)
  }

  private async publish (room: string, type: string, json: string, options: BroadcastOptions, trace: PublishTrace): Promise<BroadcastResult> {
    const bytes = Buffer.byteLength(json) + Buffer.byteLength(type) + Buffer.byteLength(room) + traceBytes(trace) + ROOM_EVENT_OVERHEAD_BYTES
    if (bytes > this.options.maxBufferedBytes) throw new PayloadTooLargeError(bytes, this.options.maxBufferedBytes)
    const request = { room, type, payloadJson: json, ...trace, except: options.except, idempotencyKey: options.idempotencyKey }
    const { transaction } = options
    if (transaction === undefined) return { seq: (await this.broker.publish(request)).seq }
    if (this.broker.publishIn !== undefined) return { seq: (await this.broker.publishIn(transaction, request)).seq }
    if (this.outbox !== undefined) return { seq: 0, outboxId: (await this.outbox.write(transaction, request)).id }
    throw new InvalidArgumentError('transaction', NO_TRANSACTIONS)
  }

  async stream (room: string, type: string, payload: unknown = null, options: StreamOptions = {}): Promise<RoomStream> {
    checkRoom(room)
    checkEventType(type)
    checkEventPayload(this.options.events, type, payload)
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options', 'must be an object')
    checkOptionalText(options, 'traceId', 64)
    checkOptionalText(options, 'idempotencyKey', 128)
    const json = payloadJson(payload)
    return this.traced(room, type, options.traceId, async (trace) => {
      const bytes = Buffer.byteLength(json) + Buffer.byteLength(type) + 2 * Buffer.byteLength(room) + traceBytes(trace) + ROOM_EVENT_OVERHEAD_BYTES + STREAM_OVERHEAD_BYTES
      const limit = this.options.maxBufferedBytes - this.options.maxStreamBytes
      if (bytes > limit) throw new PayloadTooLargeError(bytes, limit)
      return this.streams!.writer.start({ room, type, payloadJson: json, ...trace, idempotencyKey: options.idempotencyKey })
    })
  }

  async position (room: string, options: { transaction?: SqlTransaction }): Promise<RoomPosition> {
    if (typeof options !== 'object' || options === null) throw new InvalidArgumentError('options', 'must be an object')
    const { transaction } = options
    if (transaction === undefined) return this.broker.position(room)
    if (this.broker.positionIn !== undefined) return this.broker.positionIn(transaction, room)
    if (this.outbox !== undefined) return this.outbox.positionIn(transaction, room)
    throw new InvalidArgumentError('transaction', NO_TRANSACTIONS)
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

  // BrokerDelivery: what every process receives. The frame was serialized once by the publisher; it is
  // turned into bytes once here, and each member costs a state check, a buffer check and one write.
  roomEvent (room: string, type: string, seq: number, frame: string, except: string | undefined, publishedAt?: number): void {
    const local = this.membership.localMembers(room)
    if (local === undefined) return
    const event = frameText(frame)
    // A streamed event (its frame ends with its stream object: one character tells): followed from here.
    const info = streamOfFrame(frame)
    const stream = info === undefined ? undefined : { id: info.id, length: info.text.length, open: info.state === 'streaming' }
    if (info !== undefined) this.streams?.relay.seen(room, seq, info)
    let recipients = 0
    for (const connection of local) {
      if (connection.id !== except && connection.deliver(room, seq, event, stream)) recipients++
    }
    this.stats.messageOut(type, recipients)
    if (publishedAt !== undefined) this.stats.broadcast(Math.max(0, preciseNow() - publishedAt) / 1000)
    this.tracing?.delivered(room, type, seq, frame, recipients)
  }

  // Gauges, read by stats() and by Prometheus at scrape time.
  connectionCount (): number {
    return this.membership.connections.size
  }

  roomCount (): number {
    return this.membership.roomCount()
  }

  memberCount (): number {
    return this.membership.memberCount()
  }

  maxBufferedBytes (): number {
    let max = 0
    for (const connection of this.membership.connections) max = Math.max(max, connection.bufferedAmount)
    return max
  }

  userMessage (userId: string, frame: string): void {
    const own = this.membership.ownConnections(userId)
    if (own === undefined) return
    for (const connection of own) connection.sendFrame(frame)
  }

  /** An append to a streamed event, from its writer on this process or another: the relay orders it. */
  streamAppend (append: StreamAppend, frame: string): void {
    this.streams?.relay.append(append, frame)
  }

  /** The relay's fan-out of one append (framed once) to the room's local members; false when there are none. */
  fanOutAppend (append: StreamAppend, frame: string): boolean {
    const local = this.membership.localMembers(append.room)
    if (local === undefined) return false
    const event = frameText(frame)
    let recipients = 0
    for (const connection of local) if (connection.deliverAppend(append, event)) recipients++
    this.stats.messageOut('append', recipients)
    return true
  }

  roomReset (room: string, position: RoomPosition): void {
    const local = this.membership.localMembers(room)
    if (local === undefined) return
    const frame = directRoomFrame('reset', room, position)
    for (const connection of local) connection.reset(room, position, frame)
    this.stats.messageOut('reset', local.size)
  }

  presenceChanged (room: string, userId: string, action: 'join' | 'leave'): void {
    this.presence.changed(room, userId, action)
  }

  /** A frame POSTed on another process for one of this process's SSE sessions. */
  sessionFrame (userId: string, sessionId: string, frame: string): void {
    this.sessions()?.deliver(userId, sessionId, frame)
  }

  serverMembership (change: MembershipChange): void {
    this.membership.applyChange(change.action, change.room, change.target)
  }

  userDisconnect (userId: string, code: number, reason: string): void {
    const own = this.membership.ownConnections(userId)
    if (own !== undefined) for (const connection of [...own]) connection.close(code, reason)
    this.sessions()?.endSessionsOf(userId)
  }

  private sseCounts (): { sessions: number; streams: number } {
    return this.sessions()?.counts() ?? { sessions: 0, streams: 0 }
  }

  sseStreamCount (): number {
    return this.sseCounts().streams
  }

  private snapshot (): RoomsStats {
    return {
      connections: this.membership.connections.size,
      sse: this.sseCounts(),
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

// From a parsed frame (socket/intake.ts) to its answer: run the built-in or host handler, validate its
// payload, and send exactly one `ack` or `error` for a frame with an `id`.
import type { FastifyBaseLogger } from 'fastify'
import type { Connection, ConnectionEvents } from '../socket/connection.js'
import { isBrokerError } from '../config/errors.js'
import type { Stats } from '../observability/metrics.js'
import type { FrameTrace, Tracing } from '../observability/tracing.js'
import { newTraceId, parseTraceparent } from '../protocol/trace-context.js'
import type { CompiledMessage, ResolvedOptions } from '../config/options.js'
import { AckCache, answerOnce, frameFingerprint, type AckOutcome } from './acks.js'
import {
  BUILT_IN_CLIENT_TYPES, checkAuthPayload, checkEventPayload, checkLatencyPayload, checkPayload, checkResumePayload, directFrame, ErrorCode, FrameError, type Frame,
  type FrameIdValue,
} from '../protocol/protocol.js'
import type { Membership } from '../rooms/membership.js'
import type { Resumer } from '../rooms/resume.js'
import type { RoomRegistry } from '../rooms/registry.js'
import type { MessageContext, RoomsApi, RoomsUser } from '../types.js'
import { TokenRejectedError, type TokenVerifier } from '../admission/token.js'

export interface DispatcherOptions {
  events: ResolvedOptions['events']
  maxRoomsPerConnection: number
  /** Exactly-once answers for retried frames; false keeps none (every frame runs). */
  retryWindow: { maxIdsPerUser: number; windowMs: number } | false
  messages: ReadonlyMap<string, CompiledMessage>
}

const INTERNAL_ERROR = new FrameError(ErrorCode.internalError, 'internal error')
const UNAVAILABLE = new FrameError(ErrorCode.unavailable, 'a dependency of the server did not answer in time; send the frame again later')
const MAX_REPORTED_LATENCY_MS = 60_000
const BUILT_IN_TYPES: ReadonlySet<string> = new Set(BUILT_IN_CLIENT_TYPES)

export class Dispatcher implements Pick<ConnectionEvents, 'process'> {
  readonly acks: AckCache | undefined

  constructor (
    private readonly options: DispatcherOptions,
    private readonly membership: Membership,
    private readonly resumer: Resumer,
    private readonly registry: RoomRegistry,
    private readonly verifyToken: TokenVerifier,
    private readonly stats: Stats,
    /** Undefined when tracing is off: a frame then costs one comparison more. */
    private readonly tracing: Tracing | undefined
  ) {
    this.acks = options.retryWindow === false ? undefined : new AckCache(options.retryWindow)
  }

  async process (connection: Connection, frame: Frame): Promise<void> {
    if (this.tracing === undefined) {
      await this.handle(connection, frame, undefined)
      return
    }
    const knownType = BUILT_IN_TYPES.has(frame.type) || this.options.messages.has(frame.type)
    await this.tracing.frame(frame, knownType, connection.id, (trace) => this.handle(connection, frame, trace))
  }

  /** Handles a frame; resolves with the error code it answered, if it answered one. */
  private async handle (connection: Connection, frame: Frame, trace: FrameTrace | undefined): Promise<string | undefined> {
    try {
      switch (frame.type) {
        case 'join': await this.join(connection, frame); break
        case 'leave': await this.leave(connection, frame); break
        case 'auth': await this.auth(connection, frame); break
        case 'resume': await this.resume(connection, frame); break
        case 'latency': this.latency(connection, frame); break
        default: return await this.hostMessage(connection, frame, trace)
      }
      return undefined
    } catch (err) {
      const error = this.frameErrorOf(err, connection, frame, trace)
      connection.sendError(error, frame.id)
      return error.code
    }
  }

  /**
   * What a failure becomes on the wire: a FrameError as it is; the broker away or too slow → the retryable
   * `unavailable` (logged at warn: not a bug of ours or the host's); anything else is a bug, logged at error.
   */
  private frameErrorOf (err: unknown, connection: Connection, frame: Frame, trace: FrameTrace | undefined): FrameError {
    if (err instanceof FrameError) return err
    const fields = { err, type: frame.type, trace_id: frame.traceId, span_id: trace?.spanId }
    if (isBrokerError(err)) {
      connection.log.warn(fields, 'fastify-rooms: broker unavailable')
      return UNAVAILABLE
    }
    connection.log.error(fields, 'fastify-rooms: handler failed')
    return INTERNAL_ERROR
  }

  private ack (connection: Connection, id: FrameIdValue | undefined, payload: unknown): void {
    if (id === undefined) return
    if (connection.sendFrame(directFrame('ack', payload ?? null, id))) this.stats.messageOut('ack')
  }

  private async join (connection: Connection, frame: Frame): Promise<void> {
    const room = requireRoom(frame)
    const { ack, streams = [], announced, release, latestType } = await this.membership.join(connection, room)
    this.ack(connection, frame.id, streams.length === 0 ? ack : { ...ack, streams: streams.map((stored) => JSON.parse(stored.frame) as unknown) })
    release?.()
    if (latestType !== undefined) this.stats.messageOut(latestType)
    announced?.()
  }

  private async leave (connection: Connection, frame: Frame): Promise<void> {
    const room = requireRoom(frame)
    if (!connection.rooms.has(room)) throw notInRoom(room)
    await this.membership.leave(connection, room)
    this.ack(connection, frame.id, { room })
  }

  /** A client reports the `time` of an event it received: publish → client, plus the report's way back. */
  private latency (connection: Connection, frame: Frame): void {
    const { time } = checkLatencyPayload(frame.payload)
    const elapsedMs = Date.now() - time
    if (elapsedMs < 0 || elapsedMs > MAX_REPORTED_LATENCY_MS) {
      throw new FrameError(ErrorCode.invalidMessage, 'time is not the time of a recent event', { errors: [{ path: '/payload/time', message: 'must be a server time from the last minute' }] })
    }
    this.stats.clientLatencyReport(elapsedMs / 1000)
    this.ack(connection, frame.id, null)
  }

  /**
   * Token refresh: a valid token for the same user moves the connection's expiry (within the same token
   * policy as the upgrade), and every joined room is authorized again for the new claims.
   */
  private async auth (connection: Connection, frame: Frame): Promise<void> {
    const { token } = checkAuthPayload(frame.payload)
    let admission
    try {
      admission = await this.verifyToken(token)
    } catch (err) {
      if (!(err instanceof TokenRejectedError)) throw err
      throw new FrameError(err.problem === 'expired' ? ErrorCode.tokenExpired : ErrorCode.forbidden, err.message)
    }
    if (admission.user.id !== connection.user.id) throw new FrameError(ErrorCode.forbidden, 'token is for a different user')
    await this.membership.reauthenticate(connection, admission.user, admission.exp)
    this.ack(connection, frame.id, { exp: admission.exp })
  }

  private async hostMessage (connection: Connection, frame: Frame, trace: FrameTrace | undefined): Promise<string | undefined> {
    const definition = this.options.messages.get(frame.type)
    if (definition === undefined) throw new FrameError(ErrorCode.unknownType, `unknown message type "${frame.type}"`)
    if (definition.room) requireRoom(frame)
    if (frame.room !== undefined && !connection.rooms.has(frame.room)) throw notInRoom(frame.room)
    const payload = checkPayload(definition.validator, frame.payload, frame.type)
    if (frame.id === undefined) {
      const answer = await this.runHandler(connection, frame, definition, payload, trace)
      return answer.ok ? undefined : answer.error.code
    }
    // A frame with an id runs once per user within the retry window: a retry gets the first answer.
    const now = Date.now()
    const fingerprint = frameFingerprint(frame.type, frame.room, frame.payload)
    let outcome = this.acks?.lookup(connection.user.id, frame.id, fingerprint, now)
    if (outcome === undefined) {
      const run = () => this.runHandler(connection, frame, definition, payload, trace)
      const shared = this.acks === undefined ? undefined : this.registry.sharedAnswers()
      outcome = shared === undefined || this.options.retryWindow === false
        ? run()
        : answerOnce(shared, connection.user.id, frame.id, fingerprint, this.options.retryWindow, run)
      this.acks?.store(connection.user.id, frame.id, fingerprint, outcome, now)
    }
    const answer = await outcome
    if (answer.ok) {
      this.ack(connection, frame.id, answer.payload)
      return undefined
    }
    connection.sendError(answer.error, frame.id)
    return answer.error.code
  }

  /** Runs a host handler; never rejects. A failure that is not a FrameError is logged and becomes internal_error. */
  private async runHandler (connection: Connection, frame: Frame, definition: CompiledMessage, payload: unknown, trace: FrameTrace | undefined): Promise<AckOutcome> {
    // Kept on the frame so that a failure is logged with the same trace id the handler saw. A W3C
    // traceparent names the trace; else the client's own traceId; else the frame span's trace, or a new one.
    frame.traceId = parseTraceparent(frame.traceparent)?.traceId ?? frame.traceId ?? trace?.traceId ?? newTraceId()
    const context = new HandlerContext(connection, frame, frame.traceId, trace?.spanId, this.registry.api, this.options.events)
    try {
      return { ok: true, payload: await definition.handler(context, payload) }
    } catch (err) {
      return { ok: false, error: this.frameErrorOf(err, connection, frame, trace) }
    }
  }

  /** Re-joins rooms after a reconnect, replaying what was missed (resume.ts); presence joins follow the ack. */
  private async resume (connection: Connection, frame: Frame): Promise<void> {
    const { rooms } = checkResumePayload(frame.payload)
    const { outcomes, announce } = await this.resumer.resume(connection, rooms)
    this.ack(connection, frame.id, { rooms: outcomes })
    announce()
  }
}

function requireRoom (frame: Frame): string {
  if (frame.room === undefined) throw new FrameError(ErrorCode.invalidMessage, `"${frame.type}" needs a room`, { errors: [{ path: '/room', message: 'is required' }] })
  return frame.room
}

function notInRoom (room: string): FrameError {
  return new FrameError(ErrorCode.notInRoom, `join "${room}" first`)
}

class HandlerContext implements MessageContext {
  readonly user: RoomsUser
  readonly room: string | undefined
  readonly id: FrameIdValue | undefined
  readonly traceId: string
  readonly rooms: RoomsApi
  private logger: FastifyBaseLogger | undefined

  constructor (readonly connection: Connection, frame: Frame, traceId: string, private readonly spanId: string | undefined, api: RoomsApi, private readonly events: ResolvedOptions['events']) {
    this.user = connection.user
    this.room = frame.room
    this.id = frame.id
    this.traceId = traceId
    this.rooms = tracedRooms(api, traceId)
  }

  /** The connection's logger with this frame's trace_id (and span_id when traced), made on first use. */
  get log (): FastifyBaseLogger {
    this.logger ??= this.connection.log.child(this.spanId === undefined ? { trace_id: this.traceId } : { trace_id: this.traceId, span_id: this.spanId })
    return this.logger
  }

  reply (type: string, payload: unknown): void {
    checkEventPayload(this.events, type, payload)
    this.connection.send(type, payload)
  }
}

/** `ctx.rooms`: the same API, with the frame's traceId carried into broadcasts. */
function tracedRooms (api: RoomsApi, traceId: string): RoomsApi {
  const traced: RoomsApi = Object.create(api)
  traced.broadcast = (room, type, payload, options) =>
    api.broadcast(room, type, payload, options?.traceId === undefined ? { ...options, traceId } : options)
  traced.stream = (room, type, payload, options) =>
    api.stream(room, type, payload, options?.traceId === undefined ? { ...options, traceId } : options)
  return traced
}

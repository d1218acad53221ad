// A connection's life, from start to end, in one place: the last checks when an admitted socket starts
// (shutdown, an expired credential, a limit filled while its handshake was in flight), its registration
// with membership, `welcome`, `onConnect` (membership.open); and at the end the close counted, logged and
// handed to membership's bookkeeping. Frames in between go to the dispatcher.
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import type { WebSocket } from 'ws'
import { limitReached, type ConnectionLimits as OpenLimits } from '../admission/connection-limits.js'
import type { Admission } from '../admission/token.js'
import type { Frame } from '../protocol/protocol.js'
import { CloseCode, directFrame, PROTOCOL_VERSION } from '../protocol/protocol.js'
import type { Stats } from '../observability/metrics.js'
import type { WriteCoalescer } from '../out/write-coalescer.js'
import type { TokenExpiries } from '../socket/token-expiry.js'
import { Connection, type ConnectionEvents, type ConnectionLimits } from '../socket/connection.js'
import type { FrameRate } from '../socket/frame-rate.js'
import type { Membership } from './membership.js'

export interface LifecycleOptions extends ConnectionLimits, OpenLimits {
  heartbeatMs: number
  maxPayload: number
}

/** What turns a connection's raw messages into frames (socket/intake.ts), and what runs them (the dispatcher). */
export type FrameIntakeLike = Pick<ConnectionEvents, 'message'>
export type FrameRunner = Pick<ConnectionEvents, 'process'>

export class ConnectionLifecycle implements ConnectionEvents {
  constructor (
    private readonly options: LifecycleOptions,
    private readonly membership: Membership,
    private readonly intake: FrameIntakeLike,
    private readonly frames: FrameRunner,
    private readonly stats: Stats,
    private readonly log: FastifyBaseLogger,
    private readonly coalescer: WriteCoalescer,
    private readonly expiries: TokenExpiries,
    private readonly isClosing: () => boolean
  ) {}

  /** A socket (or an SSE stream in its shape) admitted: its connection starts; undefined when refused now. */
  start (socket: WebSocket, admission: Admission, request: FastifyRequest, rate?: FrameRate): Connection | undefined {
    const connection = new Connection(socket, this.membership.member(admission.user), this.options, this, this.stats, this.log, String(request.id), this.coalescer, this.expiries, rate)
    // Admitted before shutdown or a limit filled up while this handshake was in flight; or a credential
    // that ran out since it was checked (an SSE session's): nothing, not even welcome, is sent then.
    if (this.isClosing()) {
      connection.close(CloseCode.goingAway, 'server shutting down')
      return undefined
    }
    if (admission.exp !== undefined && admission.exp * 1000 <= Date.now()) {
      connection.close(CloseCode.policyViolation, 'token expired')
      return undefined
    }
    connection.expireAt(admission.exp)
    if (limitReached(this.options, this.membership.connections.size, this.membership.connectionsOf(admission.user.id)) !== undefined) {
      connection.close(CloseCode.tryAgainLater, 'connection limit reached')
      return undefined
    }
    this.membership.add(connection)
    this.stats.handshake('ok')
    connection.sendFrame(directFrame('welcome', {
      connectionId: connection.id,
      user: admission.user,
      heartbeatMs: this.options.heartbeatMs,
      maxPayload: this.options.maxPayload,
      protocol: PROTOCOL_VERSION,
    }))
    request.log.info({ connectionId: connection.id, userId: admission.user.id }, 'fastify-rooms: connection opened')
    this.membership.open(connection)
    return connection
  }

  message (connection: Connection, data: Buffer, isBinary: boolean): void {
    this.intake.message(connection, data, isBinary)
  }

  process (connection: Connection, frame: Frame): Promise<void> {
    return this.frames.process(connection, frame)
  }

  close (connection: Connection, code: number, reason: string, byServer: boolean): void {
    this.stats.close(code, byServer)
    connection.log.info(
      { userId: connection.user.id, rooms: connection.rooms.size, code, reason, durationMs: Date.now() - connection.openedAt },
      'fastify-rooms: connection closed'
    )
    this.membership.remove(connection, code, reason)
  }
}

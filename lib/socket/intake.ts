// A socket's raw messages become frames in its inbox, cheapest checks first: the size, the byte budget
// for a large frame (refused unread), the shape (depth and keys, before any parse), the parse and the
// envelope, then the frame and byte budget; `ping` is answered here, so liveness never waits behind a
// slow handler. Everything else waits its turn in the inbox for the dispatcher.
import type { Stats } from '../observability/metrics.js'
import { frameShapeProblem, type FrameShapeLimits } from '../protocol/frame-shape.js'
import { BUILT_IN_CLIENT_TYPES, CloseCode, ErrorCode, FrameError, parseFrame, pongFrame, type FrameIdValue } from '../protocol/protocol.js'
import type { Connection } from './connection.js'

export interface IntakeOptions {
  maxPayload: number
  maxFrameDepth: number
  maxFrameKeys: number
  /** The host's message types (counted in stats under their own names). */
  messageTypes: Iterable<string>
}

const BINARY_FRAME = new FrameError(ErrorCode.invalidMessage, 'binary frames are not supported: send JSON text frames')
const RATE_LIMITED = new FrameError(ErrorCode.rateLimited, 'too many frames: slow down')
const INBOX_FULL = new FrameError(ErrorCode.rateLimited, 'too many frames waiting for earlier ones to finish')
/** Frames up to this size are read even when refused, so that their rate_limited answer carries their id. */
const UNREAD_REFUSAL_BYTES = 4096

export class FrameIntake {
  /** Types counted in stats under their own name; anything else a client sends counts as `(unknown)`. */
  private readonly knownTypes: ReadonlySet<string>
  private readonly shapeLimits: FrameShapeLimits

  constructor (private readonly options: IntakeOptions, private readonly stats: Stats) {
    this.knownTypes = new Set([...BUILT_IN_CLIENT_TYPES, ...options.messageTypes])
    this.shapeLimits = { maxDepth: options.maxFrameDepth, maxKeys: options.maxFrameKeys }
  }

  message (connection: Connection, data: Buffer, isBinary: boolean): void {
    // ws enforces maxPayload itself; this covers an @fastify/websocket the host registered with a larger one.
    if (data.length > this.options.maxPayload) return connection.close(CloseCode.messageTooBig, 'message too big')
    const now = Date.now()
    const bytes = data.length
    if (isBinary) {
      this.stats.messageIn('(binary)')
      if (this.admit(connection, now, bytes, undefined)) connection.sendError(BINARY_FRAME)
      return
    }
    // A large frame over an empty budget is refused unread (no scan, no parse): a flood of small compressed
    // frames that inflate to maxPayload costs its inflate only. Its rate_limited answer has no id.
    if (bytes > UNREAD_REFUSAL_BYTES && connection.budgetEmpty(now, bytes)) {
      this.stats.messageIn('(unread)')
      this.admit(connection, now, bytes, undefined)
      return
    }
    // The shape is bounded before JSON.parse or any schema runs (one cheap pass over the bytes); the
    // rate after the parse, so that a rate_limited answer can carry the frame's id.
    const shapeProblem = frameShapeProblem(data, this.shapeLimits)
    if (shapeProblem !== undefined) {
      this.stats.messageIn('(invalid)')
      if (this.admit(connection, now, bytes, undefined)) connection.sendError(new FrameError(ErrorCode.invalidMessage, `frame ${shapeProblem}`))
      return
    }
    const parsed = parseFrame(data.toString())
    if (parsed.error !== undefined) {
      this.stats.messageIn('(invalid)')
      if (this.admit(connection, now, bytes, parsed.id)) connection.sendError(parsed.error, parsed.id)
      return
    }
    const frame = parsed.frame
    this.stats.messageIn(this.knownTypes.has(frame.type) ? frame.type : '(unknown)')
    if (!this.admit(connection, now, bytes, frame.id)) return
    // Liveness must not wait behind a slow handler.
    if (frame.type === 'ping') {
      if (connection.sendFrame(pongFrame(frame.id))) this.stats.messageOut('pong')
      return
    }
    if (!connection.enqueue(frame, bytes)) connection.sendError(INBOX_FULL, frame.id)
  }

  /** Takes a frame and its bytes from the connection's buckets; answers `rate_limited` (or closes 1008) when either is empty. */
  private admit (connection: Connection, now: number, bytes: number, id: FrameIdValue | undefined): boolean {
    if (connection.takeBudget(now, bytes)) return true
    if (!connection.recordRateLimited(now)) connection.sendError(RATE_LIMITED, id)
    else this.stats.error(ErrorCode.rateLimited)
    return false
  }
}

// The Server-Sent Events fallback: the same connections, frames and guarantees where WebSockets are
// blocked. A session is opened by a POST (admitted like an upgrade), its frames go down one EventSource
// stream (`GET …/sse/<session>`), and the client's frames come up as POSTs. Each stream gets an SseSocket,
// which looks to Connection like a ws socket, so everything past it (protocol, dispatch, rooms, brokers)
// is shared. Every event's SSE `id` is the positions of the socket's rooms, so a reconnecting EventSource
// resumes them from `Last-Event-ID` — on any process, since the positions are all a resume needs.
// Past 300 lines: the session's lifetime rules (credential, exp, server closes, budgets) and the socket they
// attach are one concern; split apart, each half would need the other's private state.
import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestHookHandler } from 'fastify'
import {
  answer, BadSessionRequestError, FrameTextError, NoSessionError, NoStreamError, NotYourSessionError, RateLimitedError, SessionExpiredError, TooManyAttemptsError, UnavailableError,
} from '../config/errors.js'
import { FailedAttempts } from '../admission/failed-attempts.js'
import { FrameRate, type FrameRateLimits } from '../socket/frame-rate.js'
import type { RoomsUser } from '../types.js'
import { limitReached, LIMIT_MESSAGES } from '../admission/connection-limits.js'
import { redactedRequest } from '../admission/log-redaction.js'

const OPEN = 1
const CLOSING = 2
const CLOSED = 3
const ID_PREFIX = 'p1.'
/** `{"type":<string>,"room":<string>,"seq":<n>,` — the head of every room event frame. */

/**
 * Where a stream's rooms stand, as its last event id carries them: room → [seq, epoch, the unfinished
 * streamed events it follows there (id → text length)].
 */
export type StreamPositions = Map<string, [seq: number, epoch: string, streams?: Map<string, number>]>

type DecodedPosition = { seq: number; epoch: string; streams?: Record<string, number> }

export function encodePositions (positions: StreamPositions): string {
  const entries = [...positions].map(([room, [seq, epoch, streams]]) => streams === undefined || streams.size === 0 ? [room, seq, epoch] : [room, seq, epoch, Object.fromEntries(streams)])
  return ID_PREFIX + Buffer.from(JSON.stringify(entries)).toString('base64url')
}

/** The positions in a Last-Event-ID, or undefined when it is not one of ours (then nothing is resumed). */
export function decodePositions (id: string | undefined, maxRooms: number): Record<string, DecodedPosition> | undefined {
  if (id === undefined || !id.startsWith(ID_PREFIX) || id.length > 65_536) return undefined
  try {
    const entries = JSON.parse(Buffer.from(id.slice(ID_PREFIX.length), 'base64url').toString()) as unknown
    if (!Array.isArray(entries) || entries.length > maxRooms) return undefined
    const rooms: Record<string, DecodedPosition> = Object.create(null)
    for (const entry of entries) {
      if (!Array.isArray(entry) || typeof entry[0] !== 'string' || !Number.isSafeInteger(entry[1]) || entry[1] < 0 || typeof entry[2] !== 'string') return undefined
      // The streams go to the resume as they are: its schema checks them like any client's.
      rooms[entry[0]] = entry[3] === undefined ? { seq: entry[1], epoch: entry[2] } : { seq: entry[1], epoch: entry[2], streams: entry[3] }
    }
    return rooms
  } catch {
    return undefined
  }
}

/**
 * One EventSource stream in the shape of a ws socket (what Connection uses of one): `send` writes an SSE
 * event, `ping` a comment, `close` a last `close` event; what the client POSTs comes out as `message`.
 * Its rooms' positions are told to it by the connection (`track`, `untrack`: the join and resume answers,
 * `joined`, `reset`, `left`), never read from the frames it carries (an ack's payload may be the host's);
 * a room event's seq is read from the event's fixed head. Each event that moves them carries them as its id.
 * It writes to the TCP socket itself, as ws does after an upgrade: through a ServerResponse every write of
 * one turn would sit in its corked buffer until the next tick, and `bufferedAmount` (what the slow-consumer
 * budget counts) would be the turn's output instead of what the peer has not read.
 */
export class SseSocket extends EventEmitter {
  readyState = OPEN
  readonly extensions = ''
  private readonly positions: StreamPositions = new Map()
  private idChanged = false
  private closeCode = 1006
  private closeReason = ''
  /** The code the server closed the stream with; undefined when the peer went away (or was cut). */
  closedByServer: number | undefined

  constructor (private readonly tcp: Socket) {
    super()
    tcp.once('close', () => {
      this.readyState = CLOSED
      this.emit('close', this.closeCode, Buffer.from(this.closeReason))
    })
    tcp.on('error', () => {})
  }

  get bufferedAmount (): number {
    return this.tcp.writableLength
  }

  send (data: Buffer | string, _options?: unknown): void {
    if (this.readyState !== OPEN) return
    const text = typeof data === 'string' ? data : data.toString()
    const id = this.idChanged ? `id: ${encodePositions(this.positions)}\n` : ''
    this.idChanged = false
    // JSON has no raw newline: one data line per frame.
    this.tcp.write(`${id}data: ${text}\n\n`)
  }

  /** A room's position changed (joined, resumed, reset): carried by the next event's id. */
  track (room: string, seq: number, epoch: string): void {
    this.positions.set(room, [seq, epoch])
    this.idChanged = true
  }

  /** The next frame is the room's event `seq` (the connection says so: frames are never parsed here). */
  advance (room: string, seq: number): void {
    const position = this.positions.get(room)
    if (position === undefined) return
    position[0] = seq
    this.idChanged = true
  }

  untrack (room: string): void {
    this.idChanged = this.positions.delete(room) || this.idChanged
  }

  /** Where the connection stands in a streamed event of the room (undefined: it ended): carried by the next event's id. */
  streamAt (room: string, id: string, length: number | undefined): void {
    const position = this.positions.get(room)
    if (position === undefined) return
    if (length === undefined) position[2]?.delete(id)
    else (position[2] ??= new Map()).set(id, length)
    this.idChanged = true
  }

  /** A frame the client POSTed for this stream's connection; it proves the peer alive (see ping). */
  receive (text: string): void {
    if (this.readyState !== OPEN) return
    this.emit('pong')
    this.emit('message', Buffer.from(text), false)
  }

  /**
   * A comment keeps proxies from timing the stream out. An EventSource cannot answer it, so a stream's
   * peer proves itself alive by POSTing (the client's `ping` frame every heartbeat): a stream that POSTs
   * nothing for two heartbeats is cut like a socket that missed its pong.
   */
  ping (): void {
    if (this.readyState !== OPEN) return
    this.tcp.write(': ping\n\n')
  }

  close (code = 1000, reason = ''): void {
    if (this.readyState !== OPEN) return
    this.readyState = CLOSING
    this.closeCode = code
    this.closeReason = reason
    this.closedByServer = code
    // EventSource reconnects by itself unless told otherwise: the client reads this and decides.
    this.tcp.end(`event: close\ndata: ${JSON.stringify({ code, reason })}\n\n`)
  }

  terminate (): void {
    this.tcp.destroy()
  }
}

export interface SseSession {
  id: string
  user: RoomsUser
  /** The credential's end (seconds): the session ends then, stream or not. An `auth` refresh moves it. */
  exp: number | undefined
  socket: SseSocket | undefined
  /** The stream's connection, while one is attached. */
  connection: StreamConnection | undefined
  /** Frame and byte budgets and the abuse window, kept across the session's streams: re-attaching resets nothing. */
  rate: FrameRate
  /** Dropped when no stream is attached for `sessionIdleMs`, or at `exp`. */
  idleTimer: NodeJS.Timeout | undefined
  /** Positions the opening POST asked to resume (a client moving here from another process's session). */
  resume: Record<string, { seq: number; epoch: string }> | undefined
}

/** What the transport reads of a stream's connection. */
export interface StreamConnection {
  /** The credential's exp in seconds, as an `auth` refresh on the stream may have moved it. */
  readonly exp: number | undefined
}

export interface SseOptions extends FrameRateLimits {
  path: string
  sessionIdleMs: number
  maxPayload: number
  maxConnections: number
  maxConnectionsPerUser: number
  maxRoomsPerConnection: number
  /** Failed credential checks allowed per client address and window (the handshake rate limit's), or false. */
  failedAttempts: { max: number; windowMs: number } | false
}

export interface SseHooks {
  admit(request: FastifyRequest, limits: boolean): Promise<{ user: RoomsUser; exp: number | undefined }>
  /** With `authenticate`: the stream's request is signed in again (the cookie goes with an EventSource). */
  signedInAgain: boolean
  checkOrigin(request: FastifyRequest): void
  /** CORS headers on an answer to an allowed Origin. */
  cors(request: FastifyRequest, reply: FastifyReply): void
  preflight(request: FastifyRequest, reply: FastifyReply): FastifyReply
  /** Starts a connection on the stream's socket (as the ws handler does for a socket); undefined when refused. */
  start(socket: SseSocket, admission: { user: RoomsUser; exp: number | undefined }, request: FastifyRequest, rate: FrameRate): StreamConnection | undefined
  isClosing(): boolean
  /** Counts a session open refused here (past admission) as a refused handshake. */
  refused(reason: 'unavailable'): void
  /** The handshake rate limit, shared with the upgrade: an onRequest hook, or undefined when off. */
  rateLimit: onRequestHookHandler | undefined
  /** Many processes: passes a frame for a session this process does not hold to the one that does. */
  forward: ((userId: string, sessionId: string, frame: string) => Promise<void>) | undefined
}

/** 24 random bytes, base64url: what `open` makes. Anything else is no session of any process. */
const SESSION_ID = /^[A-Za-z0-9_-]{32}$/
/** Server closes after which the client may attach again: the stream was too slow, or is replaced. */
const REATTACHABLE = new Set([1013, 4000])
const MAX_FORWARDING_USERS = 10_000

/** The sessions of this process and the routes that serve them. */
export class SseTransport {
  private readonly sessions = new Map<string, SseSession>()
  /** Frames this process passed on to others, metered per user like a socket's (a POST is no cheaper there). */
  private readonly forwarding = new Map<string, FrameRate>()
  private readonly failures: FailedAttempts | undefined

  constructor (private readonly options: SseOptions, private readonly hooks: SseHooks) {
    this.failures = options.failedAttempts === false ? undefined : new FailedAttempts(options.failedAttempts.max, options.failedAttempts.windowMs)
  }

  counts (): { sessions: number; streams: number } {
    let streams = 0
    for (const session of this.sessions.values()) if (session.socket !== undefined) streams++
    return { sessions: this.sessions.size, streams }
  }

  register (scope: FastifyInstance): void {
    const base = `${this.options.path}/sse`
    // Frames come up as they are, for the same parser as the socket's (shape limits, strict envelope).
    scope.addContentTypeParser(['application/json', 'text/plain'], { parseAs: 'string', bodyLimit: this.options.maxPayload }, (_request, body, done) => done(null, body))
    const cors = async (request: FastifyRequest, reply: FastifyReply) => this.hooks.cors(request, reply)
    // Opening a session and attaching a stream are handshakes: they share the upgrade's rate limit.
    const limited = this.hooks.rateLimit === undefined ? [cors] : [cors, this.hooks.rateLimit]
    // The session id is the stream's credential, and `?token=` may be in the open's URL: logged redacted.
    const logSerializers = { req: (request: FastifyRequest) => ({ method: request.method, url: `${base}/[REDACTED]`, host: request.host, remoteAddress: request.ip, remotePort: request.socket?.remotePort }) }
    const openLog = { req: redactedRequest }
    scope.route({ method: 'POST', url: base, config: { rateLimit: false }, onRequest: limited, logSerializers: openLog, handler: async (request, reply) => this.open(request, reply) })
    scope.route({ method: 'GET', url: `${base}/:session`, exposeHeadRoute: false, config: { rateLimit: false }, onRequest: limited, logSerializers, handler: async (request, reply) => this.stream(request, reply) })
    // Fastify's own HEAD would attach a stream too.
    scope.route({ method: 'HEAD', url: `${base}/:session`, logSerializers, handler: async (_request, reply) => reply.code(405).header('allow', 'GET, POST, OPTIONS').send() })
    scope.route({ method: 'OPTIONS', url: base, logSerializers: openLog, handler: this.hooks.preflight })
    scope.route({ method: 'OPTIONS', url: `${base}/:session`, logSerializers, handler: this.hooks.preflight })
    scope.route({ method: 'POST', url: `${base}/:session`, config: { rateLimit: false }, onRequest: cors, bodyLimit: this.options.maxPayload, logSerializers, handler: async (request, reply) => this.frame(request, reply) })
  }

  close (): void {
    for (const session of this.sessions.values()) this.drop(session)
  }

  /** `disconnectUser`: the user's sessions end with her connections (a session id is no way back in). */
  endSessionsOf (userId: string): void {
    for (const session of this.sessions.values()) if (session.user.id === userId) this.drop(session)
  }

  private async open (request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    if (this.hooks.isClosing()) return answer(reply, new UnavailableError('server is shutting down'))
    const admission = await this.hooks.admit(request, true)
    // Sessions waiting for their stream count too: one user cannot fill the table with them. At the user's
    // limit, her oldest session without a stream (a frozen or vanished tab's) makes room for the new one.
    const own = [...this.sessions.values()].filter((session) => session.user.id === admission.user.id)
    const idle = own.length >= this.options.maxConnectionsPerUser ? own.find((session) => session.socket === undefined) : undefined
    if (idle !== undefined) {
      this.drop(idle)
      own.splice(own.indexOf(idle), 1)
    }
    const reached = limitReached(this.options, this.sessions.size, own.length)
    if (reached !== undefined) {
      this.hooks.refused('unavailable')
      return answer(reply, new UnavailableError(LIMIT_MESSAGES[reached]))
    }
    // The body may name where a previous session's stream stood (its last event id): resumed on the new stream.
    let resume: unknown
    try {
      resume = typeof request.body === 'string' && request.body !== '' ? (JSON.parse(request.body) as { resume?: unknown } | null)?.resume : undefined
    } catch {
      return answer(reply, new BadSessionRequestError())
    }
    const session: SseSession = {
      id: randomBytes(24).toString('base64url'),
      user: admission.user,
      exp: admission.exp,
      socket: undefined,
      connection: undefined,
      rate: new FrameRate(this.options),
      idleTimer: undefined,
      resume: typeof resume === 'string' ? decodePositions(resume, this.options.maxRoomsPerConnection) : undefined,
    }
    this.sessions.set(session.id, session)
    this.idle(session)
    return reply.code(201).send({ session: session.id, stream: `${request.url.split('?')[0]}/${session.id}` })
  }

  private async stream (request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const session = this.sessions.get((request.params as { session: string }).session)
    if (session === undefined) return noSession(reply)
    // EventSource sends no Authorization header: the unguessable session id is the credential here, from
    // an allowed Origin, until the token's exp; with `authenticate`, the cookie must still sign the user in.
    this.hooks.checkOrigin(request)
    if (this.expired(session)) {
      this.drop(session)
      return answer(reply, new SessionExpiredError())
    }
    if (this.hooks.signedInAgain) {
      let refusal: FastifyReply | undefined
      try {
        refusal = await this.checkCredentials(request, reply, session)
      } catch (err) {
        // Not signed in (or not any more): the session is over, whatever the answer.
        if ((err as { statusCode?: number }).statusCode !== 429) this.drop(session)
        throw err
      }
      if (refusal !== undefined) {
        this.drop(session)
        return refusal
      }
      if (this.sessions.get(session.id) !== session) return noSession(reply)
    }
    const previous = session.socket
    if (previous !== undefined) {
      session.exp = session.connection?.exp ?? session.exp
      session.socket = undefined
      previous.close(4000, 'replaced by a newer stream')
    }
    clearTimeout(session.idleTimer)
    reply.hijack()
    const tcp = request.raw.socket
    const headers: Record<string, string> = {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-store',
      // The body is the rest of the connection: no chunked encoding, no keep-alive after it.
      connection: 'close',
      // nginx and others buffer responses unless told not to.
      'x-accel-buffering': 'no',
      ...corsHeaders(request),
    }
    tcp.setNoDelay(true)
    // Browsers wait `retry` ms before reconnecting a dropped stream.
    tcp.write(`HTTP/1.1 200 OK\r\n${Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('')}\r\nretry: 1000\n\n`)
    const socket = new SseSocket(tcp)
    session.socket = socket
    socket.once('close', () => {
      if (session.socket !== socket) return
      session.socket = undefined
      // An `auth` refresh on the stream moved the credential's end.
      session.exp = session.connection?.exp ?? session.exp
      session.connection = undefined
      // Closed by the server (a policy, a host's disconnect, an expired token, shutdown): the session is
      // over, and only new credentials open another. The peer gone, or a slow reader: it may attach again.
      if (socket.closedByServer !== undefined && !REATTACHABLE.has(socket.closedByServer)) this.drop(session)
      else if (this.sessions.get(session.id) === session) this.idle(session)
    })
    session.connection = this.hooks.start(socket, { user: session.user, exp: session.exp }, request, session.rate)
    if (session.connection === undefined) return reply
    const last = decodePositions(request.headers['last-event-id'] as string | undefined, this.options.maxRoomsPerConnection) ?? session.resume
    session.resume = undefined
    if (last !== undefined && Object.keys(last).length > 0) socket.receive(JSON.stringify({ type: 'resume', id: 'sse-resume', payload: { rooms: last } }))
    return reply
  }

  private async frame (request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const sessionId = (request.params as { session: string }).session
    const session = this.sessions.get(sessionId)
    if (session === undefined && (this.hooks.forward === undefined || !SESSION_ID.test(sessionId))) return noSession(reply)
    const admission = await this.admitCounted(request)
    if (typeof request.body !== 'string') return answer(reply, new FrameTextError())
    if (session === undefined) {
      // Held by another process (or by none any more): it gets the frame only if the session is this user's.
      // Each process hears it, so it is metered here, per user, like a socket's frames.
      if (!this.forwardingRate(admission.user.id).take(Date.now(), Buffer.byteLength(request.body))) {
        return answer(reply, new RateLimitedError())
      }
      await this.hooks.forward!(admission.user.id, sessionId, request.body)
      return reply.code(202).send({ accepted: true, forwarded: true })
    }
    if (admission.user.id !== session.user.id) {
      this.failures?.failed(request.ip, Date.now())
      return notYourSession(reply)
    }
    const socket = session.socket
    if (socket === undefined) return answer(reply, new NoStreamError())
    socket.receive(request.body)
    return reply.code(202).send({ accepted: true })
  }

  /** Admission for a request that is not a handshake: a client whose checks keep failing gets 429 before the next one runs. */
  private async admitCounted (request: FastifyRequest): Promise<{ user: RoomsUser; exp: number | undefined }> {
    if (this.failures !== undefined && !this.failures.allowed(request.ip, Date.now())) throw new TooManyAttemptsError()
    try {
      return await this.hooks.admit(request, false)
    } catch (err) {
      if ((err as { statusCode?: number }).statusCode === 401) this.failures?.failed(request.ip, Date.now())
      throw err
    }
  }

  /** The stream's request signs the session's user in again (the answer to send when it does not). */
  private async checkCredentials (request: FastifyRequest, reply: FastifyReply, session: SseSession): Promise<FastifyReply | undefined> {
    const { user } = await this.admitCounted(request)
    if (user.id === session.user.id) return undefined
    this.failures?.failed(request.ip, Date.now())
    return notYourSession(reply)
  }

  private forwardingRate (userId: string): FrameRate {
    let rate = this.forwarding.get(userId)
    if (rate === undefined) {
      if (this.forwarding.size >= MAX_FORWARDING_USERS) this.forwarding.delete(this.forwarding.keys().next().value!)
      rate = new FrameRate(this.options)
      this.forwarding.set(userId, rate)
    }
    return rate
  }

  private expired (session: SseSession): boolean {
    return session.exp !== undefined && session.exp * 1000 <= Date.now()
  }

  /** A frame another process took for a session of `userId`: fed to its stream if it is here and hers. */
  deliver (userId: string, sessionId: string, frame: string): void {
    const session = this.sessions.get(sessionId)
    if (session === undefined || session.user.id !== userId) return
    session.socket?.receive(frame)
  }

  private idle (session: SseSession): void {
    clearTimeout(session.idleTimer)
    const untilExp = session.exp === undefined ? Infinity : Math.max(0, session.exp * 1000 - Date.now())
    session.idleTimer = setTimeout(() => this.drop(session), Math.min(this.options.sessionIdleMs, untilExp))
    session.idleTimer.unref()
  }

  private drop (session: SseSession): void {
    clearTimeout(session.idleTimer)
    if (this.sessions.get(session.id) === session) this.sessions.delete(session.id)
    session.socket?.close(1001, 'session closed')
  }
}

function notYourSession (reply: FastifyReply): FastifyReply {
  return answer(reply, new NotYourSessionError())
}

function noSession (reply: FastifyReply): FastifyReply {
  return answer(reply, new NoSessionError())
}

function corsHeaders (request: FastifyRequest): Record<string, string> {
  const origin = request.headers.origin
  // Admission already judged the Origin of the session; the stream echoes it for EventSource's CORS check.
  return origin === undefined ? {} : { 'access-control-allow-origin': origin, 'access-control-allow-credentials': 'true', vary: 'Origin' }
}

// The Server-Sent Events fallback: the same connections, frames and guarantees where WebSockets are
// blocked. A session is opened by a POST (admitted like an upgrade), its frames go down one EventSource
// stream (`GET …/sse/<session>`), and the client's frames come up as POSTs. Each stream gets an SseSocket,
// which looks to Connection like a ws socket, so everything past it (protocol, dispatch, rooms, brokers)
// is shared. Every event's SSE `id` is the positions of the socket's rooms, so a reconnecting EventSource
// resumes them from `Last-Event-ID` — on any process, since the positions are all a resume needs.
import { randomBytes } from 'node:crypto'
import { EventEmitter } from 'node:events'
import type { Socket } from 'node:net'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import type { RoomsUser } from './types.js'

const OPEN = 1
const CLOSING = 2
const CLOSED = 3
const ID_PREFIX = 'p1.'
/** `{"type":<string>,"room":<string>,"seq":<n>,` — the head of every room event frame. */
const ROOM_EVENT_HEAD = /^\{"type":"(?:[^"\\]|\\.)*","room":("(?:[^"\\]|\\.)*"),"seq":(\d+),/

/** Where a stream's rooms stand, as its last event id carries them: room → [seq, epoch]. */
export type StreamPositions = Map<string, [seq: number, epoch: string]>

export function encodePositions (positions: StreamPositions): string {
  return ID_PREFIX + Buffer.from(JSON.stringify([...positions].map(([room, [seq, epoch]]) => [room, seq, epoch]))).toString('base64url')
}

/** The positions in a Last-Event-ID, or undefined when it is not one of ours (then nothing is resumed). */
export function decodePositions (id: string | undefined, maxRooms: number): Record<string, { seq: number; epoch: string }> | undefined {
  if (id === undefined || !id.startsWith(ID_PREFIX) || id.length > 65_536) return undefined
  try {
    const entries = JSON.parse(Buffer.from(id.slice(ID_PREFIX.length), 'base64url').toString()) as unknown
    if (!Array.isArray(entries) || entries.length > maxRooms) return undefined
    const rooms: Record<string, { seq: number; epoch: string }> = Object.create(null)
    for (const entry of entries) {
      if (!Array.isArray(entry) || typeof entry[0] !== 'string' || !Number.isSafeInteger(entry[1]) || entry[1] < 0 || typeof entry[2] !== 'string') return undefined
      rooms[entry[0]] = { seq: entry[1], epoch: entry[2] }
    }
    return rooms
  } catch {
    return undefined
  }
}

/**
 * One EventSource stream in the shape of a ws socket (what Connection uses of one): `send` writes an SSE
 * event, `ping` a comment, `close` a last `close` event; what the client POSTs comes out as `message`.
 * It follows the frames it sends to know its rooms' positions, and stamps them on each event as its id.
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
    this.follow(text)
    const id = this.idChanged ? `id: ${encodePositions(this.positions)}\n` : ''
    this.idChanged = false
    // JSON has no raw newline: one data line per frame.
    this.tcp.write(`${id}data: ${text}\n\n`)
  }

  /** A frame the client POSTed for this stream's connection. */
  receive (text: string): void {
    if (this.readyState === OPEN) this.emit('message', Buffer.from(text), false)
  }

  /** A comment keeps proxies from timing the stream out; a peer that stopped reading fills the buffer instead of answering. */
  ping (): void {
    if (this.readyState !== OPEN) return
    this.tcp.write(': ping\n\n')
    setImmediate(() => this.emit('pong'))
  }

  close (code = 1000, reason = ''): void {
    if (this.readyState !== OPEN) return
    this.readyState = CLOSING
    this.closeCode = code
    this.closeReason = reason
    // EventSource reconnects by itself unless told otherwise: the client reads this and decides.
    this.tcp.end(`event: close\ndata: ${JSON.stringify({ code, reason })}\n\n`)
  }

  terminate (): void {
    this.tcp.destroy()
  }

  /** Rooms and positions, from the frames that change them. */
  private follow (text: string): void {
    // A room event's head is fixed (protocol.ts roomEventFrameParts): its room and seq without parsing the payload.
    const head = ROOM_EVENT_HEAD.exec(text)
    if (head !== null) {
      const position = this.positions.get(JSON.parse(head[1]!) as string)
      if (position !== undefined) {
        position[0] = Number(head[2])
        this.idChanged = true
      }
      return
    }
    const frame = JSON.parse(text) as { type: string; room?: string; seq?: number; payload?: Record<string, any> }
    const room = frame.room
    const payload = frame.payload
    if (frame.type === 'ack' && payload !== undefined && payload !== null) {
      if (typeof payload.room === 'string' && typeof payload.epoch === 'string' && typeof payload.seq === 'number') this.set(payload.room, payload.seq, payload.epoch)
      if (typeof payload.rooms === 'object' && payload.rooms !== null) {
        for (const [name, outcome] of Object.entries(payload.rooms as Record<string, { result?: string; seq?: number; epoch?: string }>)) {
          if ((outcome.result === 'replayed' || outcome.result === 'reset') && typeof outcome.seq === 'number' && typeof outcome.epoch === 'string') this.set(name, outcome.seq, outcome.epoch)
        }
      }
    } else if ((frame.type === 'joined' || frame.type === 'reset') && room !== undefined && payload !== undefined) {
      this.set(room, payload.seq, payload.epoch)
    } else if (frame.type === 'left' && room !== undefined) {
      this.idChanged = this.positions.delete(room) || this.idChanged
    }
  }

  private set (room: string, seq: number, epoch: string): void {
    this.positions.set(room, [seq, epoch])
    this.idChanged = true
  }
}

export interface SseSession {
  id: string
  user: RoomsUser
  exp: number | undefined
  socket: SseSocket | undefined
  /** Dropped when no stream is attached for this long. */
  idleTimer: NodeJS.Timeout | undefined
  /** Positions the opening POST asked to resume (a client moving here from another process's session). */
  resume: Record<string, { seq: number; epoch: string }> | undefined
}

export interface SseOptions {
  path: string
  sessionIdleMs: number
  maxPayload: number
  maxConnections: number
  maxConnectionsPerUser: number
  maxRoomsPerConnection: number
}

export interface SseHooks {
  admit(request: FastifyRequest, limits: boolean): Promise<{ user: RoomsUser; exp: number | undefined }>
  checkOrigin(request: FastifyRequest): void
  preflight(request: FastifyRequest, reply: FastifyReply): FastifyReply
  /** Starts a connection on the stream's socket (as the ws handler does for a socket); false when refused. */
  start(socket: SseSocket, admission: { user: RoomsUser; exp: number | undefined }, request: FastifyRequest): boolean
  isClosing(): boolean
  /** Counts a session open refused here (past admission) as a refused handshake. */
  refused(reason: 'unavailable'): void
  /** The handshake rate limit's route config, or false. */
  rateLimit: Record<string, unknown> | false
  /** Many processes: passes a frame for a session this process does not hold to the one that does. */
  forward: ((userId: string, sessionId: string, frame: string) => Promise<void>) | undefined
}

/** The sessions of this process and the three routes that serve them. */
export class SseTransport {
  private readonly sessions = new Map<string, SseSession>()

  constructor (private readonly options: SseOptions, private readonly hooks: SseHooks) {}

  counts (): { sessions: number; streams: number } {
    let streams = 0
    for (const session of this.sessions.values()) if (session.socket !== undefined) streams++
    return { sessions: this.sessions.size, streams }
  }

  register (scope: FastifyInstance): void {
    const base = `${this.options.path}/sse`
    // Frames come up as they are, for the same parser as the socket's (shape limits, strict envelope).
    scope.addContentTypeParser(['application/json', 'text/plain'], { parseAs: 'string', bodyLimit: this.options.maxPayload }, (_request, body, done) => done(null, body))
    scope.route({
      method: 'POST',
      url: base,
      config: this.hooks.rateLimit === false ? { rateLimit: false } : { rateLimit: this.hooks.rateLimit },
      handler: async (request, reply) => this.open(request, reply),
    })
    // The session id is the stream's credential: the request log lines show it redacted.
    const logSerializers = { req: (request: FastifyRequest) => ({ method: request.method, url: `${base}/[REDACTED]`, host: request.host, remoteAddress: request.ip, remotePort: request.socket?.remotePort }) }
    scope.route({ method: 'GET', url: `${base}/:session`, logSerializers, handler: async (request, reply) => this.stream(request, reply) })
    scope.route({ method: 'OPTIONS', url: base, handler: this.hooks.preflight })
    scope.route({ method: 'OPTIONS', url: `${base}/:session`, handler: this.hooks.preflight })
    scope.route({ method: 'POST', url: `${base}/:session`, bodyLimit: this.options.maxPayload, logSerializers, handler: async (request, reply) => this.frame(request, reply) })
  }

  close (): void {
    for (const session of this.sessions.values()) this.drop(session)
  }

  private async open (request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    if (this.hooks.isClosing()) return reply.code(503).send({ statusCode: 503, code: 'FST_ROOMS_UNAVAILABLE', error: 'Service Unavailable', message: 'server is shutting down' })
    const admission = await this.hooks.admit(request, true)
    // Sessions waiting for their stream count too: one user cannot fill the table with them.
    let own = 0
    for (const session of this.sessions.values()) if (session.user.id === admission.user.id) own++
    if (this.sessions.size >= this.options.maxConnections || own >= this.options.maxConnectionsPerUser) {
      this.hooks.refused('unavailable')
      return reply.code(503).send({ statusCode: 503, code: 'FST_ROOMS_UNAVAILABLE', error: 'Service Unavailable', message: 'connection limit reached' })
    }
    // The body may name where a previous session's stream stood (its last event id): resumed on the new stream.
    let resume: unknown
    try {
      resume = typeof request.body === 'string' && request.body !== '' ? (JSON.parse(request.body) as { resume?: unknown } | null)?.resume : undefined
    } catch {
      return reply.code(400).send({ statusCode: 400, code: 'FST_ROOMS_BAD_SESSION_REQUEST', error: 'Bad Request', message: 'the body is JSON: {} or { "resume": <last event id> }' })
    }
    const session: SseSession = {
      id: randomBytes(24).toString('base64url'),
      user: admission.user,
      exp: admission.exp,
      socket: undefined,
      idleTimer: undefined,
      resume: typeof resume === 'string' ? decodePositions(resume, this.options.maxRoomsPerConnection) : undefined,
    }
    this.sessions.set(session.id, session)
    this.idle(session)
    return reply.code(201).send({ session: session.id, stream: `${request.url.split('?')[0]}/${session.id}` })
  }

  private async stream (request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const session = this.sessions.get((request.params as { session: string }).session)
    if (session === undefined) return reply.code(404).send({ statusCode: 404, code: 'FST_ROOMS_NO_SESSION', error: 'Not Found', message: 'no such session (it expired, or was opened on another process)' })
    // EventSource sends no Authorization header: the unguessable session id is the credential here, from
    // an allowed Origin.
    this.hooks.checkOrigin(request)
    session.socket?.close(4000, 'replaced by a newer stream')
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
      if (session.socket === socket) {
        session.socket = undefined
        this.idle(session)
      }
    })
    if (!this.hooks.start(socket, { user: session.user, exp: session.exp }, request)) return reply
    const last = decodePositions(request.headers['last-event-id'] as string | undefined, this.options.maxRoomsPerConnection) ?? session.resume
    session.resume = undefined
    if (last !== undefined && Object.keys(last).length > 0) socket.receive(JSON.stringify({ type: 'resume', id: 'sse-resume', payload: { rooms: last } }))
    return reply
  }

  private async frame (request: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const sessionId = (request.params as { session: string }).session
    const session = this.sessions.get(sessionId)
    if (session === undefined && this.hooks.forward === undefined) return reply.code(404).send({ statusCode: 404, code: 'FST_ROOMS_NO_SESSION', error: 'Not Found', message: 'no such session' })
    const admission = await this.hooks.admit(request, false)
    if (typeof request.body !== 'string') return reply.code(415).send({ statusCode: 415, code: 'FST_ROOMS_FRAME_TEXT', error: 'Unsupported Media Type', message: 'send one frame as JSON text' })
    if (session === undefined) {
      // Held by another process (or by none any more): it gets the frame only if the session is this user's.
      await this.hooks.forward!(admission.user.id, sessionId, request.body)
      return reply.code(202).send({ accepted: true, forwarded: true })
    }
    if (admission.user.id !== session.user.id) return reply.code(403).send({ statusCode: 403, code: 'FST_ROOMS_NOT_YOUR_SESSION', error: 'Forbidden', message: 'this session belongs to another user' })
    const socket = session.socket
    if (socket === undefined) return reply.code(409).send({ statusCode: 409, code: 'FST_ROOMS_NO_STREAM', error: 'Conflict', message: 'open the session\'s stream first' })
    socket.receive(request.body)
    return reply.code(202).send({ accepted: true })
  }

  /** A frame another process took for a session of `userId`: fed to its stream if it is here and hers. */
  deliver (userId: string, sessionId: string, frame: string): void {
    const session = this.sessions.get(sessionId)
    if (session === undefined || session.user.id !== userId) return
    session.socket?.receive(frame)
  }

  private idle (session: SseSession): void {
    clearTimeout(session.idleTimer)
    session.idleTimer = setTimeout(() => this.drop(session), this.options.sessionIdleMs)
    session.idleTimer.unref()
  }

  private drop (session: SseSession): void {
    clearTimeout(session.idleTimer)
    this.sessions.delete(session.id)
    session.socket?.close(1001, 'session closed')
  }
}

function corsHeaders (request: FastifyRequest): Record<string, string> {
  const origin = request.headers.origin
  // Admission already judged the Origin of the session; the stream echoes it for EventSource's CORS check.
  return origin === undefined ? {} : { 'access-control-allow-origin': origin, 'access-control-allow-credentials': 'true', vary: 'Origin' }
}

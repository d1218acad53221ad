// Shared test helpers: a real Fastify app on 127.0.0.1:0, real ws clients, and signed tokens.
import { Writable } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import rooms, { type RoomsOptions } from '../../lib/index.js'
import type { ServerFrame } from '../../lib/client/index.js'

export const SECRET = 'test-secret-0123456789'
export const ORIGIN = 'http://app.test'

const signer = createSigner({ key: SECRET })

/** A token for `sub`, valid for an hour unless `claims` says otherwise (exp/nbf in seconds). */
export function sign (sub: string, claims: Record<string, unknown> = {}): string {
  const now = Math.floor(Date.now() / 1000)
  return signer({ sub, iat: now, exp: now + 3600, ...claims })
}

export interface TestServer {
  app: FastifyInstance
  url: string
  port: number
  /** Every log line the app wrote, raw. */
  logs: string[]
}

export interface StartOptions {
  /** Called after the plugin is registered, before listen (routes, decorators). */
  setup?: (app: FastifyInstance) => void | Promise<void>
  /** Called before the plugin is registered (e.g. to register @fastify/jwt yourself). */
  before?: (app: FastifyInstance) => void | Promise<void>
  fastify?: FastifyServerOptions
  /** Log serializers of the app's root logger (e.g. the plugin's requestSerializer). */
  serializers?: Record<string, (value: any) => unknown>
  /** Listen on this port instead of a free one (e.g. to restart a server where clients expect it). */
  listenPort?: number
}

export async function startServer (
  t: { teardown(fn: () => unknown): void },
  options: Partial<RoomsOptions> = {},
  start: StartOptions = {}
): Promise<TestServer> {
  const logs: string[] = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      logs.push(chunk.toString())
      done()
    },
  })
  const app = Fastify({ logger: { level: 'trace', stream, ...(start.serializers === undefined ? {} : { serializers: start.serializers }) }, ...start.fastify })
  await start.before?.(app)
  await app.register(rooms, {
    jwt: { secret: SECRET },
    allowedOrigins: [ORIGIN],
    ...options,
    // Tests see a closed socket's presence leave at once unless they test the grace itself.
    presence: options.presence === undefined || options.presence === true ? { leaveGraceMs: 0 } : options.presence,
  } as RoomsOptions)
  await start.setup?.(app)
  try {
    await app.listen({ port: start.listenPort ?? 0, host: '127.0.0.1' })
  } catch (err) {
    await app.close()
    throw err
  }
  t.teardown(() => app.close())
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return { app, url: `ws://127.0.0.1:${port}`, port, logs }
}

/** What the server sends, as the client library types it. */
export type Frame = ServerFrame

export interface ConnectOptions {
  token?: string | null
  origin?: string | null
  /** How the token travels. */
  via?: 'header' | 'protocol' | 'query'
  path?: string
  wsOptions?: WebSocket.ClientOptions
}

/** A ws client that records every frame and lets a test await the next one that matches. */
export class Client {
  readonly frames: Frame[] = []
  /** Frames already returned by next(); the others stay available to later calls, whatever they match. */
  private readonly taken = new Set<number>()
  private firstUntaken = 0
  private waiters: Array<() => void> = []
  private readonly closedUnbounded: Promise<{ code: number; reason: string }>

  constructor (readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      this.frames.push(isBinary ? { type: '(binary)' } : JSON.parse(data.toString()))
      this.wake()
    })
    this.closedUnbounded = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.wake()
        resolve({ code, reason: reason.toString() })
      })
    })
  }

  /** The close code and reason, once the socket closed (bounded: rejects after 20 s). */
  get closed (): Promise<{ code: number; reason: string }> {
    return bounded(this.closedUnbounded, 'socket close', CLOSE_GUARD_MS)
  }

  private wake (): void {
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }

  send (frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame))
  }

  /**
   * The oldest frame not yet taken that matches; rejects if the socket closes first, or after
   * a guard of 10 s so that a missing frame fails its own test with a clear message instead of a file timeout.
   */
  async next (match: (frame: Frame) => boolean = () => true, what = 'frame'): Promise<Frame> {
    const deadline = Date.now() + NEXT_GUARD_MS
    let scanned = this.firstUntaken
    for (;;) {
      // Another call may have taken frames meanwhile; everything before firstUntaken is taken.
      for (scanned = Math.max(scanned, this.firstUntaken); scanned < this.frames.length; scanned++) {
        if (this.taken.has(scanned) || !match(this.frames[scanned]!)) continue
        this.taken.add(scanned)
        while (this.taken.has(this.firstUntaken)) this.taken.delete(this.firstUntaken++)
        return this.frames[scanned]!
      }
      if (this.ws.readyState === WebSocket.CLOSED) throw new Error(`socket closed while waiting for ${what}`)
      const remaining = deadline - Date.now()
      if (remaining <= 0) throw new Error(`no ${what} within ${NEXT_GUARD_MS} ms; got ${JSON.stringify(this.frames.slice(-5))}`)
      await new Promise<void>((resolve) => {
        const guard = setTimeout(resolve, remaining)
        this.waiters.push(() => {
          clearTimeout(guard)
          resolve()
        })
      })
    }
  }

  nextOfType (type: string): Promise<Frame> {
    return this.next((frame) => frame.type === type, type)
  }

  /** Sends a frame with an id and resolves with the `ack` or `error` that answers it. */
  async request (frame: Record<string, unknown> & { type: string }, id: string | number = nextId()): Promise<Frame> {
    this.send({ ...frame, id })
    return this.next((reply) => (reply.type === 'ack' || reply.type === 'error') && reply.id === id, `answer to ${id}`)
  }

  async join (room: string): Promise<Frame> {
    const answer = await this.request({ type: 'join', room })
    if (answer.type !== 'ack') throw new Error(`join ${room} failed: ${JSON.stringify(answer)}`)
    return answer
  }

  close (code?: number): Promise<{ code: number; reason: string }> {
    this.ws.close(code)
    return this.closed
  }
}

const NEXT_GUARD_MS = 10_000
/** A close can take the server's closeTimeoutMs (5 s by default) plus a heartbeat: a wider bound. */
const CLOSE_GUARD_MS = 20_000

/**
 * `promise`, or a rejection naming `what` once `ms` have passed: every awaited event or close in the tests
 * goes through a bound, so a missing one fails its own test with a message instead of hanging the file.
 */
export function bounded<T> (promise: Promise<T>, what: string, ms = NEXT_GUARD_MS): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms)
  })
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer))
}
let idCounter = 0
export function nextId (): string {
  return `r${++idCounter}`
}

function clientArgs (server: TestServer | string, sub: string, options: ConnectOptions): { url: string; protocols: string[]; wsOptions: WebSocket.ClientOptions } {
  const base = typeof server === 'string' ? server : server.url
  const token = options.token === undefined ? sign(sub) : options.token
  const via = options.via ?? 'header'
  let url = base + (options.path ?? '/ws')
  const headers: Record<string, string> = {}
  const protocols: string[] = []
  if (token !== null) {
    if (via === 'header') headers.authorization = `Bearer ${token}`
    else if (via === 'protocol') protocols.push('rooms.v1', `bearer.${token}`)
    else url += `?token=${encodeURIComponent(token)}`
  }
  const origin = options.origin === undefined ? ORIGIN : options.origin
  const wsOptions: WebSocket.ClientOptions = { headers, ...options.wsOptions }
  if (origin !== null) wsOptions.origin = origin
  return { url, protocols, wsOptions }
}

/** Opens a socket for user `sub` and waits for `welcome`. */
export async function connect (server: TestServer | string, sub = 'alice', options: ConnectOptions = {}): Promise<Client> {
  const { url, protocols, wsOptions } = clientArgs(server, sub, options)
  const ws = new WebSocket(url, protocols, wsOptions)
  const client = new Client(ws)
  await bounded(new Promise<void>((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('error', reject)
    ws.once('unexpected-response', (_req, res) => reject(new Error(`unexpected HTTP ${res.statusCode}`)))
  }), 'the socket opening')
  const welcome = await client.nextOfType('welcome')
  if (welcome.payload?.user?.id !== sub) throw new Error(`welcome for the wrong user: ${JSON.stringify(welcome)}`)
  return client
}

export interface Rejection {
  status: number
  headers: Record<string, string | string[] | undefined>
  body: string
}

/** Attempts an upgrade that must be refused before the 101; resolves with the HTTP answer. */
export function rejectedUpgrade (server: TestServer | string, sub = 'alice', options: ConnectOptions = {}): Promise<Rejection> {
  const { url, protocols, wsOptions } = clientArgs(server, sub, options)
  const ws = new WebSocket(url, protocols, wsOptions)
  return bounded(new Promise((resolve, reject) => {
    ws.once('open', () => {
      ws.terminate()
      reject(new Error('upgrade was accepted (101) but should have been refused'))
    })
    ws.once('error', () => {})
    ws.once('unexpected-response', (req, res) => {
      let body = ''
      res.on('data', (chunk: Buffer) => (body += chunk.toString()))
      res.on('end', () => {
        // As a browser does after a refused upgrade: drop the connection.
        req.destroy()
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body })
      })
      res.on('error', reject)
    })
  }), 'the refused upgrade\'s answer')
}

export function waitFor<T> (emitter: { once(event: string, fn: (...args: any[]) => void): unknown }, event: string): Promise<T> {
  return bounded(new Promise((resolve) => emitter.once(event, (value: T) => resolve(value))), `event "${event}"`)
}

/**
 * Resolves once `condition()` holds, checking on every turn of the event loop (no fixed sleeps): for
 * server-side effects a client cannot observe directly, such as the server's own close bookkeeping.
 */
export async function until (condition: () => boolean, what = 'condition'): Promise<void> {
  const deadline = Date.now() + NEXT_GUARD_MS
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what} did not hold within ${NEXT_GUARD_MS} ms`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** A raw protocol client: records every frame (room events with no dedupe of its own), once welcomed. */
export function rawClient (server: TestServer | string, sub: string): Promise<{ ws: WebSocket; frames: Frame[] }> {
  const ws = new WebSocket(`${typeof server === 'string' ? server : server.url}/ws`, { headers: { authorization: `Bearer ${sign(sub)}` }, origin: ORIGIN })
  const frames: Frame[] = []
  ws.on('message', (data) => frames.push(JSON.parse(data.toString())))
  return bounded(new Promise((resolve, reject) => {
    ws.once('error', reject)
    const welcome = () => (frames.some((frame) => frame.type === 'welcome') ? resolve({ ws, frames }) : ws.once('message', welcome))
    ws.once('message', welcome)
  }), `${sub}'s welcome`)
}

/**
 * Retries an async check every 50 ms until it stops throwing, for at most `ms` (then its last error):
 * for state in another process or in Redis that no event announces.
 */
export async function retryUntil<T> (attempt: () => Promise<T>, ms = 20_000, what?: string): Promise<T> {
  const deadline = Date.now() + ms
  for (;;) {
    try {
      return await attempt()
    } catch (err) {
      if (Date.now() > deadline) throw what === undefined ? err : new Error(`${what}: still failing after ${ms} ms: ${(err as Error).message}`)
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
  }
}

/** from, from + 1, …, to. */
export function range (from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i)
}

/** The seqs of the frames of one type (and room, when given), in the order they arrived. */
export function seqsOf (frames: readonly Frame[] | Client, type: string, room?: string): number[] {
  const list = Array.isArray(frames) ? frames : (frames as Client).frames
  return list.filter((frame) => frame.type === type && (room === undefined || frame.room === room)).map((frame) => frame.seq!)
}

/**
 * The TCP socket under a ws client, to pause or cut it as a network would. ws has no public accessor;
 * `_socket` is pinned by the tests that use it (a stalled reader must stall, a cut must close).
 */
export function tcpSocketOf (ws: unknown): import('node:net').Socket {
  const socket = (ws as { _socket?: import('node:net').Socket })._socket
  if (socket === undefined) throw new Error('ws has no _socket: its internals changed')
  return socket
}

// `fastify.rooms.inject(user)`: a connected client in the same process, for a host's own tests. No port
// and no token: each connection attempt goes through @fastify/websocket's injectWS with a one-time
// admission ticket that names the user, and then through everything a real socket meets (the route's
// hooks, limits, frames, acks, room events, close).
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import type { WebSocket } from 'ws'
import { createClient, RoomsClient, RoomsClientError } from '../client/index.js'
import { handshakeRefusal, parseBody, unexpectedResponseStatus, type HandshakeRefusal } from '../client/refusals.js'
import type { AnySchema, ClientSchema, WebSocketLike } from '../client/types.js'
import { InvalidArgumentError } from '../config/errors.js'
import { INJECT_HEADER } from './inject-header.js'
import { isUserId } from '../protocol/protocol.js'
import type { InjectClientOptions, RoomsUser } from '../types.js'

const TICKET_TTL_MS = 10_000
// Refusals are read right after they happen; a host's test that leaks thousands is bounded anyway.
const MAX_REFUSALS = 1000

const CONNECTING = 0
const CLOSED = 3

/** Admission tickets for injected connections: random, single use, short-lived. */
export class InjectTickets {
  private readonly tickets = new Map<string, { user: RoomsUser; expiresAt: number }>()
  /** Why the route refused a ticket's upgrade: injectWS itself reports only the status. */
  private readonly refusals = new Map<string, { refusal: HandshakeRefusal; expiresAt: number }>()

  issue (user: RoomsUser): string {
    const now = Date.now()
    for (const [ticket, entry] of this.tickets) if (entry.expiresAt < now) this.tickets.delete(ticket)
    for (const [ticket, entry] of this.refusals) if (entry.expiresAt < now) this.refusals.delete(ticket)
    const ticket = randomBytes(24).toString('base64url')
    this.tickets.set(ticket, { user, expiresAt: now + TICKET_TTL_MS })
    return ticket
  }

  /** Whether the header holds a live ticket (without using it): such a request skips the handshake rate limit. */
  has (ticket: unknown): boolean {
    const entry = typeof ticket === 'string' ? this.tickets.get(ticket) : undefined
    return entry !== undefined && entry.expiresAt >= Date.now()
  }

  /** The route's answer to a refused injected upgrade (its JSON `{ code, message }`), kept for the client. */
  noteRefusal (ticket: unknown, status: number, body: unknown): void {
    if (typeof ticket !== 'string' || this.refusals.size >= MAX_REFUSALS) return
    this.refusals.set(ticket, { refusal: handshakeRefusal(status, parseBody(body)), expiresAt: Date.now() + TICKET_TTL_MS })
  }

  /** The refusal noted for the ticket, once. */
  takeRefusal (ticket: string): HandshakeRefusal | undefined {
    const entry = this.refusals.get(ticket)
    this.refusals.delete(ticket)
    return entry?.refusal
  }

  /** The ticket's user, once; undefined for an unknown, used or expired ticket. */
  take (ticket: unknown): RoomsUser | undefined {
    if (typeof ticket !== 'string') return undefined
    const entry = this.tickets.get(ticket)
    this.tickets.delete(ticket)
    return entry !== undefined && entry.expiresAt >= Date.now() ? entry.user : undefined
  }
}

/**
 * The client's WebSocket for one injected attempt. injectWS hands over its ws before the upgrade (onInit),
 * so no early frame is lost; a refused upgrade rejects injectWS instead of closing the ws, and is turned
 * into the error and close events a network socket would give.
 */
class InjectedSocket implements WebSocketLike {
  onopen: WebSocketLike['onopen'] = null
  onmessage: WebSocketLike['onmessage'] = null
  onclose: WebSocketLike['onclose'] = null
  onerror: WebSocketLike['onerror'] = null
  private socket: WebSocket | undefined
  private failed = false
  private closeWhenOpen: [number | undefined, string | undefined] | undefined

  constructor (fastify: FastifyInstance, path: string, tickets: InjectTickets, ticket: string, protocols: string | string[] | undefined) {
    const headers = { [INJECT_HEADER]: ticket, 'sec-websocket-protocol': [protocols ?? []].flat().join(', ') }
    fastify.injectWS(path, { headers, socket: { remoteAddress: '127.0.0.1' } } as never, {
      onInit: (socket) => {
        this.socket = socket
        socket.onopen = (event) => {
          if (this.closeWhenOpen !== undefined) return socket.close(...this.closeWhenOpen)
          this.onopen?.(event)
        }
        socket.onmessage = (event) => this.onmessage?.(event)
        socket.onclose = (event) => this.onclose?.(event)
        socket.onerror = (event) => this.onerror?.(event)
      },
    }).catch((err: Error) => {
      this.failed = true
      const status = unexpectedResponseStatus(err.message)
      // The route's own refusal says why; a status the route never sent came from before it (no route at
      // this path) or after it (ws refusing the handshake, e.g. a ws and @fastify/websocket that disagree).
      const refusal = tickets.takeRefusal(ticket) ?? (status === 0
        ? undefined
        : {
            status,
            message: status === 404
              ? `no route at ${path} (injected upgrade refused with HTTP 404)`
              : `the WebSocket handshake was refused (HTTP ${status}) after fastify-rooms admitted it: ws refused the injected upgrade; check that the installed ws and @fastify/websocket work together`,
          })
      this.onerror?.({ message: err.message, refusal })
      this.onclose?.({ code: 1006, reason: '' })
    })
  }

  get readyState (): number {
    return this.failed ? CLOSED : this.socket?.readyState ?? CONNECTING
  }

  send (data: string): void {
    this.socket?.send(data)
  }

  // ws cannot abort an injected handshake (it has no request to abort): the close waits for the open.
  close (code?: number, reason?: string): void {
    if (this.socket === undefined || this.socket.readyState === CONNECTING) this.closeWhenOpen = [code, reason]
    else this.socket.close(code, reason)
  }

  terminate (): void {
    if (this.socket === undefined || this.socket.readyState === CONNECTING) this.closeWhenOpen = [1000, 'terminated']
    else this.socket.terminate()
  }
}

/** The server side of an injected connection, as the Injector needs it. */
export interface InjectedServerSide {
  readonly socket: { readonly readyState: number }
  terminate(): void
}

const FINISH_WAIT_MS = 1000

export class Injector {
  private readonly clients = new Set<RoomsClient<any>>()

  constructor (
    private readonly fastify: FastifyInstance,
    private readonly path: string,
    readonly tickets: InjectTickets,
    private readonly serverSide: (connectionId: string) => InjectedServerSide | undefined
  ) {}

  /**
   * An in-memory stream never closes by itself the way TCP does, so after a close handshake the server's
   * ws would wait 30 s for it. Once the server has the peer's close frame (CLOSING), its side is ended.
   */
  private finish (connectionId: string): void {
    const deadline = Date.now() + FINISH_WAIT_MS
    const check = () => {
      const connection = this.serverSide(connectionId)
      if (connection === undefined) return
      if (connection.socket.readyState >= 2 || Date.now() > deadline) return connection.terminate()
      setImmediate(check)
    }
    setImmediate(check)
  }

  /** Resolves once the server's `welcome` arrived; rejects with the refusal if the first attempt is refused. */
  async inject<S extends ClientSchema = AnySchema> (user: RoomsUser, clientOptions: InjectClientOptions = {}): Promise<RoomsClient<S>> {
    if (typeof user !== 'object' || user === null || !isUserId(user.id)) {
      throw new InvalidArgumentError('user', 'must be { id } with an id of 1 to 256 characters of well-formed text without control characters')
    }
    const { fastify, path, tickets } = this
    const Socket = class extends InjectedSocket {
      constructor (_url: string, protocols?: string | string[]) {
        super(fastify, path, tickets, tickets.issue(user), protocols)
      }
    }
    const client = createClient<S>({ ...clientOptions, url: `ws://inject${path}`, WebSocket: Socket, autoConnect: false })
    this.clients.add(client)
    let connectionId: string | undefined
    client.on('welcome', (welcome) => {
      connectionId = welcome.connectionId
    })
    client.on('state', (state) => {
      if (state !== 'open' && connectionId !== undefined) this.finish(connectionId)
      if (state !== 'open') connectionId = undefined
      if (state === 'closed') this.clients.delete(client)
    })
    await new Promise<void>((resolve, reject) => {
      const offWelcome = client.on('welcome', () => {
        offError()
        resolve()
      })
      const offError = client.on('error', (err: RoomsClientError) => {
        offWelcome()
        offError()
        client.close()
        reject(err)
      })
      client.connect()
    })
    return client
  }

  /** At shutdown: injected clients must not reconnect into a closing server. */
  closeAll (): void {
    for (const client of this.clients) client.close()
    this.clients.clear()
  }
}

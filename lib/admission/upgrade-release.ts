// Letting go of the upgrade's HTTP objects once the socket is open. @fastify/websocket assigns the socket
// to a ServerResponse it made for routing (`assignSocket` sets the socket's `_httpMessage`), and the
// hijacked response never finishes, so that response — and through its listeners the Fastify request,
// reply, IncomingMessage and every request header, the token's subprotocol among them — lived as long as
// the socket: about 2.5 KB of heap per connection. `detachSocket` is the call Node's own server makes when
// a response is done with its socket (test/connection-memory.test.ts pins that it frees them).
import type { FastifyReply, FastifyRequest } from 'fastify'
import type { ServerResponse } from 'node:http'

const responses = new WeakMap<FastifyRequest, ServerResponse>()

/** A route hook: remembers the upgrade's raw response, which the websocket handler is not given. */
export function keepUpgradeResponse (request: FastifyRequest, reply: FastifyReply, done: () => void): void {
  responses.set(request, reply.raw)
  done()
}

/** Called by the websocket handler once the socket is open: the socket no longer holds the response. */
export function releaseUpgradeResponse (request: FastifyRequest): void {
  const response = responses.get(request)
  responses.delete(request)
  if (response?.socket != null) response.detachSocket(response.socket)
}

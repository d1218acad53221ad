// A host with cookie sessions (@fastify/cookie, signed `sid`) that admits sockets with `authenticate`:
// POST /login/:name sets the cookie, POST /logout ends the session and disconnects the user (the README's recipe).
import { randomBytes } from 'node:crypto'
import fastifyCookie from '@fastify/cookie'
import type { FastifyRequest } from 'fastify'
import type { RoomsOptions, RoomsUser } from '../../lib/index.js'
import { startServer, type TestServer } from './index.js'

const COOKIE_SECRET = 'cookie-secret-0123456789abcdef'

/** A host with signed session cookies: POST /login sets `sid`, POST /logout ends the session. */
export async function sessionServer (t: Parameters<typeof startServer>[0], authenticate?: (request: FastifyRequest) => RoomsUser | null | Promise<RoomsUser | null>, options: Partial<RoomsOptions> = {}) {
  const sessions = new Map<string, RoomsUser>()
  const calls = { count: 0 }
  const server = await startServer(t, {
    jwt: undefined,
    ...options,
    authenticate: authenticate ?? (async (request) => {
      calls.count++
      const unsigned = request.unsignCookie(request.cookies.sid ?? '')
      return unsigned.valid && unsigned.value !== null ? sessions.get(unsigned.value) ?? null : null
    }),
  }, {
    before: async (app) => {
      await app.register(fastifyCookie, { secret: COOKIE_SECRET })
    },
    setup: (app) => {
      app.post('/login/:name', async (request, reply) => {
        const sid = randomBytes(16).toString('hex')
        sessions.set(sid, { id: (request.params as { name: string }).name, roles: ['member'] })
        return reply.setCookie('sid', sid, { signed: true, httpOnly: true, path: '/' }).send({ ok: true })
      })
      app.post('/logout', async (request) => {
        const unsigned = request.unsignCookie(request.cookies.sid ?? '')
        const user = unsigned.valid && unsigned.value !== null ? sessions.get(unsigned.value) : undefined
        if (unsigned.value !== null) sessions.delete(unsigned.value)
        // Ending a session ends its sockets: the plugin cannot see a session end by itself.
        if (user !== undefined) await app.rooms.disconnectUser(user.id, 4001, 'signed out')
        return { ok: true }
      })
    },
  })
  return { server, sessions, calls }
}

export async function login (server: TestServer, name: string): Promise<string> {
  const response = await fetch(`http://127.0.0.1:${server.port}/login/${name}`, { method: 'POST' })
  const cookie = response.headers.get('set-cookie') ?? ''
  return cookie.split(';')[0]!
}

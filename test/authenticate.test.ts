// Issue #11: `authenticate` admits sockets from a cookie session instead of a JWT, before the 101, with
// the same refusals (401, 403) and no crash when the host's function fails.
import t from 'tap'
import WebSocket from 'ws'
import { createClient } from '../lib/client/index.js'
import type { RoomsUser } from '../lib/index.js'
import { bounded, connect, ORIGIN, rejectedUpgrade, sign, startServer, until } from './helpers/index.js'
import { login, sessionServer } from './helpers/sessions.js'

t.test('#11 authenticate: a signed session cookie admits the socket as its user', async (t) => {
  const { server } = await sessionServer(t)
  const cookie = await login(server, 'carol')
  const client = await connect(server, 'carol', { token: null, wsOptions: { headers: { cookie } } })
  const joined = await client.join('lobby')
  t.equal(joined.type, 'ack')
  t.equal(server.app.rooms.stats().connections, 1)
  // No token, so no token to refresh: `auth` is refused with a reason, and the socket stays open.
  const auth = await client.request({ type: 'auth', payload: { token: sign('carol') } })
  t.equal(auth.type, 'error')
  t.equal(auth.payload.code, 'forbidden')
  t.match(auth.payload.message, /authenticate\(\), not tokens/)
  client.send({ type: 'ping', id: 'p1' })
  t.equal((await client.nextOfType('pong')).id, 'p1')
})

t.test('#11 authenticate: no cookie, a forged cookie or a tampered signature is 401; a JWT is not accepted instead', async (t) => {
  const { server, calls } = await sessionServer(t)
  const cookie = await login(server, 'carol')
  t.equal((await rejectedUpgrade(server, 'carol', { token: null })).status, 401)
  t.equal((await rejectedUpgrade(server, 'carol', { token: null, wsOptions: { headers: { cookie: 'sid=abc' } } })).status, 401)
  t.equal((await rejectedUpgrade(server, 'carol', { token: null, wsOptions: { headers: { cookie: cookie.slice(0, -2) + 'xx' } } })).status, 401)
  const jwtOnly = await rejectedUpgrade(server, 'carol')
  t.equal(jwtOnly.status, 401)
  t.match(JSON.parse(jwtOnly.body), { code: 'FST_ROOMS_UNAUTHORIZED', message: 'Unauthorized: not signed in' })
  t.equal(calls.count, 4)
  t.equal(server.app.rooms.stats().handshakes.unauthorized, 4)
})

t.test('#11 authenticate: Origin is checked first (403) and authenticate is not called', async (t) => {
  const { server, calls } = await sessionServer(t)
  const cookie = await login(server, 'carol')
  t.equal((await rejectedUpgrade(server, 'carol', { token: null, origin: 'http://evil.test', wsOptions: { headers: { cookie } } })).status, 403)
  t.equal(calls.count, 0)
})

t.test('#11 authenticate: a throw, a rejection or a malformed user is 401 and logged; other sockets carry on', async (t) => {
  let mode = 'ok'
  const { server } = await sessionServer(t, async (request) => {
    if (mode === 'throw') throw new Error('session store down')
    if (mode === 'sync-throw') return (null as unknown as () => RoomsUser)()
    if (mode === 'bad-id') return { id: '' }
    if (mode === 'not-object') return 'dave' as unknown as RoomsUser
    return { id: String(request.headers['x-user'] ?? 'erin') }
  })
  const erin = await connect(server, 'erin', { token: null })
  for (mode of ['throw', 'sync-throw', 'bad-id', 'not-object']) {
    const refused = await rejectedUpgrade(server, 'dave', { token: null })
    t.equal(refused.status, 401, `${mode}: 401`)
    t.notMatch(refused.body, /session store down/, `${mode}: the host's error stays in the log`)
  }
  t.ok(server.logs.some((line) => line.includes('authenticate threw') && line.includes('session store down')), 'the throw is logged with its error')
  t.ok(server.logs.some((line) => line.includes('without a well-formed id')))
  erin.send({ type: 'ping', id: 'p1' })
  t.equal((await erin.nextOfType('pong')).id, 'p1', 'the open socket is unaffected')
})

t.test('#11 authenticate: one that never answers is abandoned after authenticateTimeoutMs with 503; others get in', async (t) => {
  const server = await startServer(t, {
    jwt: undefined,
    authenticateTimeoutMs: 200,
    authenticate: (request) => request.headers['x-user'] === 'stuck' ? new Promise<null>(() => {}) : { id: String(request.headers['x-user']) },
  })
  const stuck = await rejectedUpgrade(server, 'stuck', { token: null, wsOptions: { headers: { 'x-user': 'stuck' } } })
  t.equal(stuck.status, 503)
  t.match(JSON.parse(stuck.body), { code: 'FST_ROOMS_UNAVAILABLE', message: 'Service unavailable: authentication did not answer in time' })
  t.equal(server.app.rooms.stats().handshakes.unavailable, 1)
  const fine = await connect(server, 'frank', { token: null, wsOptions: { headers: { 'x-user': 'frank' } } })
  fine.send({ type: 'ping', id: 'p' })
  t.equal((await fine.nextOfType('pong')).id, 'p')
})

t.test('#11 authenticate: ending the session is the host\'s disconnectUser; the socket closes with its code', async (t) => {
  const { server } = await sessionServer(t)
  const cookie = await login(server, 'carol')
  const client = await connect(server, 'carol', { token: null, wsOptions: { headers: { cookie } } })
  const closing = bounded(new Promise<number>((resolve) => client.ws.once('close', (code: number) => resolve(code))), 'the close')
  await fetch(`http://127.0.0.1:${server.port}/logout`, { method: 'POST', headers: { cookie } })
  t.equal(await closing, 4001)
  t.equal((await rejectedUpgrade(server, 'carol', { token: null, wsOptions: { headers: { cookie } } })).status, 401, 'the old cookie no longer admits')
})

t.test('#11 authenticate: the client needs no getToken; it reconnects with the same cookie', async (t) => {
  const { server } = await sessionServer(t)
  const cookie = await login(server, 'carol')
  // In a browser the cookie travels by itself; in Node, a WebSocket that sends it.
  class CookieWebSocket extends WebSocket {
    constructor (url: string, protocols?: string | string[]) {
      super(url, protocols, { headers: { cookie, origin: ORIGIN } })
    }
  }
  const client = createClient({ url: `${server.url}/ws`, WebSocket: CookieWebSocket, backoff: { initialMs: 5, maxMs: 20 } })
  t.teardown(() => client.close())
  await client.join('lobby')
  const event = bounded(new Promise<unknown>((resolve) => client.on('news', (frame) => resolve(frame.payload))), 'the news event')
  await server.app.rooms.broadcast('lobby', 'news', { n: 1 })
  t.same(await event, { n: 1 })
  // A cut socket: the client comes back through authenticate again.
  const reopened = bounded(new Promise<void>((resolve) => client.on('state', (state) => state === 'open' && resolve())), 'the client reconnecting')
  await server.app.rooms.disconnectUser('carol', 1012, 'restart')
  await reopened
  await until(() => server.app.rooms.stats().connections === 1, 'the client is back')
  t.pass('reconnected with the cookie')
})

t.test('#11 authenticate: option errors name the option', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: rooms } = await import('../lib/index.js')
  const cases: Array<[Record<string, unknown>, RegExp]> = [
    [{ jwt: { secret: 'x' }, authenticate: () => null }, /"authenticate" cannot be combined with jwt/],
    [{ authenticate: 'yes' }, /"authenticate" must be a function/],
    [{ authenticate: () => null, userFromToken: () => ({ id: 'a' }) }, /"userFromToken" applies to JWTs/],
    [{}, /"jwt" is required: .* or pass authenticate instead/],
  ]
  for (const [options, message] of cases) {
    const app = Fastify()
    await t.rejects((async () => { await app.register(rooms, { allowedOrigins: [ORIGIN], ...options } as never) })(), { code: 'FST_ROOMS_INVALID_OPTION', message })
    await app.close()
  }
})

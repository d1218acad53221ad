// Issue #21: what a newcomer meets in the first hour — inject on the ws a fresh install resolves, the
// client's `rooms` joined before queued requests, a refused Node client told why, and Node's Origin.
import { createRequire } from 'node:module'
import Fastify from 'fastify'
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { createClient, type RoomsClientError } from '../lib/client/index.js'
import { registerClientRoutes } from '../lib/http/client-bundle.js'
import rooms, { defineMessage } from '../lib/index.js'
import { bounded, ORIGIN, SECRET, sign, startServer } from './helpers/index.js'

const wsVersion: string = createRequire(import.meta.url)('ws/package.json').version

const vote = defineMessage({
  schema: Type.Object({ choice: Type.String() }),
  room: true,
  handler: (ctx, payload) => ({ room: ctx.room, choice: payload.choice }),
})

async function injectable (t: { teardown(fn: () => unknown): void }) {
  const fastify = Fastify()
  await fastify.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], messages: { vote }, maxConnectionsPerUser: 1 })
  t.teardown(() => fastify.close())
  return fastify
}

t.test(`#21 inject connects on the installed ws (${wsVersion}), which compares Sec-WebSocket-Version as a string since 8.23.1`, async (t) => {
  const fastify = await injectable(t)
  await fastify.ready()
  const alice = await fastify.rooms.inject({ id: 'alice' })
  t.equal(alice.state, 'open')
  t.same(await alice.request('vote', { choice: 'a' }, { room: 'poll' }).catch((err: RoomsClientError) => err.code), 'not_in_room')
  t.match(await alice.join('poll'), { room: 'poll', seq: 0 })
  t.same(await alice.request('vote', { choice: 'a' }, { room: 'poll' }), { room: 'poll', choice: 'a' })
  alice.close()
})

t.test('#21 a refused inject names the cause: the route\'s code and message, or ws refusing after the route', async (t) => {
  const fastify = await injectable(t)
  await fastify.ready()
  const first = await fastify.rooms.inject({ id: 'alice' })
  await t.rejects(fastify.rooms.inject({ id: 'alice' }), {
    code: 'unavailable',
    message: 'connection limit for this user reached',
    details: { status: 503, serverCode: 'FST_ROOMS_UNAVAILABLE' },
  }, 'the route\'s own answer, not "HTTP 503"')
  first.close()

  // A host hook that breaks the handshake after the route admitted it: ws answers 400 itself.
  const broken = Fastify()
  await broken.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN] })
  broken.addHook('preHandler', async (request) => {
    delete request.raw.headers['sec-websocket-key']
  })
  t.teardown(() => broken.close())
  await broken.ready()
  const refused = await broken.rooms.inject({ id: 'bob' }).catch((err: RoomsClientError) => err)
  t.match(refused, { code: 'refused', details: { status: 400 } })
  t.match((refused as RoomsClientError).message, /ws refused the injected upgrade/, 'names ws, not a bare status')
})

t.test('#21 createClient({ rooms }) joins them before any queued request goes out', async (t) => {
  const server = await startServer(t, { messages: { vote } })
  const client = createClient<any>({
    url: `${server.url}/ws`,
    WebSocket,
    origin: ORIGIN,
    getToken: () => sign('alice'),
    rooms: ['poll'],
  })
  t.teardown(() => client.close())
  // Queued while connecting: on welcome the join of `poll` must reach the server first.
  const answer = await bounded(client.request('vote', { choice: 'b' }, { room: 'poll' }), 'the vote')
  t.same(answer, { room: 'poll', choice: 'b' })
})

t.test('#21 a refused Node client carries the server\'s code and message (read from the refused handshake\'s body)', async (t) => {
  const server = await startServer(t)
  const noExp = createClient({ url: `${server.url}/ws`, WebSocket, origin: ORIGIN, getToken: () => sign('alice', { exp: undefined }), backoff: { initialMs: 5, maxMs: 10 } })
  t.teardown(() => noExp.close())
  const error = await bounded(new Promise<RoomsClientError>((resolve) => noExp.on('error', resolve)), 'the refusal')
  t.match(error, {
    code: 'unauthorized',
    message: "Unauthorized: token has no exp (sign tokens with an expiry, e.g. @fastify/jwt's sign: { expiresIn: '15m' }, or set token.requireExp: false)",
    details: { status: 401, serverCode: 'FST_ROOMS_UNAUTHORIZED' },
  })
  noExp.close()

  const limited = await startServer(t, { handshakeRateLimit: { max: 1, timeWindow: '1 minute' } })
  const first = createClient({ url: `${limited.url}/ws`, WebSocket, origin: ORIGIN, getToken: () => sign('alice') })
  t.teardown(() => first.close())
  await bounded(new Promise<void>((resolve) => first.on('welcome', () => resolve())), 'the first welcome')
  const second = createClient({ url: `${limited.url}/ws`, WebSocket, origin: ORIGIN, getToken: () => sign('alice') })
  t.teardown(() => second.close())
  const rateLimited = await bounded(new Promise<RoomsClientError>((resolve) => second.on('error', resolve)), 'the 429')
  second.close()
  t.equal(rateLimited.code, 'rate_limited')
  t.equal((rateLimited.details as { status: number }).status, 429)
  t.ok(((rateLimited.details as { retryAfterMs?: number }).retryAfterMs ?? 0) > 0, 'Retry-After read from the refused handshake itself')
})

t.test('#21 the origin option: a Node client sends the Origin the server allows, and without it is told why', async (t) => {
  const server = await startServer(t)
  const withOrigin = createClient({ url: `${server.url}/ws`, WebSocket, origin: ORIGIN, getToken: () => sign('alice') })
  t.teardown(() => withOrigin.close())
  t.same(await bounded(new Promise((resolve) => withOrigin.on('welcome', (welcome) => resolve(welcome.user))), 'welcome'), { id: 'alice' })
  withOrigin.close()

  const withoutOrigin = createClient({ url: `${server.url}/ws`, WebSocket, getToken: () => sign('alice'), backoff: { initialMs: 5, maxMs: 10 } })
  t.teardown(() => withoutOrigin.close())
  const refused = await bounded(new Promise<RoomsClientError>((resolve) => withoutOrigin.on('error', resolve)), 'the refusal')
  withoutOrigin.close()
  t.match(refused, { code: 'origin_not_allowed', message: 'Origin not allowed', details: { status: 403, serverCode: 'FST_ROOMS_FORBIDDEN_ORIGIN' } })
})

t.test('#21 the plugin serves the client as one ES module: <path>/client.js (revalidated) and <path>/client@<version>.js (immutable)', async (t) => {
  const { version } = createRequire(import.meta.url)('../package.json') as { version: string }
  const server = await startServer(t)
  const stable = await fetch(`${server.url.replace('ws:', 'http:')}/ws/client.js`)
  t.equal(stable.status, 200)
  t.equal(stable.headers.get('content-type'), 'text/javascript; charset=utf-8')
  t.equal(stable.headers.get('cache-control'), 'no-cache')
  t.equal(stable.headers.get('access-control-allow-origin'), '*', 'a module script is a CORS fetch: importable from another origin')
  const code = await stable.text()
  t.match(code, /export \{[^}]*\bcreateClient\b[^}]*\}/)
  t.notMatch(code, /^\s*import\s/m, 'no imports: the file is the whole client')
  t.match(code, new RegExp(`//# sourceMappingURL=client@${version.replaceAll('.', '\\.')}\\.js\\.map\\n$`))
  const etag = stable.headers.get('etag')!
  t.match(etag, /^"[A-Za-z0-9_-]{22}"$/)
  const revalidated = await fetch(`${server.url.replace('ws:', 'http:')}/ws/client.js`, { headers: { 'if-none-match': etag } })
  t.equal(revalidated.status, 304, 'unchanged: 304')
  const pinned = await fetch(`${server.url.replace('ws:', 'http:')}/ws/client@${version}.js`)
  t.equal(pinned.status, 200)
  t.equal(pinned.headers.get('cache-control'), 'public, max-age=31536000, immutable')
  t.equal(await pinned.text(), code, 'the same module')
  const map = await fetch(`${server.url.replace('ws:', 'http:')}/ws/client@${version}.js.map`)
  t.equal(map.status, 200)
  t.match(await map.json(), { version: 3, sourcesContent: [/export class RoomsClient/] })
  for (const other of ['/ws/client@0.0.0.js', '/ws/client@../../package.json', '/ws/client.js.map', '/ws/../package.json']) {
    t.equal((await fetch(`${server.url.replace('ws:', 'http:')}${other}`)).status, 404, `${other}: 404`)
  }
})

t.test('#21 serveClient: false registers no client route; a wrong value is refused at register', async (t) => {
  const server = await startServer(t, { serveClient: false })
  t.equal((await fetch(`${server.url.replace('ws:', 'http:')}/ws/client.js`)).status, 404)
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => { await app.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], serveClient: 'yes' as never }).ready() }, { code: 'FST_ROOMS_INVALID_OPTION', message: /serveClient/ })
})

t.test('#21 a plugin running without its built client module answers 503 FST_ROOMS_CLIENT_NOT_BUILT, not a crash', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  registerClientRoutes(app, '/ws', undefined)
  const response = await app.inject({ method: 'GET', url: '/ws/client.js' })
  t.equal(response.statusCode, 503)
  t.same(response.json(), { statusCode: 503, code: 'FST_ROOMS_CLIENT_NOT_BUILT', error: 'Service Unavailable', message: 'the client module is not built (run `npm run build` in fastify-rooms)' })
})

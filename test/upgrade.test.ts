// Every check before the 101, with the exact HTTP status, and the token sources.
import t from 'tap'
import { connect, ORIGIN, rejectedUpgrade, sign, startServer } from './helpers/index.js'

t.test('a valid token and allowed Origin get welcome with the user and the limits', async (t) => {
  const server = await startServer(t)
  const client = await connect(server, 'alice')
  const welcome = client.frames[0]!
  t.equal(welcome.type, 'welcome')
  t.same(welcome.payload.user, { id: 'alice' })
  t.equal(welcome.payload.protocol, 1)
  t.equal(welcome.payload.heartbeatMs, 30000)
  t.equal(welcome.payload.maxPayload, 65536)
  t.type(welcome.payload.connectionId, 'string')
  t.type(welcome.time, 'number')
  t.equal(server.app.rooms.stats().handshakes.ok, 1)
})

t.test('Origin not in allowedOrigins → 403, no socket', async (t) => {
  const server = await startServer(t)
  const answer = await rejectedUpgrade(server, 'alice', { origin: 'http://evil.test' })
  t.equal(answer.status, 403)
  t.match(JSON.parse(answer.body), { code: 'FST_ROOMS_FORBIDDEN_ORIGIN' })
  t.equal(server.app.rooms.stats().connections, 0)
  t.equal(server.app.rooms.stats().handshakes.forbidden_origin, 1)
})

t.test('missing Origin → 403 unless allowMissingOrigin', async (t) => {
  const strict = await startServer(t)
  t.equal((await rejectedUpgrade(strict, 'alice', { origin: null })).status, 403)
  const lenient = await startServer(t, { allowMissingOrigin: true })
  const client = await connect(lenient, 'alice', { origin: null })
  t.equal(client.frames[0]!.type, 'welcome')
})

t.test("allowedOrigins '*' admits any Origin", async (t) => {
  const server = await startServer(t, { allowedOrigins: '*' })
  const client = await connect(server, 'alice', { origin: 'http://anything.test' })
  t.equal(client.frames[0]!.type, 'welcome')
})

t.test('401 for every kind of bad token', async (t) => {
  const server = await startServer(t)
  const now = Math.floor(Date.now() / 1000)
  const cases: Array<[string, string | null, string]> = [
    ['missing', null, 'no token'],
    ['malformed', 'not-a-jwt', 'token malformed'],
    ['badly signed', sign('alice').slice(0, -4) + 'AAAA', 'token rejected'],
    ['expired', sign('alice', { exp: now - 60 }), 'token expired'],
    ['not yet valid', sign('alice', { nbf: now + 600 }), 'token not yet valid'],
    ['no subject', sign('alice', { sub: undefined }), 'token does not name a user'],
  ]
  for (const [name, token, message] of cases) {
    const answer = await rejectedUpgrade(server, 'alice', { token })
    t.equal(answer.status, 401, name)
    const body = JSON.parse(answer.body)
    t.equal(body.code, 'FST_ROOMS_UNAUTHORIZED', name)
    t.match(body.message, message, name)
  }
  t.equal(server.app.rooms.stats().handshakes.unauthorized, cases.length)
  t.equal(server.app.rooms.stats().connections, 0)
})

t.test('a token signed with another secret → 401', async (t) => {
  const { createSigner } = await import('fast-jwt')
  const foreign = createSigner({ key: 'some-other-secret' })({ sub: 'alice' })
  const server = await startServer(t)
  t.equal((await rejectedUpgrade(server, 'alice', { token: foreign })).status, 401)
})

t.test('token from the bearer.<jwt> subprotocol: server answers rooms.v1 and never echoes the token', async (t) => {
  const server = await startServer(t)
  const client = await connect(server, 'bob', { via: 'protocol' })
  t.equal(client.ws.protocol, 'rooms.v1')
  t.equal(client.frames[0]!.payload.user.id, 'bob')
})

t.test('?token= is not read unless token.fromQuery is on (401: no token)', async (t) => {
  const server = await startServer(t)
  const token = sign('carol')
  const refused = await rejectedUpgrade(server, 'carol', { token, via: 'query' })
  t.equal(refused.status, 401)
  t.match(JSON.parse(refused.body), { code: 'FST_ROOMS_UNAUTHORIZED', message: 'Unauthorized: no token (send Authorization: Bearer or the bearer.<jwt> subprotocol)' })
  t.notOk(server.logs.join('').includes(token.split('.')[2]!), 'the refused token is not logged')
})

t.test('#10: a token under an encoded parameter name (?%74oken=) is redacted too', async (t) => {
  const server = await startServer(t, { token: { fromQuery: true } })
  const token = sign('carol')
  const client = await connect(server, 'carol', { token: null, path: `/ws?%74oken=${token}` })
  await client.close()
  const logs = server.logs.join('')
  t.ok(logs.includes('%74oken=[REDACTED]'), 'logged with the name as sent, the value redacted')
  t.notOk(logs.includes(token.split('.')[2]!), 'the token never reaches a log line')
})

t.test('#10: near-miss paths (/ws/, /WS, POST /ws) log no token when the host installs requestSerializer', async (t) => {
  const { requestSerializer } = await import('../lib/index.js')
  const server = await startServer(t, {}, { serializers: { req: requestSerializer } })
  const token = sign('carol')
  for (const [method, path] of [['GET', '/ws/'], ['GET', '/WS'], ['POST', '/ws'], ['GET', '/nowhere']] as const) {
    const response = await fetch(`http://127.0.0.1:${server.port}${path}?token=${token}&access_token=${token}`, { method })
    t.equal(response.status, 404, `${method} ${path}`)
    await response.arrayBuffer()
  }
  const lines = server.logs.map((line) => JSON.parse(line) as { msg: string; req?: { url: string } })
  const requestLines = lines.filter((line) => line.req !== undefined)
  t.equal(requestLines.length, 4, 'one incoming-request line per request')
  for (const line of requestLines) t.match(line.req!.url, /\?token=\[REDACTED\]&access_token=\[REDACTED\]$/)
  // Fastify's default 404 handler writes the raw URL into its message: the host's own handler decides that (README).
  const leaking = lines.filter((line) => JSON.stringify(line).includes(token.split('.')[2]!))
  t.same(leaking.map((line) => line.msg.replace(/\?.*/, '')), ['Route GET:/ws/', 'Route GET:/WS', 'Route POST:/ws', 'Route GET:/nowhere'].map((route) => route),
    'only the default 404 handler\'s "Route … not found" lines, which the host owns')
})

t.test('token from ?token= (token.fromQuery) is accepted and redacted from every log line', async (t) => {
  const server = await startServer(t, { token: { fromQuery: true } })
  const token = sign('carol')
  const client = await connect(server, 'carol', { token, via: 'query' })
  await client.close()
  const refused = sign('carol', { exp: Math.floor(Date.now() / 1000) - 10 })
  t.equal((await rejectedUpgrade(server, 'carol', { token: refused, via: 'query' })).status, 401)
  const logs = server.logs.join('')
  t.ok(logs.includes('token=[REDACTED]'), 'the URL is logged, redacted')
  t.notOk(logs.includes(token), 'accepted token never logged')
  t.notOk(logs.includes(refused), 'refused token never logged')
  t.notOk(logs.includes(token.split('.')[2]!), 'not even its signature')
})

t.test('tokens from the Authorization header and subprotocol are not logged either', async (t) => {
  const server = await startServer(t)
  const headerToken = sign('dave')
  const protocolToken = sign('erin')
  await (await connect(server, 'dave', { token: headerToken })).close()
  await (await connect(server, 'erin', { token: protocolToken, via: 'protocol' })).close()
  const logs = server.logs.join('')
  t.notOk(logs.includes(headerToken))
  t.notOk(logs.includes(protocolToken))
})

t.test('handshake rate per IP → 429 from @fastify/rate-limit', async (t) => {
  const server = await startServer(t, { handshakeRateLimit: { max: 2, timeWindow: 60_000 } })
  await connect(server, 'alice')
  await connect(server, 'alice')
  const answer = await rejectedUpgrade(server, 'alice')
  t.equal(answer.status, 429)
  t.equal(answer.headers['x-ratelimit-limit'], '2')
  t.equal(server.app.rooms.stats().handshakes.rate_limited, 1)
})

t.test('failed handshakes count toward the rate limit too', async (t) => {
  const server = await startServer(t, { handshakeRateLimit: { max: 2, timeWindow: 60_000 } })
  t.equal((await rejectedUpgrade(server, 'alice', { token: 'garbage' })).status, 401)
  t.equal((await rejectedUpgrade(server, 'alice', { token: 'garbage' })).status, 401)
  t.equal((await rejectedUpgrade(server, 'alice')).status, 429)
})

t.test('maxConnections and maxConnectionsPerUser → 503', async (t) => {
  const server = await startServer(t, { maxConnections: 2, maxConnectionsPerUser: 1 })
  await connect(server, 'alice')
  const perUser = await rejectedUpgrade(server, 'alice')
  t.equal(perUser.status, 503)
  t.match(JSON.parse(perUser.body).message, 'connection limit for this user')
  await connect(server, 'bob')
  const total = await rejectedUpgrade(server, 'carol')
  t.equal(total.status, 503)
  t.match(JSON.parse(total.body).message, 'connection limit reached')
  t.equal(server.app.rooms.stats().handshakes.unavailable, 2)
})

t.test('a plain GET on the route runs the same checks; passing them → 426 Upgrade Required', async (t) => {
  const server = await startServer(t)
  const response = await fetch(`http://127.0.0.1:${server.port}/ws`, { headers: { origin: ORIGIN, authorization: `Bearer ${sign('alice')}` } })
  t.equal(response.status, 426)
  t.equal(response.headers.get('upgrade'), 'websocket')
  t.match(await response.json(), { code: 'FST_ROOMS_UPGRADE_REQUIRED', message: 'credentials accepted; this route only accepts WebSocket upgrades' })
  const anonymous = await fetch(`http://127.0.0.1:${server.port}/ws`, { headers: { origin: ORIGIN } })
  t.equal(anonymous.status, 401)
  t.equal(server.app.rooms.stats().handshakes.unauthorized ?? 0, 0, 'a diagnostic request is not counted as a handshake')
})

t.test('path is configurable', async (t) => {
  const server = await startServer(t, { path: '/realtime' })
  const client = await connect(server, 'alice', { path: '/realtime' })
  t.equal(client.frames[0]!.type, 'welcome')
  t.equal((await rejectedUpgrade(server, 'alice', { path: '/ws' })).status, 404)
})

// Issue #20: the SSE fallback under attack, over real HTTP on 127.0.0.1 with raw clients — a session id
// is no way back in after a kick, a logout or a token's exp; re-attaching resets no budget; failed
// sign-ins and forwarded frames are metered; the stream's id is the server's, never a handler's echo.
import t from 'tap'
import Type from 'typebox'
import { defineMessage } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { componentAvailable } from './helpers/components.js'
import { connect, ORIGIN, sign, startServer, until } from './helpers/index.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { login, sessionServer } from './helpers/sessions.js'
import { httpRequest, openSession, openStream, waitForFrame, type SseStream } from './helpers/sse.js'

const closeEvent = (stream: SseStream) => stream.events.filter((event) => event.event === 'close').map((event) => JSON.parse(event.data) as { code: number; reason: string })
const positionsOf = (id: string) => JSON.parse(Buffer.from(id.slice(3), 'base64url').toString()) as Array<[string, number, string]>

async function cut (stream: SseStream, server: { app: { rooms: { stats(): { sse: { streams: number } } } } }): Promise<void> {
  stream.close()
  await stream.ended
  await until(() => server.app.rooms.stats().sse.streams === 0, 'the server saw the stream go')
}

t.test('#20 cookie sessions: after logout and disconnectUser the session id alone attaches nothing; a stream must sign in again', async (t) => {
  const { server } = await sessionServer(t, undefined, { sse: { sessionIdleMs: 60_000 }, presence: false })
  const cookie = await login(server, 'alice')
  const open = async () => {
    const opened = await httpRequest(server.port, 'POST', '/ws/sse', { cookie, origin: ORIGIN }, '{}')
    t.equal(opened.status, 201)
    return opened.body.stream as string
  }
  const path = await open()
  const stream = await openStream(server.port, path, { cookie })
  await waitForFrame(stream, (frame) => frame.type === 'welcome', 'welcome')
  const logout = await fetch(`http://127.0.0.1:${server.port}/logout`, { method: 'POST', headers: { cookie } })
  t.equal(logout.status, 200)
  await stream.ended
  t.same(closeEvent(stream), [{ code: 4001, reason: 'signed out' }], 'the stream is closed with the host\'s code')
  const replay = await openStream(server.port, path, { 'last-event-id': 'p1.W10' })
  t.equal(replay.status, 404, 'the session id alone, no cookie: no such session')
  t.equal(replay.frames.length, 0, 'no welcome, nothing replayed')
  t.equal((await openStream(server.port, path, { cookie })).status, 404, 'nor with the old cookie')

  // Signed in again: a stream without the cookie is refused, and that ends the session.
  const fresh = await login(server, 'alice')
  const opened = await httpRequest(server.port, 'POST', '/ws/sse', { cookie: fresh, origin: ORIGIN }, '{}')
  const first = await openStream(server.port, opened.body.stream, { cookie: fresh })
  await waitForFrame(first, (frame) => frame.type === 'welcome', 'welcome')
  await cut(first, server)
  const anonymous = await httpRequest(server.port, 'GET', opened.body.stream, { origin: ORIGIN })
  t.same([anonymous.status, anonymous.body.code], [401, 'FST_ROOMS_UNAUTHORIZED'], 'a stream whose request is not signed in is refused')
  t.equal((await openStream(server.port, opened.body.stream, { cookie: fresh })).status, 404, 'and the session is over')
  t.equal(server.app.rooms.stats().connections, 0)
})

t.test('#20 JWT: disconnectUser ends the user\'s sessions, attached or not', async (t) => {
  const server = await startServer(t, { sse: { sessionIdleMs: 60_000 }, presence: false })
  const { stream, token } = await openSession(server.port, 'bob')
  const waiting = await httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${token}`, origin: ORIGIN }, '{}')
  t.equal(waiting.status, 201)
  t.same(server.app.rooms.stats().sse, { sessions: 2, streams: 1 })
  await server.app.rooms.disconnectUser('bob', 4003, 'banned')
  await stream.ended
  t.same(closeEvent(stream), [{ code: 4003, reason: 'banned' }])
  t.equal((await openStream(server.port, stream.path)).status, 404, 'the kicked stream\'s session is gone')
  t.equal((await openStream(server.port, waiting.body.stream)).status, 404, 'and so is the session that had no stream')
  t.same(server.app.rooms.stats().sse, { sessions: 0, streams: 0 })
})

t.test('#20 JWT: a session ends at its token\'s exp — the stream is closed 1008 and the id attaches nothing after', async (t) => {
  const server = await startServer(t, { sse: { sessionIdleMs: 60_000 }, presence: false })
  const exp = Math.floor(Date.now() / 1000) + 2
  const token = sign('carol', { exp })
  const opened = await httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${token}`, origin: ORIGIN }, '{}')
  const idle = await httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${token}`, origin: ORIGIN }, '{}')
  const stream = await openStream(server.port, opened.body.stream)
  await waitForFrame(stream, (frame) => frame.type === 'welcome', 'welcome')
  await stream.ended
  t.same(closeEvent(stream), [{ code: 1008, reason: 'token expired' }])
  await until(() => server.app.rooms.stats().sse.sessions === 0, 'both sessions ended at exp')
  const again = await openStream(server.port, opened.body.stream, { 'last-event-id': stream.lastEventId ?? 'p1.W10' })
  t.same([again.status, again.frames.length], [404, 0], 'no welcome, no replay after exp')
  t.equal((await openStream(server.port, idle.body.stream)).status, 404, 'a session that never attached ends at exp too')
})

t.test('#20 an auth refresh on the stream moves the session\'s end: a re-attach after the first token\'s exp is welcome and stays', async (t) => {
  const server = await startServer(t, { sse: { sessionIdleMs: 60_000 }, presence: false })
  const exp = Math.floor(Date.now() / 1000) + 2
  const token = sign('dora', { exp })
  const opened = await httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${token}`, origin: ORIGIN }, '{}')
  const post = (frame: object) => httpRequest(server.port, 'POST', opened.body.stream, { authorization: `Bearer ${sign('dora')}`, origin: ORIGIN }, JSON.stringify(frame))
  const stream = await openStream(server.port, opened.body.stream)
  await waitForFrame(stream, (frame) => frame.type === 'welcome', 'welcome')
  await post({ type: 'auth', id: 'a', payload: { token: sign('dora') } })
  await waitForFrame(stream, (frame) => frame.type === 'ack' && frame.id === 'a', 'the refresh')
  await cut(stream, server)
  await until(() => Date.now() > exp * 1000 + 100, 'the first token\'s exp passed')
  const again = await openStream(server.port, opened.body.stream)
  t.equal(again.status, 200)
  await waitForFrame(again, (frame) => frame.type === 'welcome', 'welcome again')
  await post({ type: 'ping', id: 'p' })
  await waitForFrame(again, (frame) => frame.type === 'pong', 'a pong: the stream was not closed for the old exp')
  t.same(closeEvent(again), [])
})

t.test('#20 re-attaching resets no budget: the frame bucket and the abuse window are the session\'s', async (t) => {
  const server = await startServer(t, { sse: { sessionIdleMs: 60_000 }, presence: false, rateLimit: { messagesPerSecond: 0.01, burst: 3 }, abuseLimit: { rateLimited: 3, windowMs: 60_000 } })
  const { stream, post } = await openSession(server.port, 'erin')
  for (let n = 1; n <= 4; n++) await post({ type: 'ping', id: `p${n}` })
  await waitForFrame(stream, (frame) => frame.id === 'p4', 'the fourth answer')
  t.same(stream.frames.filter((frame) => frame.id?.toString().startsWith('p')).map((frame) => frame.type === 'error' ? frame.payload.code : frame.type), ['pong', 'pong', 'pong', 'rate_limited'])
  await cut(stream, server)
  const again = await openStream(server.port, stream.path)
  await waitForFrame(again, (frame) => frame.type === 'welcome', 'welcome')
  await post({ type: 'ping', id: 'q1' })
  const answer = await waitForFrame(again, (frame) => frame.id === 'q1', 'the answer after re-attaching')
  t.same([answer.type, answer.payload?.code], ['error', 'rate_limited'], 'still empty: the bucket did not refill by re-attaching')
  for (let n = 2; n <= 4; n++) await post({ type: 'ping', id: `q${n}` })
  await again.ended
  t.same(closeEvent(again), [{ code: 1008, reason: 'rate limit abuse' }], 'the abuse window counted across both streams')
  t.equal((await openStream(server.port, stream.path)).status, 404, 'a policy close ends the session')
})

t.test('#20 upgrades, session opens and stream attaches share one handshake budget per address', async (t) => {
  const server = await startServer(t, { sse: { sessionIdleMs: 60_000 }, presence: false, handshakeRateLimit: { max: 3, timeWindow: 60_000 } })
  const socket = await connect(server, 'finn')
  t.equal(socket.ws.readyState, 1, 'an upgrade: the first')
  const opened = await httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${sign('finn')}`, origin: ORIGIN }, '{}')
  t.equal(opened.status, 201, 'a session open: the second')
  const stream = await openStream(server.port, opened.body.stream)
  t.equal(stream.status, 200, 'an attach: the third')
  await cut(stream, server)
  const refused = await httpRequest(server.port, 'GET', opened.body.stream, { origin: ORIGIN })
  t.same([refused.status, refused.body.statusCode], [429, 429], 'the fourth attach is refused')
  t.equal((await httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${sign('finn')}`, origin: ORIGIN }, '{}')).status, 429, 'and so is a session open')
  t.equal(server.app.rooms.stats().handshakes.rate_limited, 1, 'the refused open counts as a handshake')
})

t.test('#20 guessed cookies on a frame POST: 401 until the address\'s budget is spent, then 429 without calling authenticate', async (t) => {
  const { server, calls } = await sessionServer(t, undefined, { sse: { sessionIdleMs: 60_000 }, presence: false, handshakeRateLimit: { max: 4, timeWindow: 60_000 } })
  const cookie = await login(server, 'gus')
  const opened = await httpRequest(server.port, 'POST', '/ws/sse', { cookie, origin: ORIGIN }, '{}')
  const stream = await openStream(server.port, opened.body.stream, { cookie })
  await waitForFrame(stream, (frame) => frame.type === 'welcome', 'welcome')
  const before = calls.count
  const statuses: number[] = []
  for (let n = 0; n < 8; n++) {
    statuses.push((await httpRequest(server.port, 'POST', opened.body.stream, { cookie: `sid=s%3Aguess${n}.x`, origin: ORIGIN }, '{"type":"ping"}')).status)
  }
  t.same(statuses, [401, 401, 401, 401, 429, 429, 429, 429])
  t.equal(calls.count - before, 4, 'authenticate ran for the first four only')
  const stranger = await httpRequest(server.port, 'POST', '/ws/sse/not-a-session-id', { cookie, origin: ORIGIN }, '{"type":"ping"}')
  t.equal(stranger.status, 404, 'an unknown session is 404 before any sign-in')
})

t.test('#20 a handler that echoes client data cannot write the stream\'s id, and the id counts only joined rooms', async (t) => {
  const server = await startServer(t, {
    sse: true,
    presence: false,
    messages: { echo: defineMessage({ schema: Type.Record(Type.String(), Type.Unknown()), handler: (_ctx, payload) => payload }) },
  })
  const { stream, post } = await openSession(server.port, 'hal')
  const forged = { room: 'admin:ops', seq: 7, epoch: 'forged', rooms: { 'admin:x': { result: 'replayed', seq: 1, epoch: 'forged' } } }
  await post({ type: 'echo', id: 'e', payload: forged })
  await waitForFrame(stream, (frame) => frame.type === 'ack' && frame.id === 'e', 'the echo')
  await post({ type: 'echo', id: 'e2', payload: { nested: { deep: [1, 2, { type: 'joined' }] } } })
  await waitForFrame(stream, (frame) => frame.id === 'e2', 'another echo')
  t.notOk(stream.events.some((event) => event.id !== undefined), 'no echo moved the id')
  await post({ type: 'join', id: 'j', room: 'lobby' })
  const ack = await waitForFrame(stream, (frame) => frame.type === 'ack' && frame.id === 'j', 'the join')
  await server.app.rooms.broadcast('lobby', 'note', { n: 1 })
  await waitForFrame(stream, (frame) => frame.type === 'note', 'the note')
  t.same(positionsOf(stream.lastEventId!), [['lobby', 1, ack.payload.epoch]], 'the id is the joined room\'s position only')
  t.notOk(server.logs.some((line) => line.includes('"level":50')), 'nothing logged at error level')
})

t.test('#20 a stream whose client POSTs nothing is cut by the heartbeat; the user\'s next session gets the slot', async (t) => {
  const server = await startServer(t, { sse: { sessionIdleMs: 60_000 }, presence: false, heartbeatMs: 50, maxConnectionsPerUser: 1 })
  const { stream, token } = await openSession(server.port, 'ivy')
  await stream.ended
  t.same(closeEvent(stream), [], 'cut, not closed with a code')
  await until(() => server.app.rooms.stats().connections === 0, 'the connection is gone')
  const next = await httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${token}`, origin: ORIGIN }, '{}')
  t.equal(next.status, 201, 'the frozen session made room')
})

t.test('#20 HEAD attaches no stream; OPTIONS and a ?token= open are logged redacted; the POSTs answer with CORS headers', async (t) => {
  const server = await startServer(t, { sse: true, presence: false, token: { fromQuery: true } })
  const token = sign('jay')
  const opened = await httpRequest(server.port, 'POST', `/ws/sse?token=${token}`, { origin: ORIGIN }, '{}')
  t.equal(opened.status, 201)
  t.equal((await httpRequest(server.port, 'HEAD', opened.body.stream, { origin: ORIGIN })).status, 405, 'HEAD is not a stream')
  t.same(server.app.rooms.stats().sse, { sessions: 1, streams: 0 }, 'and attached nothing')
  const preflight = await httpRequest(server.port, 'OPTIONS', opened.body.stream, { origin: ORIGIN, 'access-control-request-method': 'POST' })
  t.equal(preflight.status, 204)
  t.notOk(server.logs.some((line) => line.includes(opened.body.session)), 'the session id is in no log line')
  t.notOk(server.logs.some((line) => line.includes(token)), 'nor the token')
  const response = await fetch(`http://127.0.0.1:${server.port}/ws/sse`, { method: 'POST', headers: { authorization: `Bearer ${token}`, origin: ORIGIN, 'content-type': 'application/json' }, body: '{}' })
  t.equal(response.status, 201)
  t.equal(response.headers.get('access-control-allow-origin'), ORIGIN, 'a page on an allowed origin can read the answer')
  const { stream } = await response.json() as { stream: string }
  const frame = await fetch(`http://127.0.0.1:${server.port}${stream}`, { method: 'POST', headers: { authorization: `Bearer ${token}`, origin: ORIGIN, 'content-type': 'application/json' }, body: '{"type":"ping"}' })
  t.equal(frame.headers.get('access-control-allow-origin'), ORIGIN)
  const foreign = await fetch(`http://127.0.0.1:${server.port}/ws/sse`, { method: 'POST', headers: { authorization: `Bearer ${token}`, origin: 'https://evil.test', 'content-type': 'application/json' }, body: '{}' })
  t.same([foreign.status, foreign.headers.get('access-control-allow-origin')], [403, null], 'a foreign origin gets neither')
})

if (componentAvailable(t, redisMissing(), 'SSE forwarding on Redis')) {
  t.test('#20 frames forwarded to other processes are metered per user, and only well-formed session ids travel', async (t) => {
    const redis = await startRedis(t)
    const options = { sse: true, presence: false, rateLimit: { messagesPerSecond: 0.01, burst: 5 } } as const
    const a = await startServer(t, { ...options, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const b = await startServer(t, { ...options, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    t.ok(a.port > 0)
    const token = sign('kim')
    const statuses: number[] = []
    for (let n = 0; n < 8; n++) {
      const id = `${'x'.repeat(28)}${String(n).padStart(4, '0')}`
      statuses.push((await httpRequest(b.port, 'POST', `/ws/sse/${id}`, { authorization: `Bearer ${token}`, origin: ORIGIN }, '{"type":"ping"}')).status)
    }
    t.same(statuses, [202, 202, 202, 202, 202, 429, 429, 429], 'the user\'s frame budget, then 429')
    t.equal((await httpRequest(b.port, 'POST', '/ws/sse/short', { authorization: `Bearer ${token}`, origin: ORIGIN }, '{"type":"ping"}')).status, 404, 'an id no process makes is not forwarded')
  })
}

// Observability: Prometheus metrics and stats() after scripted traffic, and the structured log lines.
import t from 'tap'
import Type from 'typebox'
import { Registry } from 'prom-client'
import { defineMessage } from '../lib/index.js'
import { connect, rejectedUpgrade, sign, startServer, until } from './helpers/index.js'

/** The value of one sample in Prometheus text, e.g. metric(text, 'rooms_errors_total', { code: 'unknown_type' }). */
function metric (text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`)
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue
    const match = /^([a-z_]+)(?:\{(.*)\})? (\S+)$/.exec(line)
    if (match === null || match[1] !== name) continue
    const present = (match[2] ?? '').split(',').filter(Boolean)
    if (wanted.length === present.length && wanted.every((label) => present.includes(label))) return Number(match[3])
  }
  return undefined
}

const chat = {
  chat: defineMessage({
    schema: Type.Object({ text: Type.String() }),
    room: true,
    handler: (ctx, payload) => ctx.rooms.broadcast(ctx.room!, 'chat', { from: ctx.user.id, text: payload.text }),
  }),
}

t.test('metrics after scripted traffic: handshakes, messages, errors, closes, connections, broadcast latency', async (t) => {
  const server = await startServer(t, { metrics: true, presence: false, messages: chat })
  for (let i = 0; i < 3; i++) t.equal((await rejectedUpgrade(server, 'x', { token: 'bad' })).status, 401)
  t.equal((await rejectedUpgrade(server, 'x', { origin: 'http://evil.test' })).status, 403)
  const alice = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  await alice.join('lobby')
  await bob.join('lobby')
  await alice.request({ type: 'chat', room: 'lobby', payload: { text: 'one' } })
  await alice.request({ type: 'chat', room: 'lobby', payload: { text: 'two' } })
  await alice.request({ type: 'teleport' })
  await until(() => bob.frames.filter((f) => f.type === 'chat').length === 2)
  await bob.close(1000)
  await until(() => server.app.rooms.stats().connections === 1)

  const { contentType, body } = await server.app.rooms.metrics()
  t.match(contentType, 'text/plain')
  t.equal(metric(body, 'rooms_handshakes_total', { result: 'unauthorized' }), 3)
  t.equal(metric(body, 'rooms_handshakes_total', { result: 'forbidden_origin' }), 1)
  t.equal(metric(body, 'rooms_handshakes_total', { result: 'ok' }), 2)
  t.equal(metric(body, 'rooms_messages_total', { direction: 'in', type: 'join' }), 2)
  t.equal(metric(body, 'rooms_messages_total', { direction: 'in', type: 'chat' }), 2)
  t.equal(metric(body, 'rooms_messages_total', { direction: 'in', type: '(unknown)' }), 1)
  t.equal(metric(body, 'rooms_messages_total', { direction: 'out', type: 'chat' }), 4, 'two chats × two members')
  t.equal(metric(body, 'rooms_errors_total', { code: 'unknown_type' }), 1)
  t.equal(metric(body, 'rooms_closes_total', { code: '1000' }), 1)
  t.equal(metric(body, 'rooms_connections'), 1)
  t.equal(metric(body, 'rooms_rooms'), 1)
  t.equal(metric(body, 'rooms_members'), 1)
  t.equal(metric(body, 'rooms_broadcast_seconds_count'), 2, 'one observation per publish, not per recipient')
  t.equal(metric(body, 'rooms_broadcast_seconds_bucket', { le: '+Inf' }), 2)

  const stats = server.app.rooms.stats()
  t.same(stats.handshakes, { unauthorized: 3, forbidden_origin: 1, ok: 2 })
  t.equal(stats.broadcast.count, 2)
  t.ok(stats.broadcast.maxSeconds <= stats.broadcast.sumSeconds, 'the largest observation is within the sum of the two')
})

t.test('resumes, rate-limited handshakes and slow-consumer closes are counted', async (t) => {
  const server = await startServer(t, {
    metrics: true, presence: false, handshakeRateLimit: { max: 3, timeWindow: 60_000 }, history: { maxEvents: 2, maxAgeMs: 60_000 },
  })
  const first = await connect(server, 'alice')
  const { payload: joined } = await first.join('r')
  await first.close()
  await server.app.rooms.broadcast('r', 'x', {})
  const second = await connect(server, 'alice')
  t.equal((await second.request({ type: 'resume', payload: { rooms: { r: { seq: 0, epoch: joined.epoch } } } })).payload.rooms.r.result, 'replayed')
  for (let i = 0; i < 3; i++) await server.app.rooms.broadcast('r', 'x', {})
  const third = await connect(server, 'alice')
  t.equal((await third.request({ type: 'resume', payload: { rooms: { r: { seq: 0, epoch: joined.epoch } } } })).payload.rooms.r.result, 'reset')
  t.equal((await rejectedUpgrade(server, 'alice')).status, 429)
  const { body } = await server.app.rooms.metrics()
  t.equal(metric(body, 'rooms_resumes_total', { result: 'replayed' }), 1)
  t.equal(metric(body, 'rooms_resumes_total', { result: 'reset' }), 1)
  t.equal(metric(body, 'rooms_handshakes_total', { result: 'rate_limited' }), 1)
  t.same(server.app.rooms.stats().resumes, { replayed: 1, reset: 1 })
})

t.test('client latency reports feed a histogram; a time that is not recent is invalid_message', async (t) => {
  const server = await startServer(t, { metrics: true, presence: false })
  const alice = await connect(server, 'alice')
  await alice.join('r')
  await server.app.rooms.broadcast('r', 'x', {})
  const event = await alice.nextOfType('x')
  t.equal((await alice.request({ type: 'latency', payload: { time: event.time } })).type, 'ack')
  const stale = await alice.request({ type: 'latency', payload: { time: event.time! - 3_600_000 } })
  t.same(stale.payload.details.errors, [{ path: '/payload/time', message: 'must be a server time from the last minute' }])
  const { body } = await server.app.rooms.metrics()
  t.equal(metric(body, 'rooms_client_latency_seconds_count'), 1)
  t.equal(server.app.rooms.stats().clientLatency.count, 1)
})

t.test("metrics go to the host's prom-client Registry when one is passed", async (t) => {
  const registry = new Registry()
  const server = await startServer(t, { metrics: registry })
  await connect(server, 'alice')
  const text = await registry.metrics()
  t.equal(metric(text, 'rooms_connections'), 1)
  t.equal(metric(text, 'rooms_handshakes_total', { result: 'ok' }), 1)
})

t.test('metrics() without metrics → FST_ROOMS_METRICS_DISABLED; stats() always works', async (t) => {
  const server = await startServer(t)
  await t.rejects(server.app.rooms.metrics(), { code: 'FST_ROOMS_METRICS_DISABLED' })
  t.equal(server.app.rooms.stats().connections, 0)
})

t.test('logs: one line per open, close and rejected handshake; no payload, no token', async (t) => {
  const server = await startServer(t, { messages: chat })
  const token = sign('alice')
  const alice = await connect(server, 'alice', { token })
  await alice.join('lobby')
  await alice.request({ type: 'chat', room: 'lobby', payload: { text: 'a very private sentence' } })
  const welcome = alice.frames[0]!
  await alice.close(1000)
  await until(() => server.app.rooms.stats().connections === 0)
  const badToken = sign('mallory', { exp: Math.floor(Date.now() / 1000) - 60 })
  await rejectedUpgrade(server, 'mallory', { token: badToken })
  const lines = server.logs.map((line) => JSON.parse(line) as Record<string, any>)
  const opened = lines.filter((line) => line.msg === 'fastify-rooms: connection opened')
  t.equal(opened.length, 1)
  t.match(opened[0], { userId: 'alice', connectionId: welcome.payload.connectionId })
  const closed = lines.filter((line) => line.msg === 'fastify-rooms: connection closed')
  t.equal(closed.length, 1)
  t.match(closed[0], { userId: 'alice', connectionId: welcome.payload.connectionId, code: 1000, rooms: 1 })
  t.type(closed[0]!.durationMs, 'number')
  const rejected = lines.filter((line) => typeof line.msg === 'string' && line.msg.startsWith('fastify-rooms: handshake rejected'))
  t.equal(rejected.length, 1)
  t.match(rejected[0], { reason: 'unauthorized', problem: 'expired', msg: 'fastify-rooms: handshake rejected: Unauthorized: token expired' })
  const all = server.logs.join('')
  t.notOk(all.includes('a very private sentence'), 'chat payloads are never logged')
  t.notOk(all.includes(token) || all.includes(badToken), 'tokens are never logged')
})

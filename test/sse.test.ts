// Issue #16: the Server-Sent Events fallback over real HTTP on 127.0.0.1 — a session opened by a POST with
// the socket's admission, frames on the stream and up as POSTs, resume from Last-Event-ID with no gap and
// no duplicate, exactly-once retries, admission failures, a stream that stops reading.
import t from 'tap'
import Type from 'typebox'
import { defineMessage } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { componentAvailable } from './helpers/components.js'
import { connect, ORIGIN, range, sign, startServer, until } from './helpers/index.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { httpRequest, openSession, openStream, waitForFrame } from './helpers/sse.js'

const seqs = (frames: Array<{ type: string; seq?: number }>, type: string) => frames.filter((frame) => frame.type === type).map((frame) => frame.seq!)

t.test('#16 a session: welcome on the stream, frames as POSTs, room events with the positions as their SSE id; a socket and a stream share a room', async (t) => {
  const server = await startServer(t, { sse: true, presence: false, metrics: true })
  const { stream, post } = await openSession(server.port, 'alice')
  t.equal(stream.status, 200)
  t.match(stream.response.headers['content-type'], 'text/event-stream')
  t.equal(stream.response.headers['cache-control'], 'no-store')
  const welcome = stream.frames.find((frame) => frame.type === 'welcome')!
  t.equal(welcome.payload.user.id, 'alice')
  t.same(await post({ type: 'join', id: 'j', room: 'lobby' }), { status: 202, body: { accepted: true } })
  const ack = await waitForFrame(stream, (frame) => frame.type === 'ack' && frame.id === 'j', 'the join ack')
  t.equal(ack.payload.seq, 0)
  const socket = await connect(server, 'bob')
  await socket.join('lobby')
  socket.send({ type: 'ping', id: 'p' })
  await socket.nextOfType('pong')
  for (let n = 1; n <= 3; n++) await server.app.rooms.broadcast('lobby', 'note', { n })
  await waitForFrame(stream, (frame) => frame.type === 'note' && frame.seq === 3, 'the third note')
  t.same(seqs(stream.frames, 'note'), [1, 2, 3], 'in order, once each')
  t.same((await socket.nextOfType('note')).seq, 1, 'the socket in the same room gets them too')
  const last = stream.events.filter((event) => event.id !== undefined).at(-1)!
  t.match(last.id, /^p1\./, 'room events carry an id')
  t.same(JSON.parse(Buffer.from(last.id!.slice(3), 'base64url').toString()), [['lobby', 3, ack.payload.epoch]], 'the id is the rooms\' positions')
  t.equal(server.app.rooms.stats().connections, 2, 'stats() counts the stream as a connection')
  t.same(server.app.rooms.stats().sse, { sessions: 1, streams: 1 }, 'and says how many are SSE')
  const metrics = (await server.app.rooms.metrics()).body
  t.match(metrics, /^rooms_sse_streams 1$/m, 'the metric counts the stream')
  t.match(metrics, /^rooms_connections 2$/m)
  t.match(metrics, /^rooms_connections_by_transport\{transport="websocket"\} 1$/m)
  t.match(metrics, /^rooms_connections_by_transport\{transport="sse"\} 1$/m)
  t.same(await server.app.rooms.members('lobby'), [{ id: 'alice' }, { id: 'bob' }], 'members() sees both')
})

t.test('#16 a stream cut mid-way reconnects with Last-Event-ID: the events it missed exactly once, then live', async (t) => {
  const server = await startServer(t, { sse: true, presence: false })
  const { stream, post } = await openSession(server.port, 'carol')
  await post({ type: 'join', id: 'j', room: 'feed' })
  await waitForFrame(stream, (frame) => frame.type === 'ack', 'joined')
  for (let n = 1; n <= 5; n++) await server.app.rooms.broadcast('feed', 'tick', { n })
  await waitForFrame(stream, (frame) => frame.seq === 5, 'five')
  const path = stream.path
  stream.close()
  await stream.ended
  await until(() => server.app.rooms.stats().connections === 0, 'the server saw the stream go')
  for (let n = 6; n <= 12; n++) await server.app.rooms.broadcast('feed', 'tick', { n })
  const again = await openStream(server.port, path, { 'last-event-id': stream.lastEventId! })
  await waitForFrame(again, (frame) => frame.type === 'tick' && frame.seq === 12, 'the replay up to 12')
  t.equal(again.frames.find((frame) => frame.type === 'ack' && frame.id === 'sse-resume')?.payload.rooms.feed.result, 'replayed')
  await server.app.rooms.broadcast('feed', 'tick', { n: 13 })
  await waitForFrame(again, (frame) => frame.seq === 13, 'then live')
  t.same([...seqs(stream.frames, 'tick'), ...seqs(again.frames, 'tick')], range(1, 13), 'every event exactly once across the cut')
})

t.test('#16 frames over POST are validated and answered on the stream; a retried id runs its handler once', async (t) => {
  let runs = 0
  const server = await startServer(t, {
    sse: true,
    presence: false,
    messages: { order: defineMessage({ schema: Type.Object({ item: Type.String() }), handler: (_ctx, payload) => ({ order: ++runs, item: payload.item }) }) },
  })
  const { stream, post } = await openSession(server.port, 'dave')
  await post({ type: 'order', id: 'o-1', payload: { item: 'tea' } })
  await post({ type: 'order', id: 'o-1', payload: { item: 'tea' } })
  await until(() => stream.frames.filter((frame) => frame.type === 'ack' && frame.id === 'o-1').length === 2, 'both answers')
  t.same(stream.frames.filter((frame) => frame.id === 'o-1').map((frame) => frame.payload), [{ order: 1, item: 'tea' }, { order: 1, item: 'tea' }])
  t.equal(runs, 1, 'the handler ran once')
  await post({ type: 'order', id: 'bad', payload: { item: 3 } })
  const error = await waitForFrame(stream, (frame) => frame.type === 'error' && frame.id === 'bad', 'the validation error')
  t.equal(error.payload.code, 'invalid_message')
  await post({ type: 'nope', id: 'x' })
  t.equal((await waitForFrame(stream, (frame) => frame.type === 'error' && frame.id === 'x', 'unknown type')).payload.code, 'unknown_type')
  const notJson = await httpRequest(server.port, 'POST', stream.path, { authorization: `Bearer ${sign('dave')}`, origin: ORIGIN, 'content-type': 'application/json' }, '{"type":')
  t.equal(notJson.status, 202, 'a malformed frame is accepted for the connection to answer, as on a socket')
  t.equal((await waitForFrame(stream, (frame) => frame.type === 'error' && frame.payload.code === 'invalid_json', 'the parse error')).type, 'error')
})

t.test('#16 admission is the socket\'s: Origin, token, limits — before any stream; a session is its user\'s only', async (t) => {
  const server = await startServer(t, { sse: { sessionIdleMs: 60_000 }, presence: false, maxConnectionsPerUser: 1 })
  const open = (headers: Record<string, string>) => httpRequest(server.port, 'POST', '/ws/sse', headers, '{}')
  t.equal((await open({ origin: ORIGIN })).status, 401, 'no token')
  t.equal((await open({ origin: ORIGIN, authorization: 'Bearer not-a-jwt' })).status, 401, 'a bad token')
  t.equal((await open({ origin: 'https://evil.test', authorization: `Bearer ${sign('erin')}` })).status, 403, 'a foreign Origin')
  const { session, stream } = await openSession(server.port, 'erin')
  t.equal((await open({ origin: ORIGIN, authorization: `Bearer ${sign('erin')}` })).status, 503, 'past maxConnectionsPerUser')
  const first = await open({ origin: ORIGIN, authorization: `Bearer ${sign('quinn')}` })
  const second = await open({ origin: ORIGIN, authorization: `Bearer ${sign('quinn')}` })
  t.same([first.status, second.status], [201, 201], 'at the user\'s limit, a session without a stream makes room for the new one')
  t.equal((await openStream(server.port, first.body.stream)).status, 404, 'the older session is gone')
  t.equal((await openStream(server.port, second.body.stream)).status, 200, 'the newer one streams')
  const mallory = await httpRequest(server.port, 'POST', `/ws/sse/${session}`, { origin: ORIGIN, authorization: `Bearer ${sign('mallory')}` }, JSON.stringify({ type: 'join', room: 'x' }))
  t.same([mallory.status, mallory.body.code], [403, 'FST_ROOMS_NOT_YOUR_SESSION'], 'another user\'s POST is refused')
  t.equal((await httpRequest(server.port, 'POST', '/ws/sse/no-such-session', { origin: ORIGIN, authorization: `Bearer ${sign('erin')}` }, '{}')).status, 404)
  t.equal((await openStream(server.port, '/ws/sse/no-such-session')).status, 404, 'an unknown session has no stream')
  const foreign = await openStream(server.port, `/ws/sse/${session}`, { origin: 'https://evil.test' })
  t.equal(foreign.status, 403, 'nor a stream for a foreign Origin')
  t.same(server.app.rooms.stats().handshakes, { unauthorized: 2, forbidden_origin: 1, ok: 2, unavailable: 1 }, 'refused session opens count as handshakes; ok counts a stream started')
  t.ok(server.logs.some((line) => line.includes('fastify-rooms: SSE session rejected')), 'and say so in the log')
  t.notOk(server.logs.some((line) => line.includes(sign('erin'))), 'no token in the logs')
  t.notOk(server.logs.some((line) => line.includes(session)), 'nor the session id (the stream\'s credential)')
  t.ok(server.logs.some((line) => line.includes('/ws/sse/[REDACTED]')), 'its requests are logged redacted')
  t.equal(stream.status, 200)
})

t.test('#16 a stream that stops reading is closed as a slow consumer; Last-Event-ID then resumes it without a gap', async (t) => {
  const server = await startServer(t, { sse: true, presence: false, maxBufferedBytes: 64 * 1024, rateLimit: false })
  const { stream, post } = await openSession(server.port, 'frank')
  await post({ type: 'join', id: 'j', room: 'firehose' })
  await waitForFrame(stream, (frame) => frame.type === 'ack', 'joined')
  stream.pause()
  const body = 'x'.repeat(8 * 1024)
  let published = 0
  while (published < 4000 && server.app.rooms.stats().slowConsumerCloses === 0) {
    await server.app.rooms.broadcast('firehose', 'blob', { body })
    published++
    if (published % 8 === 0) await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(server.app.rooms.stats().slowConsumerCloses, 1, `closed after ${published} publishes`)
  stream.response.resume()
  await stream.ended
  await until(() => server.app.rooms.stats().connections === 0, 'the server saw it close')
  t.equal(server.app.rooms.stats().closes['1013'], 1, 'counted as a 1013 close')
  t.same(stream.events.filter((event) => event.event === 'close').map((event) => JSON.parse(event.data)), [{ code: 1013, reason: 'slow consumer' }], 'the last event says why')
  const got = seqs(stream.frames, 'blob')
  t.same(got, range(1, got.length), 'what arrived is a gap-free prefix')
  const again = await openStream(server.port, stream.path, { 'last-event-id': stream.lastEventId! })
  await waitForFrame(again, (frame) => frame.type === 'blob' && frame.seq === published, 'the rest')
  t.same([...got, ...seqs(again.frames, 'blob')], range(1, published), 'every event once across the close')
})

if (componentAvailable(t, redisMissing(), 'SSE on Redis')) {
  t.test('#16 two processes on Redis: the stream on one, POSTs on the other; a stream that moves to the other process resumes there with no gap', async (t) => {
    const redis = await startRedis(t)
    const a = await startServer(t, { sse: true, presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const b = await startServer(t, { sse: true, presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const { stream, token } = await openSession(a.port, 'gwen')
    const postOnB = (frame: object) => httpRequest(b.port, 'POST', stream.path, { authorization: `Bearer ${token}`, origin: ORIGIN }, JSON.stringify(frame))
    t.same(await postOnB({ type: 'join', id: 'j', room: 'chat' }), { status: 202, body: { accepted: true, forwarded: true } })
    const ack = await waitForFrame(stream, (frame) => frame.type === 'ack' && frame.id === 'j', 'the join, POSTed on the other process')
    t.equal(ack.payload.room, 'chat')
    const mallory = await httpRequest(b.port, 'POST', stream.path, { authorization: `Bearer ${sign('mallory')}`, origin: ORIGIN }, JSON.stringify({ type: 'leave', id: 'evil', room: 'chat' }))
    t.equal(mallory.status, 202, 'another process cannot tell whose the session is')
    for (let n = 1; n <= 4; n++) await b.app.rooms.broadcast('chat', 'line', { n })
    await waitForFrame(stream, (frame) => frame.seq === 4, 'events published on the other process')
    t.notOk(stream.frames.some((frame) => frame.id === 'evil'), 'but the session ignores a frame of another user')
    stream.close()
    await stream.ended
    for (let n = 5; n <= 9; n++) await a.app.rooms.broadcast('chat', 'line', { n })
    // The balancer sends the reconnect to B, which never saw the session: a new one, resuming the old stream's position.
    const reopened = await httpRequest(b.port, 'POST', '/ws/sse', { authorization: `Bearer ${token}`, origin: ORIGIN }, JSON.stringify({ resume: stream.lastEventId }))
    t.equal(reopened.status, 201)
    const moved = await openStream(b.port, reopened.body.stream)
    await waitForFrame(moved, (frame) => frame.type === 'line' && frame.seq === 9, 'the replay on B')
    t.same([...seqs(stream.frames, 'line'), ...seqs(moved.frames, 'line')], range(1, 9), 'every event exactly once across processes')
  })
}

t.test('#16 hooks, server-side joins and presence see a stream as a connection; a session without a stream expires', async (t) => {
  const disconnects: number[] = []
  const server = await startServer(t, {
    sse: { sessionIdleMs: 200 },
    onConnect: async (ctx) => { await ctx.join(`user:${ctx.user.id}`) },
    onDisconnect: (_ctx, { code }) => { disconnects.push(code) },
  })
  const { stream, post } = await openSession(server.port, 'kim')
  const joined = await waitForFrame(stream, (frame) => frame.type === 'joined', 'the onConnect join')
  t.equal(joined.room, 'user:kim')
  const watcher = await connect(server, 'lee')
  await watcher.join('lobby')
  await post({ type: 'join', id: 'j', room: 'lobby' })
  t.same((await watcher.next((frame) => frame.type === 'presence' && frame.payload.user.id === 'kim', 'kim joins')).payload, { action: 'join', user: { id: 'kim' } }, 'presence announces the stream\'s user')
  await server.app.rooms.join({ userId: 'kim' }, 'vip')
  t.equal((await waitForFrame(stream, (frame) => frame.type === 'joined' && frame.room === 'vip', 'the server-side join')).room, 'vip')
  await server.app.rooms.sendToUser('kim', 'notice', { hi: true })
  t.same((await waitForFrame(stream, (frame) => frame.type === 'notice', 'sendToUser')).payload, { hi: true })
  stream.close()
  await until(() => disconnects.length === 1, 'onDisconnect ran')
  t.same((await watcher.next((frame) => frame.type === 'presence' && frame.payload.action === 'leave', 'kim leaves')).payload, { action: 'leave', user: { id: 'kim' } })
  // No stream for sessionIdleMs: the session is gone.
  await until(() => server.app.rooms.stats().sse.sessions === 0, 'the idle session dropped')
  t.equal((await openStream(server.port, stream.path)).status, 404, 'its stream can no longer be opened')
})

t.test('#16 the session POST counts against the handshake rate limit; streams carry heartbeat comments and stay open while their client POSTs', async (t) => {
  const server = await startServer(t, { sse: true, presence: false, handshakeRateLimit: { max: 3, timeWindow: 60_000 }, heartbeatMs: 50 })
  const open = () => httpRequest(server.port, 'POST', '/ws/sse', { authorization: `Bearer ${sign('pat')}`, origin: ORIGIN }, '{}')
  const answers = [await open(), await open()]
  t.same(answers.map((answer) => answer.status), [201, 201])
  const stream = await openStream(server.port, answers[0]!.body.stream)
  t.equal(stream.status, 200, 'the stream is the third handshake')
  t.equal((await open()).status, 429, 'the fourth within the window is refused 429')
  const seen = { comments: 0 }
  stream.response.on('data', (chunk: Buffer) => { seen.comments += (chunk.toString().match(/^: ping$/gm) ?? []).length })
  const post = () => httpRequest(server.port, 'POST', answers[0]!.body.stream, { authorization: `Bearer ${sign('pat')}`, origin: ORIGIN }, JSON.stringify({ type: 'ping' }))
  for (let round = 0; round < 200 && seen.comments < 4; round++) {
    await post()
    await until(() => seen.comments > 0, 'a heartbeat comment')
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  t.ok(seen.comments >= 4, `${seen.comments} comments`)
  t.equal(stream.response.destroyed, false, 'the stream stays open while its client POSTs')
})

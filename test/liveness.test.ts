// Heartbeats, token expiry and refresh, and backpressure: the socket-level limits.
import t from 'tap'
import { connect, sign, startServer, tcpSocketOf, until } from './helpers/index.js'

const nowSeconds = () => Math.floor(Date.now() / 1000)

t.test('a peer that stops answering pings is terminated and leaves its rooms', async (t) => {
  const server = await startServer(t, { heartbeatMs: 100 })
  const watcher = await connect(server, 'watcher')
  await watcher.join('lobby')
  // ws answers pings by itself; autoPong: false makes this client a dead peer.
  const silent = await connect(server, 'silent', { wsOptions: { autoPong: false } })
  await silent.join('lobby')
  t.same((await watcher.nextOfType('presence')).payload, { action: 'join', user: { id: 'watcher' } })
  t.same((await watcher.nextOfType('presence')).payload, { action: 'join', user: { id: 'silent' } })
  const leave = await watcher.nextOfType('presence')
  t.same(leave.payload, { action: 'leave', user: { id: 'silent' } })
  t.equal((await silent.closed).code, 1006, 'terminated, no close frame')
  t.same(await server.app.rooms.members('lobby'), [{ id: 'watcher' }])
  // The watcher answers pings (ws does it for us) and survives many heartbeats.
  watcher.send({ type: 'ping', id: 'still' })
  t.equal((await watcher.nextOfType('pong')).id, 'still')
})

t.test('token exp reached without refresh → token_expired, then close 1008 "token expired"', async (t) => {
  const server = await startServer(t)
  const client = await connect(server, 'alice', { token: sign('alice', { exp: nowSeconds() + 1 }) })
  const error = await client.nextOfType('error')
  t.same(error.payload, { code: 'token_expired', message: 'token expired; send auth with a fresh token before exp' })
  t.same(await client.closed, { code: 1008, reason: 'token expired' })
})

t.test('auth with a newer token for the same sub extends the connection', async (t) => {
  const server = await startServer(t)
  const shortExp = nowSeconds() + 1
  const refreshed = await connect(server, 'alice', { token: sign('alice', { exp: shortExp }) })
  const control = await connect(server, 'alice', { token: sign('alice', { exp: shortExp }) })
  const longExp = nowSeconds() + 3600
  const ack = await refreshed.request({ type: 'auth', payload: { token: sign('alice', { exp: longExp }) } })
  t.same(ack.payload, { exp: longExp })
  // The control socket, never refreshed, closes at the old exp; the refreshed one stays open past it.
  t.equal((await control.closed).code, 1008)
  refreshed.send({ type: 'ping', id: 'after-old-exp' })
  t.equal((await refreshed.nextOfType('pong')).id, 'after-old-exp')
})

t.test('auth refusals: another user → forbidden, expired → token_expired, garbage → forbidden', async (t) => {
  const server = await startServer(t)
  const client = await connect(server, 'alice')
  const other = await client.request({ type: 'auth', payload: { token: sign('mallory') } })
  t.same(other.payload, { code: 'forbidden', message: 'token is for a different user' })
  const expired = await client.request({ type: 'auth', payload: { token: sign('alice', { exp: nowSeconds() - 5 }) } })
  t.same(expired.payload, { code: 'token_expired', message: 'token expired' })
  const garbage = await client.request({ type: 'auth', payload: { token: 'xyz' } })
  t.same(garbage.payload, { code: 'forbidden', message: 'token malformed' })
  const missing = await client.request({ type: 'auth', payload: {} })
  t.equal(missing.payload.code, 'invalid_message')
  t.same(missing.payload.details.errors, [{ path: '/payload', message: 'must have required properties token' }])
})

t.test('a reader that stalls is closed 1013 once its send buffer passes maxBufferedBytes; others get everything', async (t) => {
  const maxBufferedBytes = 64 * 1024
  const server = await startServer(t, { maxBufferedBytes, presence: false })
  const reader = await connect(server, 'reader')
  const stalled = await connect(server, 'stalled')
  await reader.join('feed')
  await stalled.join('feed')
  // Stop reading: the kernel buffers fill, then ws's buffer grows on the server.
  const rawSocket = tcpSocketOf(stalled.ws)
  rawSocket.pause()
  const payload = { blob: 'x'.repeat(16 * 1024) }
  const maxPublishes = 4000 // 64 MB at most: bounded even if the close never came
  let published = 0
  let largestBuffer = 0
  while (published < maxPublishes && server.app.rooms.stats().slowConsumerCloses === 0) {
    await server.app.rooms.broadcast('feed', 'blob', payload)
    published++
    largestBuffer = Math.max(largestBuffer, server.app.rooms.stats().maxBufferedBytes)
    // Let the server's socket flush what it can between publishes.
    if (published % 8 === 0) await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(server.app.rooms.stats().slowConsumerCloses, 1, `closed after ${published} publishes`)
  t.ok(largestBuffer > 0 && largestBuffer <= maxBufferedBytes, `the stalled socket's buffer grew (to ${largestBuffer} bytes), never above the limit`)
  rawSocket.resume()
  const closed = await stalled.closed
  t.same(closed, { code: 1013, reason: 'slow consumer' })
  // The healthy reader got every event, in order.
  for (let seq = 1; seq <= published; seq++) {
    const event = await reader.nextOfType('blob')
    if (event.seq !== seq) {
      t.fail(`reader got seq ${event.seq}, expected ${seq}`)
      break
    }
  }
  t.equal(reader.frames.filter((f) => f.type === 'blob').length, published)
  await until(() => server.app.rooms.stats().connections === 1, 'server saw the close')
  t.equal(server.app.rooms.stats().closes['1013'], 1)
})

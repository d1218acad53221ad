// Issue #12: the client never drops a queued request and always says why a connection is refused; the
// route answers a plain GET (the browser client's diagnostic) with the same checks as an upgrade.
import net from 'node:net'
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { createClient, type RoomsClient, type RoomsClientError, type WebSocketLike } from '../lib/client/index.js'
import { defineMessage } from '../lib/index.js'
import { bounded, connect, ORIGIN, sign, startServer, until, type TestServer } from './helpers/index.js'
import { startProxy, type TcpProxy } from './helpers/proxy.js'

/** ws in Node, with the browser's Origin. */
class BrowserLikeWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

/** As a browser's WebSocket behaves: a refused handshake is an error event without a message, then 1006. */
class StatusHidingWebSocket implements WebSocketLike {
  private readonly ws: WebSocket
  onopen: WebSocketLike['onopen'] = null
  onmessage: WebSocketLike['onmessage'] = null
  onclose: WebSocketLike['onclose'] = null
  onerror: WebSocketLike['onerror'] = null

  constructor (url: string, protocols?: string | string[]) {
    this.ws = new WebSocket(url, protocols, { origin: ORIGIN })
    this.ws.onopen = (event) => this.onopen?.(event)
    this.ws.onmessage = (event) => this.onmessage?.(event)
    this.ws.onclose = (event) => this.onclose?.(event)
    this.ws.onerror = () => this.onerror?.({ type: 'error' })
  }

  get readyState (): number {
    return this.ws.readyState
  }

  send (data: string): void {
    this.ws.send(data)
  }

  close (code?: number, reason?: string): void {
    this.ws.close(code, reason)
  }

  terminate (): void {
    this.ws.terminate()
  }
}

const fast = { initialMs: 5, maxMs: 50 }

function errors (client: RoomsClient): RoomsClientError[] {
  const seen: RoomsClientError[] = []
  client.on('error', (err) => seen.push(err))
  return seen
}

function stateReached (client: RoomsClient, state: string): Promise<void> {
  if (client.state === state) return Promise.resolve()
  return bounded(new Promise<void>((resolve) => {
    const off = client.on('state', (value) => {
      if (value !== state) return
      off()
      resolve()
    })
  }), `state ${state}`)
}

function clientFor (t: { teardown(fn: () => unknown): void }, url: string, options: Partial<Parameters<typeof createClient>[0]> = {}): RoomsClient {
  const client = createClient({ url, getToken: () => sign('alice'), WebSocket: BrowserLikeWebSocket, backoff: fast, ...options })
  t.teardown(() => client.close())
  return client
}

for (const [name, Impl] of [['Node (status from the upgrade)', BrowserLikeWebSocket], ['browser-like (status from the diagnostic request)', StatusHidingWebSocket]] as const) {
  // Node's fetch sends no Origin (a browser's same-origin GET carries Sec-Fetch-Site instead; Chromium tests that).
  const diagnosable = Impl === StatusHidingWebSocket ? { allowMissingOrigin: true } : {}
  t.test(`#12 ${name}: a bad token is "unauthorized"; the second refusal in a row stops the client`, async (t) => {
    const server = await startServer(t, { handshakeRateLimit: false, ...diagnosable })
    let tokens = 0
    const client = clientFor(t, `${server.url}/ws`, { WebSocket: Impl, getToken: () => `bad.token.${++tokens}` })
    const seen = errors(client)
    const queued = client.request('anything', { n: 1 })
    await stateReached(client, 'closed')
    t.same(seen.map((err) => [err.code, (err.details as { status?: number }).status]), [['unauthorized', 401], ['unauthorized', 401]])
    // Browsers learn the server's reason from the diagnostic; Node from the refused handshake's own body (#21).
    t.match(seen[0]!.message, /^Unauthorized: token malformed$/)
    t.equal((seen[0]!.details as { serverCode?: string }).serverCode, 'FST_ROOMS_UNAUTHORIZED')
    t.notMatch(seen[0]!.message, /bad\.token/, 'the token is not echoed')
    t.equal(tokens, 2, 'a fresh token was fetched for the second attempt, and no third')
    await t.rejects(queued, { code: 'unauthorized' }, 'a queued request rejects with the reason, not silently')
    t.equal(server.app.rooms.stats().handshakes.unauthorized, 2, 'two upgrades, no hammering')
  })

  t.test(`#12 ${name}: one refusal, then a good token: the client recovers`, async (t) => {
    const server = await startServer(t, { handshakeRateLimit: false, ...diagnosable })
    let tokens = 0
    const client = clientFor(t, `${server.url}/ws`, { WebSocket: Impl, getToken: () => (++tokens === 1 ? sign('alice', { exp: Math.floor(Date.now() / 1000) - 10 }) : sign('alice')) })
    const seen = errors(client)
    await stateReached(client, 'open')
    t.same(seen.map((err) => err.code), ['unauthorized'])
    if (Impl === StatusHidingWebSocket) t.match(seen[0]!.message, /token expired/)
  })

  t.test(`#12 ${name}: a disallowed Origin is "origin_not_allowed", twice, then closed`, async (t) => {
    const server = await startServer(t, { allowedOrigins: ['http://other.test'], handshakeRateLimit: false })
    const client = clientFor(t, `${server.url}/ws`, { WebSocket: Impl })
    const seen = errors(client)
    await stateReached(client, 'closed')
    t.same(seen.map((err) => [err.code, (err.details as { status?: number }).status]), [['origin_not_allowed', 403], ['origin_not_allowed', 403]])
  })

  t.test(`#12 ${name}: a full server is "unavailable" and the client keeps trying`, async (t) => {
    const server = await startServer(t, { maxConnections: 1, handshakeRateLimit: false, ...diagnosable })
    const holder = await connect(server, 'holder')
    const client = clientFor(t, `${server.url}/ws`, { WebSocket: Impl })
    const seen = errors(client)
    await until(() => seen.length >= 3, 'three refused attempts')
    t.same(seen.slice(0, 3).map((err) => [err.code, (err.details as { status?: number }).status]), Array(3).fill(['unavailable', 503]))
    t.not(client.state, 'closed', 'still trying')
    await holder.close()
    await stateReached(client, 'open')
  })

  t.test(`#12 ${name}: 429 is "rate_limited" with the server's Retry-After, and the next try waits for it`, async (t) => {
    const server = await startServer(t, { handshakeRateLimit: { max: 1, timeWindow: '30 seconds' }, ...diagnosable })
    await connect(server, 'first') // uses the one handshake of the window
    const client = clientFor(t, `${server.url}/ws`, { WebSocket: Impl })
    const seen = errors(client)
    const reconnect = bounded(new Promise<{ delayMs: number }>((resolve) => client.on('reconnect', resolve)), 'the reconnect after 429')
    const { delayMs } = await reconnect
    t.equal(seen[0]!.code, 'rate_limited')
    const { status, retryAfterMs } = seen[0]!.details as { status: number; retryAfterMs: number }
    t.equal(status, 429)
    t.ok(retryAfterMs >= 1000 && retryAfterMs <= 30_000, `Retry-After ${retryAfterMs} ms`)
    t.ok(delayMs >= retryAfterMs, `the next attempt waits ${Math.round(delayMs)} ms, not the 50 ms backoff`)
  })
}

t.test('#12 a handshake that never completes is "connect_timeout", and the client retries', async (t) => {
  const sockets = new Set<net.Socket>()
  const blackHole = net.createServer((socket) => sockets.add(socket.on('error', () => {})))
  await bounded(new Promise<void>((resolve) => blackHole.listen(0, '127.0.0.1', resolve)), 'the black hole listening')
  t.teardown(() => new Promise<void>((resolve) => {
    for (const socket of sockets) socket.destroy()
    blackHole.close(() => resolve())
  }))
  const port = (blackHole.address() as net.AddressInfo).port
  const client = clientFor(t, `ws://127.0.0.1:${port}/ws`, { connectTimeoutMs: 100 })
  const seen = errors(client)
  await until(() => seen.length >= 2, 'two timed-out attempts')
  t.same(seen.slice(0, 2).map((err) => err.code), ['connect_timeout', 'connect_timeout'])
  t.not(client.state, 'closed')
})

t.test('#12 nothing listening is "network", and the client retries', async (t) => {
  const server = net.createServer()
  await bounded(new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve)), 'a free port')
  const port = (server.address() as net.AddressInfo).port
  await new Promise<void>((resolve) => server.close(() => resolve()))
  for (const Impl of [BrowserLikeWebSocket, StatusHidingWebSocket]) {
    const client = clientFor(t, `ws://127.0.0.1:${port}/ws`, { WebSocket: Impl })
    const seen = errors(client)
    await until(() => seen.length >= 2, 'two failed attempts')
    t.same(seen.slice(0, 2).map((err) => err.code), ['network', 'network'])
    client.close()
  }
})

t.test('#12 the default backoff is capped at 5 s, with full jitter', async (t) => {
  const client = createClient({ url: 'ws://127.0.0.1:9/ws', WebSocket: BrowserLikeWebSocket, autoConnect: false })
  t.teardown(() => client.close())
  client.on('error', () => {})
  const delays: number[] = []
  for (let i = 0; i < 20; i++) {
    const scheduled = bounded(new Promise<number>((resolve) => {
      const off = client.on('reconnect', ({ delayMs }) => {
        off()
        resolve(delayMs)
      })
    }), 'a reconnect scheduled')
    client.connect()
    client.attempt = 30 // long past the cap: initialMs × 2^30
    delays.push(await scheduled)
    client.close()
  }
  t.ok(delays.every((delay) => delay >= 0 && delay <= 5000), `every delay within 5 s (max ${Math.round(Math.max(...delays))} ms)`)
  t.ok(delays.some((delay) => delay > 1000), 'jittered over the whole range, not stuck at initialMs')
})

async function diagnostic (server: TestServer, headers: Record<string, string>, method = 'GET'): Promise<{ status: number; body: any; headers: Headers }> {
  const response = await fetch(`http://127.0.0.1:${server.port}/ws`, { method, headers })
  const text = await response.text()
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text), headers: response.headers }
}

t.test('#12 the diagnostic GET: the same checks as an upgrade, a JSON answer, no token echoed, no socket', async (t) => {
  const server = await startServer(t, { handshakeRateLimit: false })
  const bad = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl'
  const refused = await diagnostic(server, { origin: ORIGIN, authorization: `Bearer ${bad}` })
  t.equal(refused.status, 401)
  t.same(refused.body, { statusCode: 401, code: 'FST_ROOMS_UNAUTHORIZED', error: 'Unauthorized', message: 'Unauthorized: token rejected' })
  t.notMatch(JSON.stringify(refused.body), bad.slice(0, 20), 'the token is not echoed')
  t.equal((await diagnostic(server, { origin: 'http://evil.test', authorization: `Bearer ${sign('alice')}` })).status, 403)
  const accepted = await diagnostic(server, { origin: ORIGIN, authorization: `Bearer ${sign('alice')}` })
  t.equal(accepted.status, 426)
  t.equal(accepted.body.code, 'FST_ROOMS_UPGRADE_REQUIRED')
  t.equal(server.app.rooms.stats().connections, 0, 'no socket')
  t.same(server.app.rooms.stats().handshakes, {}, 'diagnostics are not counted as handshakes')
})

t.test('#12 the diagnostic GET: CORS headers for allowed origins only; the preflight likewise', async (t) => {
  const server = await startServer(t, { handshakeRateLimit: false })
  const allowed = await diagnostic(server, { origin: ORIGIN })
  t.equal(allowed.status, 401)
  t.equal(allowed.headers.get('access-control-allow-origin'), ORIGIN)
  t.equal(allowed.headers.get('access-control-allow-credentials'), 'true')
  t.match(allowed.headers.get('access-control-expose-headers'), /retry-after/)
  t.match(allowed.headers.get('vary'), /Origin/)
  const other = await diagnostic(server, { origin: 'http://evil.test' })
  t.equal(other.status, 403)
  t.equal(other.headers.get('access-control-allow-origin'), null, 'no CORS for a disallowed origin')
  const preflight = await diagnostic(server, { origin: ORIGIN, 'access-control-request-method': 'GET', 'access-control-request-headers': 'authorization' }, 'OPTIONS')
  t.equal(preflight.status, 204)
  t.equal(preflight.headers.get('access-control-allow-origin'), ORIGIN)
  t.match(preflight.headers.get('access-control-allow-headers'), /authorization/)
  const refusedPreflight = await diagnostic(server, { origin: 'http://evil.test', 'access-control-request-method': 'GET' }, 'OPTIONS')
  t.equal(refusedPreflight.status, 403)
  t.equal(refusedPreflight.headers.get('access-control-allow-origin'), null)
})

t.test('#12 the diagnostic GET is rate-limited with the upgrades', async (t) => {
  const server = await startServer(t, { handshakeRateLimit: { max: 2, timeWindow: '1 minute' } })
  await connect(server, 'alice')
  t.equal((await diagnostic(server, { origin: ORIGIN })).status, 401)
  const limited = await diagnostic(server, { origin: ORIGIN })
  t.equal(limited.status, 429)
  t.ok(Number(limited.headers.get('retry-after')) > 0, 'with Retry-After')
})

t.test('#12 an outage past three request timeouts: every queued request is answered once, in order; queueTimeoutMs bounds one', async (t) => {
  const runs: string[] = []
  const server = await startServer(t, {
    presence: false,
    handshakeRateLimit: false,
    messages: {
      order: defineMessage({ schema: Type.Object({ item: Type.String() }), handler: (_ctx, payload) => { runs.push(payload.item); return { ordered: payload.item } } }),
    },
  })
  const proxy: TcpProxy = await startProxy(server.port)
  t.teardown(() => proxy.close())
  const requestTimeoutMs = 300
  const client = clientFor(t, `ws://127.0.0.1:${proxy.port}/ws`, { requestTimeoutMs })
  const seen = errors(client)
  await stateReached(client, 'open')
  t.same(await client.request('order', { item: 'before' }), { ordered: 'before' })

  // The server becomes unreachable: the socket is cut and every reconnect is refused, for longer than
  // three request timeouts and several failed attempts.
  proxy.refuse(true)
  proxy.cut()
  await stateReached(client, 'reconnecting')
  const answers: unknown[] = []
  const queued = ['a', 'b', 'c'].map((item) => client.request('order', { item }).then((answer) => { answers.push(answer); return answer }))
  const bounded1 = client.request('order', { item: 'gives up' }, { queueTimeoutMs: 1000 })
  await t.rejects(bounded1, { code: 'queue_timeout' }, 'queueTimeoutMs bounds the wait when given')
  const outageFrom = Date.now()
  const failedBefore = seen.length
  await until(() => seen.length >= failedBefore + 4 && Date.now() - outageFrom > 3 * requestTimeoutMs, 'four failed attempts over three request timeouts')
  t.same(answers, [], 'nothing answered while unreachable')
  t.ok(seen.every((err) => err.code === 'network'), `only network errors meanwhile (${seen.length})`)
  proxy.refuse(false)
  t.same(await bounded(Promise.all(queued), 'the queued answers', 15_000), [{ ordered: 'a' }, { ordered: 'b' }, { ordered: 'c' }])
  t.same(answers, [{ ordered: 'a' }, { ordered: 'b' }, { ordered: 'c' }], 'answered in order')
  t.same(runs, ['before', 'a', 'b', 'c'], 'each handler ran once, in order; the timed-out one never ran')
})

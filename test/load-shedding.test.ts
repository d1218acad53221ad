// Admission under overload: past maxHandshakesPerSecond, or while the event loop is behind, a handshake is
// refused with 503 and a spread Retry-After before its token is looked at; the client comes back after it,
// jittered; open sockets and injected connections are untouched.
import t from 'tap'
import Fastify from 'fastify'
import rooms from '../lib/index.js'
import { createClient, type RoomsClientError } from '../lib/client/index.js'
import WebSocket from 'ws'
import { monitorEventLoopDelay } from 'node:perf_hooks'
import { LoadShedding } from '../lib/admission/load-shedding.js'
import { bounded, connect, ORIGIN, rejectedUpgrade, retryUntil, SECRET, sign, startServer, type Client } from './helpers/index.js'

let pings = 0
/** Whether the socket answers a ping with its id. */
async function answersPing (client: Client): Promise<boolean> {
  const id = `ping-${++pings}`
  client.send({ type: 'ping', id })
  return (await client.nextOfType('pong')).id === id
}

class BrowserLikeWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

/** Busy for `ms` on this thread: what a storm of handshakes and resumes does to the event loop. */
function block (ms: number): void {
  const until = Date.now() + ms
  while (Date.now() < until) { /* the loop is behind */ }
}

t.test('#26 past maxHandshakesPerSecond: 503 with Retry-After before the token is verified; the open socket keeps working', async (t) => {
  // One a second: the refill is a second away, far more than the next handshake takes on a slow machine.
  const server = await startServer(t, { loadShedding: { maxHandshakesPerSecond: 1 }, handshakeRateLimit: false })
  const open = [await connect(server, 'a')]
  // A forged token: had it been verified, the answer would be 401.
  const refused = await rejectedUpgrade(server, 'mallory', { token: 'not.a.jwt' })
  t.equal(refused.status, 503)
  t.equal(JSON.parse(refused.body).code, 'FST_ROOMS_UNAVAILABLE')
  t.match(JSON.parse(refused.body).message, /overloaded/)
  const retryAfter = Number(refused.headers['retry-after'])
  t.ok(Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 2, `Retry-After ${retryAfter} s`)
  t.equal(server.app.rooms.stats().handshakes.unavailable, 1)
  for (const client of open) t.ok(await answersPing(client), 'an open socket is not affected')
  // The bucket refills (1 per second): a handshake gets through again.
  const later = await retryUntil(() => connect(server, 'dave'), 5000, 'a handshake after the refill')
  t.ok(await answersPing(later))
})

t.test('#26 while the event loop is behind: 503 with a spread Retry-After; admitted again once it caught up', async (t) => {
  const server = await startServer(t, { loadShedding: { maxEventLoopDelayMs: 100 } })
  const first = await connect(server, 'alice')
  // Behind for a while, not once: the shedder reads the p99 of the delays since the look before last,
  // and on a loaded machine (CI) that window can hold more than a hundred samples, in which one long pause
  // is under 1 %. Eight 150 ms pauses, each followed by turns in which the histograms' timers record it,
  // are what a loop that is behind looks like; the answer is then 503 however good the token.
  for (let pause = 0; pause < 8; pause++) {
    block(150)
    await twoTurns()
  }
  const refused = await rejectedUpgrade(server, 'bob')
  t.equal(refused.status, 503)
  t.equal(JSON.parse(refused.body).code, 'FST_ROOMS_UNAVAILABLE')
  t.ok(Number(refused.headers['retry-after']) >= 1, 'with Retry-After')
  t.ok(await answersPing(first), 'open sockets are served')
  const later = await retryUntil(() => connect(server, 'bob'), 5000, 'admitted once the loop caught up')
  t.ok(await answersPing(later))
})

/** Two turns of the loop: the histograms' timers ran since whatever blocked it. */
async function twoTurns (): Promise<void> {
  for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve))
}

t.test('Node\'s event-loop histogram forgets the delay in progress when it is reset (why the shedder keeps two)', async (t) => {
  const histogram = monitorEventLoopDelay({ resolution: 20 })
  histogram.enable()
  t.teardown(() => histogram.disable())
  await bounded(new Promise<void>((resolve) => { const poll = setInterval(() => { if (histogram.count > 0) { clearInterval(poll); resolve() } }, 5) }), 'a first sample')
  histogram.reset()
  block(300)
  await twoTurns()
  await new Promise((resolve) => setTimeout(resolve, 25))
  t.ok(histogram.max / 1e6 < 300, `the 300 ms block is not in the histogram (max ${(histogram.max / 1e6).toFixed(1)} ms): if Node starts keeping it, one histogram would do`)
})

t.test('CI finding: a loop blocked right after a look is still seen at the next one', async (t) => {
  const shedding = new LoadShedding({ maxEventLoopDelayMs: 100, maxHandshakesPerSecond: undefined })
  t.teardown(() => shedding.stop())
  // Both histograms sampling, as they are long before a server's first handshake.
  await new Promise((resolve) => setTimeout(resolve, 60))
  const start = Date.now()
  // A look 250 ms on (the clock is the argument), then the loop blocked before the histograms' next sample.
  t.equal(shedding.check(start + 250), undefined, 'nothing behind yet')
  block(600)
  await twoTurns()
  const shed = shedding.check(start + 250 + 250)
  t.equal(shed?.reason, 'event_loop_delay', 'the 600 ms block is seen')
  t.ok(shed !== undefined && shed.retryAfterSeconds >= 1 && shed.retryAfterSeconds <= 2, `Retry-After ${shed?.retryAfterSeconds} s`)
  // Caught up: two looks on, neither histogram holds the block any more.
  await new Promise((resolve) => setTimeout(resolve, 60))
  shedding.check(start + 250 * 3)
  await new Promise((resolve) => setTimeout(resolve, 60))
  t.equal(shedding.check(start + 250 * 4), undefined, 'admitted again once the loop caught up')
})

t.test('#26 an SSE session\'s open is shed the same way; injected connections never are', async (t) => {
  const server = await startServer(t, { sse: true, loadShedding: { maxHandshakesPerSecond: 1 }, handshakeRateLimit: false })
  await connect(server, 'alice')
  const response = await fetch(`http://127.0.0.1:${server.port}/ws/sse`, { method: 'POST', headers: { authorization: `Bearer ${sign('bob')}`, origin: ORIGIN, 'content-type': 'application/json' }, body: '{}' })
  t.equal(response.status, 503)
  t.ok(Number(response.headers.get('retry-after')) >= 1)
  t.equal(((await response.json()) as { code: string }).code, 'FST_ROOMS_UNAVAILABLE')
  const injected = await Promise.all(['c', 'd', 'e'].map((id) => server.app.rooms.inject({ id })))
  t.same(injected.map((client) => client.state), ['open', 'open', 'open'], 'a host\'s tests are not network clients')
  for (const client of injected) client.close()
})

t.test('#26 our client waits the Retry-After and up to as long again (jitter), then connects', async (t) => {
  const server = await startServer(t, { loadShedding: { maxHandshakesPerSecond: 1 }, handshakeRateLimit: false })
  await connect(server, 'first')
  const client = createClient({ url: `${server.url}/ws`, getToken: () => sign('alice'), WebSocket: BrowserLikeWebSocket, backoff: { initialMs: 5, maxMs: 50 } })
  t.teardown(() => client.close())
  const seen: RoomsClientError[] = []
  client.on('error', (err) => seen.push(err))
  const { delayMs } = await bounded(new Promise<{ delayMs: number }>((resolve) => client.on('reconnect', resolve)), 'the reconnect after 503')
  t.equal(seen[0]!.code, 'unavailable')
  const { status, retryAfterMs } = seen[0]!.details as { status: number; retryAfterMs: number }
  t.equal(status, 503)
  t.ok(retryAfterMs >= 1000 && retryAfterMs <= 2000, `Retry-After ${retryAfterMs} ms`)
  t.ok(delayMs >= retryAfterMs && delayMs <= 2 * retryAfterMs, `waits ${Math.round(delayMs)} ms: the Retry-After and a jitter of at most as long, not the 5 ms backoff`)
  await bounded(new Promise<void>((resolve) => client.on('state', (state) => { if (state === 'open') resolve() })), 'open after the wait')
})

t.test('#26 loadShedding options are checked at register', async (t) => {
  for (const [loadShedding, option] of [
    [{ maxEventLoopDelayMs: 5 }, 'loadShedding.maxEventLoopDelayMs'],
    [{ maxHandshakesPerSecond: 0 }, 'loadShedding.maxHandshakesPerSecond'],
    [{ maxPending: 3 }, 'loadShedding'],
    [true, 'loadShedding'],
  ] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => {
      await app.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], loadShedding: loadShedding as never })
      await app.ready()
    }, { code: 'FST_ROOMS_INVALID_OPTION', message: new RegExp(option.replace('.', '\\.')) }, JSON.stringify(loadShedding))
  }
})

t.test('#26 loadShedding: false never sheds, however far behind the loop is', async (t) => {
  const server = await startServer(t, { loadShedding: false })
  await connect(server, 'alice')
  const pending = connect(server, 'bob')
  block(1200)
  t.ok(await answersPing(await pending))
})

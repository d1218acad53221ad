// Issue #12 in real headless Chromium: queued requests survive a 30 s outage (offline through the DevTools
// protocol, and the server unreachable), and a refused connection says why — learned through the
// diagnostic request, since the browser hides the handshake's status.
import { chromium, type Browser, type Page } from 'playwright-core'
import t from 'tap'
import Type from 'typebox'
import { defineMessage, type RoomsOptions } from '../lib/index.js'
import { CHROMIUM_ARGS, CHROMIUM_PATH, chromiumMissing } from './helpers/chromium.js'
import { componentAvailable } from './helpers/components.js'
import { sign, startServer, type TestServer } from './helpers/index.js'
import { startProxy, type TcpProxy } from './helpers/proxy.js'

// The page's own script (plain JS: functions passed to page.evaluate are rewritten by tsx, whose name
// helpers the page does not have, so the logic lives here and the tests call it).
const PAGE = `<!doctype html><meta charset="utf-8"><title>client test</title>
<script type="module">
import { createClient } from '/ws/client.js'
window.start = (tokenPath, backoff, options = {}) => {
  const client = createClient({ url: 'ws://' + location.host + '/ws', getToken: async () => (await (await fetch(tokenPath)).json()).token, backoff, ...options })
  window.client = client
  window.errors = []
  window.reconnects = []
  client.on('reconnect', ({ delayMs }) => window.reconnects.push(delayMs))
  client.on('error', (err) => window.errors.push({ code: err.code, status: err.details?.status, message: err.message }))
  window.stopped = new Promise((resolve) => client.on('state', (state) => state === 'closed' && resolve()))
  window.welcomed = new Promise((resolve) => client.on('welcome', resolve))
}
window.queue = (items) => {
  window.answers = []
  window.done = Promise.all(items.map((item) => window.client.request('order', { item }).then((answer) => { window.answers.push(answer); return answer })))
  window.done.catch((err) => { window.failure = String(err) })
}
window.collect = (type) => {
  window.collected = []
  window.client.on(type, (frame) => window.collected.push(frame))
}
window.ready = true
</script>`

/** A server with the plugin, a page that loads the built client, and a /token route; through a proxy. */
async function pageServer (t: Parameters<typeof startServer>[0], options: Partial<RoomsOptions>, runs: string[] = []): Promise<{ server: TestServer; proxy: TcpProxy; origin: string }> {
  // The page's origin is the proxy's: the proxy listens first and is pointed at the server once it does.
  const proxy = await startProxy(0)
  t.teardown(() => proxy.close())
  const origin = `http://127.0.0.1:${proxy.port}`
  const server = await startServer(t, {
    presence: false,
    handshakeRateLimit: false,
    messages: {
      order: defineMessage({ schema: Type.Object({ item: Type.String() }), handler: (_ctx, payload) => { runs.push(payload.item); return { ordered: payload.item } } }),
    },
    allowedOrigins: [origin],
    ...options,
  }, {
    setup: (app) => {
      app.get('/', async (_request, reply) => reply.type('text/html').send(PAGE))
      app.get('/token', async (request) => ({ token: (request.query as { bad?: string }).bad === undefined ? sign('alice') : 'not.a.token' }))
    },
  })
  proxy.target = server.port
  return { server, proxy, origin }
}

async function openPage (t: { teardown(fn: () => unknown): void }, origin: string): Promise<{ browser: Browser; page: Page }> {
  const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  await page.goto(`${origin}/`)
  await page.waitForFunction(() => (window as { ready?: boolean }).ready === true, undefined, { timeout: 10_000 })
  return { browser, page }
}

if (componentAvailable(t, chromiumMissing(), 'browser client')) {
  t.test('#12 Chromium: an outage (offline, server unreachable) past three request timeouts: queued requests answered once, in order', { timeout: 120_000 }, async (t) => {
    const runs: string[] = []
    const { proxy, origin } = await pageServer(t, {}, runs)
    const { page } = await openPage(t, origin)
    await page.evaluate(() => (window as any).start('/token', { initialMs: 50, maxMs: 200 }, { requestTimeoutMs: 300 }))
    await page.evaluate(() => (window as any).welcomed)
    t.same(await page.evaluate(() => (window as any).client.request('order', { item: 'before' })), { ordered: 'before' })
    await page.context().setOffline(true)
    proxy.refuse(true)
    proxy.cut()
    await page.waitForFunction(() => (window as any).client.state !== 'open', undefined, { timeout: 10_000 })
    await page.evaluate(() => (window as any).queue(['a', 'b', 'c']))
    // The outage lasts past three request timeouts and several failed attempts (awaited, not slept).
    await page.waitForFunction((since) => (window as any).errors.length >= 4 && Date.now() - since > 900, Date.now(), { timeout: 30_000 })
    t.same(await page.evaluate(() => (window as any).answers), [], 'nothing answered while offline')
    proxy.refuse(false)
    await page.context().setOffline(false) // the page's 'online' event: the client reconnects at once
    const answers = await page.evaluate(() => (window as any).done)
    t.same(answers, [{ ordered: 'a' }, { ordered: 'b' }, { ordered: 'c' }])
    t.same(await page.evaluate(() => (window as any).answers), [{ ordered: 'a' }, { ordered: 'b' }, { ordered: 'c' }], 'answered in order')
    t.equal(await page.evaluate(() => (window as any).failure), undefined, 'no request timed out')
    t.same(runs, ['before', 'a', 'b', 'c'], 'each handler ran once')
    const errors: Array<{ code: string }> = await page.evaluate(() => (window as any).errors)
    // Offline, the app's own token fetch fails first ("token"); an attempt that gets as far as the socket says "network".
    t.ok(errors.length > 0 && errors.every((err) => err.code === 'network' || err.code === 'token'), `the failed attempts said why: ${JSON.stringify(errors.slice(0, 2))} (${errors.length})`)
    t.equal(await page.evaluate(() => (window as any).client.state), 'open')
  })

  t.test('#12 Chromium: the network coming back (the online event) reconnects at once, not after the backoff', { timeout: 120_000 }, async (t) => {
    const { proxy, origin } = await pageServer(t, {})
    const { page } = await openPage(t, origin)
    // An hour of backoff: only the online event can bring the client back within this test.
    await page.evaluate(() => (window as any).start('/token', { initialMs: 3_600_000, maxMs: 3_600_000 }))
    await page.evaluate(() => (window as any).welcomed)
    // The server becomes unreachable; once a reconnect is scheduled far away, the network drops and returns.
    proxy.refuse(true)
    proxy.cut()
    // Full jitter: the first delay is under 60 s once in 60, and then the next attempt (whose delay is the
    // one awaited) comes within that minute — hence a wait past it, not 20 s (which failed once in ~90 runs).
    await page.waitForFunction('window.reconnects.some((delay) => delay > 60000)', undefined, { timeout: 70_000 })
    await page.context().setOffline(true)
    proxy.refuse(false)
    await page.context().setOffline(false)
    await page.waitForFunction('window.client.state === "open"', undefined, { timeout: 20_000 })
    t.pass('open again well before the scheduled reconnect')
  })

  t.test('#14 Chromium: room events compressed once per publish decode in the browser, at every size', { timeout: 60_000 }, async (t) => {
    const { server, origin } = await pageServer(t, { compression: { threshold: 1024 }, maxPayload: 2_000_000, maxBufferedBytes: 64 * 1024 * 1024 })
    const { page } = await openPage(t, origin)
    await page.evaluate(() => (window as any).start('/token'))
    await page.evaluate(() => (window as any).welcomed)
    await page.evaluate(() => (window as any).client.join('r'))
    await page.evaluate(() => (window as any).collect('blob'))
    // The browser's own view of the handshake (the client keeps its socket in `ws`).
    t.match(await page.evaluate(() => (window as any).client.ws.extensions), /permessage-deflate; server_no_context_takeover/, 'Chromium negotiated it')
    const bodies = [0, 125, 126, 1023, 1024, 65_535, 65_536, 1_048_576].flatMap((n) => ['a'.repeat(n), Array.from({ length: n }, (_, i) => String.fromCharCode(33 + ((i * 7919) % 90))).join('')])
    for (const body of bodies) await server.app.rooms.broadcast('r', 'blob', { body })
    await page.waitForFunction(`window.collected.length === ${bodies.length}`, undefined, { timeout: 30_000 })
    const got: Array<{ seq: number; length: number; head: string; tail: string }> = await page.evaluate(() => (window as any).collected.map((frame: any) => ({ seq: frame.seq, length: frame.payload.body.length, head: frame.payload.body.slice(0, 8), tail: frame.payload.body.slice(-8) })))
    t.same(got.map((frame) => frame.seq), bodies.map((_, i) => i + 1), 'in order')
    t.same(got.map((frame) => [frame.length, frame.head, frame.tail]), bodies.map((body) => [body.length, body.slice(0, 8), body.slice(-8)]), 'every payload intact')
  })

  t.test('#12 Chromium: a bad token is "unauthorized" (from the diagnostic request), twice, then the client stops', { timeout: 60_000 }, async (t) => {
    const { server, origin } = await pageServer(t, {})
    const { page } = await openPage(t, origin)
    await page.evaluate(() => (window as any).start('/token?bad=1', { initialMs: 10, maxMs: 50 }))
    await page.evaluate(() => (window as any).stopped)
    const result: { errors: Array<{ code: string; status: number; message: string }>; state: string } = await page.evaluate(() => ({ errors: (window as any).errors, state: (window as any).client.state }))
    t.same(result.errors.map((err) => [err.code, err.status]), [['unauthorized', 401], ['unauthorized', 401]])
    t.match(result.errors[0]!.message, /token malformed/, 'the server\'s reason, through the diagnostic')
    t.equal(result.state, 'closed')
    t.equal(server.app.rooms.stats().handshakes.unauthorized, 2, 'two upgrades, then it stopped')
  })

  t.test('#12 Chromium: an Origin not allowed is "origin_not_allowed"', { timeout: 60_000 }, async (t) => {
    const { origin } = await pageServer(t, { allowedOrigins: ['https://elsewhere.test'] })
    const { page } = await openPage(t, origin)
    await page.evaluate(() => (window as any).start('/token', { initialMs: 10, maxMs: 50 }))
    await page.evaluate(() => (window as any).stopped)
    const errors: Array<{ code: string; status: number }> = await page.evaluate(() => (window as any).errors)
    t.same(errors.map((err) => [err.code, err.status]), [['origin_not_allowed', 403], ['origin_not_allowed', 403]])
  })
}

// Issue #16 in real headless Chromium with `WebSocket` removed from the page: the client falls back to
// Server-Sent Events by itself — the example page works unchanged, two pages chat both ways, and a server
// restart (rooms on Redis) resumes with no lost message.
import t from 'tap'
import { chromium, type Browser, type Page } from 'playwright-core'
import type { FastifyInstance } from 'fastify'
import { buildChatApp } from '../example/app.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { CHROMIUM_ARGS, CHROMIUM_PATH, chromiumMissing } from './helpers/chromium.js'
import { componentAvailable, freePort } from './helpers/components.js'
import { sign, startServer } from './helpers/index.js'
import { redisMissing, startRedis } from './helpers/redis.js'

// Runs before the page's own scripts: a browser (or a gateway's sandbox) without WebSocket.
const NO_WEBSOCKET = 'delete window.WebSocket'

async function browserWithoutWebSocket (t: { teardown(fn: () => unknown): void }): Promise<Browser> {
  const browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS })
  t.teardown(() => browser.close())
  return browser
}

async function pageWithoutWebSocket (browser: Browser): Promise<Page> {
  const page = await browser.newPage()
  await page.addInitScript({ content: NO_WEBSOCKET })
  return page
}

if (componentAvailable(t, chromiumMissing(), 'browser SSE fallback')) {
  t.test('#16 the example page without WebSocket: login, join, and two pages chat both ways over the fallback', { timeout: 60_000 }, async (t) => {
    const port = await freePort()
    const app: FastifyInstance = await buildChatApp({ jwtSecret: 'sse-browser-secret', allowedOrigins: [`http://127.0.0.1:${port}`], fastify: { logger: false } })
    await app.listen({ port, host: '127.0.0.1' })
    t.teardown(() => app.close())
    const browser = await browserWithoutWebSocket(t)
    const pages = [await pageWithoutWebSocket(browser), await pageWithoutWebSocket(browser)]
    const errors: string[] = []
    for (const page of pages) page.on('pageerror', (err) => errors.push(err.message))
    for (const [page, name] of [[pages[0]!, 'alice'], [pages[1]!, 'bob']] as const) {
      await page.goto(`http://127.0.0.1:${port}/`)
      t.equal(await page.evaluate('typeof WebSocket'), 'undefined', `${name}'s page has no WebSocket`)
      await page.fill('#name', name)
      await page.click('#login button')
      await page.waitForSelector('#state[data-state="open"]', { timeout: 20_000 })
      await page.fill('#room', 'lobby')
      await page.click('#join button')
      await page.waitForSelector('#rooms li.active')
    }
    const say = async (page: Page, text: string) => {
      await page.fill('#text', text)
      await page.click('#send button')
    }
    const sees = (page: Page, text: string) =>
      page.waitForFunction((wanted) => [...document.querySelectorAll('#log div')].some((div) => div.textContent?.includes(wanted)), text, { timeout: 20_000 })
    await say(pages[0]!, 'hello over a stream')
    await sees(pages[1]!, 'hello over a stream')
    await say(pages[1]!, 'and back over a POST')
    await sees(pages[0]!, 'and back over a POST')
    t.equal(app.rooms.stats().connections, 2, 'both pages are connections of the plugin')
    t.same(errors, [], 'no page errors')
  })
}

// A bare page that loads the client the plugin serves on <path>/client.js.
const PAGE = `<!doctype html><meta charset="utf-8"><title>sse</title>
<script type="module">
import { createClient } from '/ws/client.js'
window.start = () => {
  const client = createClient({ url: 'ws://' + location.host + '/ws', getToken: async () => (await (await fetch('/token')).json()).token, rooms: ['news'], backoff: { initialMs: 100, maxMs: 500 } })
  window.client = client
  window.got = []
  window.transports = []
  client.on('transport', (transport) => window.transports.push(transport))
  client.on('story', (frame) => window.got.push(frame.payload.n))
  window.welcomed = new Promise((resolve) => client.on('welcome', resolve))
}
window.ready = true
</script>`

if (componentAvailable(t, chromiumMissing(), 'browser SSE fallback') && componentAvailable(t, redisMissing(), 'browser SSE fallback on Redis')) {
  t.test('#16 a server restart resumes a fallback client with no lost message (rooms on Redis)', { timeout: 60_000 }, async (t) => {
    const redis = await startRedis(t)
    const port = await freePort()
    const start = () => startServer(t, { sse: true, presence: false, handshakeRateLimit: false, allowedOrigins: [`http://127.0.0.1:${port}`], broker: redisBroker({ url: redis.url, processTtlMs: 600 }) }, {
      listenPort: port,
      setup: (app) => {
        app.get('/', async (_request, reply) => reply.type('text/html').send(PAGE))
        app.get('/token', async () => ({ token: sign('hana') }))
      },
    })
    let server = await start()
    // Another process on the same Redis keeps publishing while this one restarts.
    const other = await startServer(t, { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const browser = await browserWithoutWebSocket(t)
    const page = await pageWithoutWebSocket(browser)
    await page.goto(`http://127.0.0.1:${port}/`)
    await page.waitForFunction('window.ready === true', undefined, { timeout: 10_000 })
    await page.evaluate('window.start(); window.welcomed')
    t.equal(await page.evaluate('window.client.transport'), 'sse', 'on the fallback from the start (no WebSocket)')
    await page.waitForFunction('window.client.position("news") !== undefined', undefined, { timeout: 10_000 })
    for (let n = 1; n <= 3; n++) await other.app.rooms.broadcast('news', 'story', { n })
    await page.waitForFunction('window.got.length === 3', undefined, { timeout: 10_000 })
    await server.app.close()
    for (let n = 4; n <= 8; n++) await other.app.rooms.broadcast('news', 'story', { n })
    server = await start()
    await page.waitForFunction('window.got.length >= 8', undefined, { timeout: 30_000 })
    await other.app.rooms.broadcast('news', 'story', { n: 9 })
    await page.waitForFunction('window.got.length >= 9', undefined, { timeout: 10_000 })
    t.same(await page.evaluate('window.got'), [1, 2, 3, 4, 5, 6, 7, 8, 9], 'every story once, in order, across the restart')
    t.equal(server.app.rooms.stats().connections, 1)
  })
}

// A page whose WebSocket upgrades fail (as behind a gateway that drops them) while window.blocked is true.
const BLOCKABLE = `<!doctype html><meta charset="utf-8"><title>sse</title>
<script>
window.blocked = true
const RealWebSocket = window.WebSocket
window.WebSocket = class extends RealWebSocket {
  constructor (url, protocols) { super(window.blocked ? 'ws://127.0.0.1:9/blocked' : url, protocols) }
}
</script>
<script type="module">
import { createClient } from '/ws/client.js'
window.start = () => {
  const client = createClient({ url: 'ws://' + location.host + '/ws', getToken: async () => (await (await fetch('/token')).json()).token, rooms: ['news'], backoff: { initialMs: 50, maxMs: 200 }, probeIntervalMs: 300 })
  window.client = client
  window.got = []
  window.transports = []
  client.on('transport', (transport) => window.transports.push(transport))
  client.on('story', (frame) => window.got.push(frame.payload.n))
}
window.ready = true
</script>`

if (componentAvailable(t, chromiumMissing(), 'browser SSE fallback')) {
  t.test('#16 blocked upgrades: the client falls back after two network failures, probes, and moves back to a WebSocket without losing or repeating an event', { timeout: 60_000 }, async (t) => {
    const port = await freePort()
    const server = await startServer(t, { sse: true, presence: false, handshakeRateLimit: false, allowedOrigins: [`http://127.0.0.1:${port}`] }, {
      listenPort: port,
      setup: (app) => {
        app.get('/', async (_request, reply) => reply.type('text/html').send(BLOCKABLE))
        app.get('/token', async () => ({ token: sign('ines') }))
      },
    })
    const browser = await browserWithoutWebSocket(t)
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${port}/`)
    await page.waitForFunction('window.ready === true', undefined, { timeout: 10_000 })
    await page.evaluate('window.start()')
    await page.waitForFunction('window.client.transport === "sse" && window.client.state === "open" && window.client.position("news") !== undefined', undefined, { timeout: 20_000 })
    let n = 0
    for (; n < 5; n++) await server.app.rooms.broadcast('news', 'story', { n })
    await page.waitForFunction('window.got.length === 5', undefined, { timeout: 10_000 })
    await page.evaluate('window.blocked = false')
    // Publishing goes on while the client moves.
    const deadline = Date.now() + 20_000
    while (Date.now() < deadline && await page.evaluate('window.client.transport') !== 'websocket') {
      await server.app.rooms.broadcast('news', 'story', { n: n++ })
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    await page.waitForFunction('window.client.state === "open"', undefined, { timeout: 10_000 })
    for (let i = 0; i < 5; i++) await server.app.rooms.broadcast('news', 'story', { n: n++ })
    await page.waitForFunction(`window.got.length >= ${n}`, undefined, { timeout: 10_000 })
    t.same(await page.evaluate('window.transports'), ['sse', 'websocket'], 'to the fallback and back')
    t.same(await page.evaluate('window.got'), Array.from({ length: n }, (_, i) => i), `all ${n} events once, in order, across both moves`)
    t.equal(server.app.websocketServer.clients.size, 1, 'on a WebSocket now')
  })
}

// The example page in real headless Chromium: two pages chat; HTTP announce reaches both; a cut connection
// resumes with every message once and in order; a server restart shows a reset and chat carries on.
import { mkdir } from 'node:fs/promises'
import t, { type Test } from 'tap'
import { chromium, type Browser, type Page } from 'playwright-core'
import type { FastifyInstance } from 'fastify'
import { buildChatApp, fakeAnswer, type ChatAppOptions } from '../example/app.js'
import { CHROMIUM_ARGS, CHROMIUM_PATH, chromiumMissing } from './helpers/chromium.js'
import { componentAvailable, freePort } from './helpers/components.js'
import { until } from './helpers/index.js'
import { startProxy } from './helpers/proxy.js'

/** The example app on a free port and a Chromium to open it in, both closed with the test. */
async function exampleInBrowser (t: Test, options: Omit<ChatAppOptions, 'fastify'>): Promise<{ port: number; browser: Browser }> {
  const app = await buildChatApp({ ...options, fastify: { logger: false } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const port = (app.server.address() as import('node:net').AddressInfo).port
  const browser: Browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS })
  t.teardown(() => browser.close())
  return { port, browser }
}

/** Opens the example page, logs in as `name` and joins lobby, as a user would. */
async function enterLobby (page: Page, url: string, name: string): Promise<void> {
  await page.goto(url)
  await page.fill('#name', name)
  await page.click('#login button')
  await page.waitForSelector('#state[data-state="open"]')
  await page.fill('#room', 'lobby')
  await page.click('#join button')
  await page.waitForSelector('#rooms li.active')
}

if (componentAvailable(t, chromiumMissing(), 'browser')) {
  t.test('two pages chat through drops and a restart', { timeout: 120_000 }, async (t) => {
    const appPort = await freePort()
    const proxy = await startProxy(appPort)
    t.teardown(() => proxy.close())
    const origins = [`http://127.0.0.1:${appPort}`, `http://127.0.0.1:${proxy.port}`]
    const build = async () => {
      const app = await buildChatApp({ jwtSecret: 'browser-test-secret', allowedOrigins: origins, fastify: { logger: false } })
      await app.listen({ port: appPort, host: '127.0.0.1' })
      return app
    }
    let app: FastifyInstance = await build()
    t.teardown(() => app.close())

    const browser: Browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS })
    t.teardown(() => browser.close())
    const alice = await browser.newPage()
    const bob = await browser.newPage() // bob's traffic goes through the proxy, so the test can cut it
    const errors: string[] = []
    for (const page of [alice, bob]) page.on('pageerror', (err) => errors.push(err.message))

    await enterLobby(alice, `http://127.0.0.1:${appPort}/`, 'alice')
    await enterLobby(bob, `http://127.0.0.1:${proxy.port}/`, 'bob')

    const say = async (page: Page, text: string) => {
      await page.fill('#text', text)
      await page.click('#send button')
    }
    const shows = (page: Page, text: string) =>
      page.waitForFunction((text) => [...document.querySelectorAll('#log div')].some((div) => div.textContent?.includes(text)), text, { timeout: 20_000 })
    const seqs = (page: Page) => page.$$eval('#log div[data-seq]', (divs) => divs.map((div) => Number((div as HTMLElement).dataset.seq)))
    const count = (page: Page, text: string) =>
      page.$$eval('#log div', (divs, text) => divs.filter((div) => div.textContent?.includes(text)).length, text)
    const announce = async (text: string) => {
      const login = await fetch(`http://127.0.0.1:${appPort}/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'ops' }) })
      const { token } = (await login.json()) as { token: string }
      const response = await fetch(`http://127.0.0.1:${appPort}/rooms/lobby/announce`, {
        method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ text }),
      })
      t.equal(response.status, 200, `announce "${text}"`)
    }

    // Chat both ways, and an HTTP announce on both pages.
    await say(alice, 'hello bob')
    await shows(bob, 'hello bob')
    await say(bob, 'hi alice')
    await shows(alice, 'hi alice')
    await announce('maintenance at noon')
    await shows(alice, 'maintenance at noon')
    await shows(bob, 'maintenance at noon')
    await alice.waitForFunction(() => document.querySelector('#members')?.textContent?.includes('bob'))

    // Cut bob's connection while alice and HTTP keep publishing.
    proxy.cut()
    const during = ['while away 1', 'while away 2', 'while away 3']
    for (const text of during) await say(alice, text)
    await announce('announced while away')
    await say(alice, 'while away 4')
    await shows(bob, 'while away 4')
    for (const text of [...during, 'while away 4', 'announced while away']) t.equal(await count(bob, text), 1, `bob shows "${text}" once`)
    const bobSeqs = await seqs(bob)
    t.same(bobSeqs, Array.from({ length: bobSeqs.length }, (_, i) => bobSeqs[0]! + i), 'bob saw consecutive seqs, no gap, no duplicate')
    t.equal(bobSeqs[bobSeqs.length - 1], (await seqs(alice)).at(-1), 'and caught up with alice')

    // Restart the memory-backed server: history is gone, so both pages show a reset and carry on.
    await app.close()
    app = await build()
    await alice.waitForSelector('#log div.reset', { timeout: 30_000 })
    await bob.waitForSelector('#log div.reset', { timeout: 30_000 })
    await alice.waitForSelector('#state[data-state="open"]')
    await say(alice, 'after the restart')
    await shows(bob, 'after the restart')
    await say(bob, 'still here')
    await shows(alice, 'still here')

    await mkdir('test-artifacts', { recursive: true })
    await alice.screenshot({ path: 'test-artifacts/browser-alice.png', fullPage: true })
    await bob.screenshot({ path: 'test-artifacts/browser-bob.png', fullPage: true })
    t.same(errors, [], 'no page errors')
  })

  t.test('#11: the example page works at phone width (390 px) and at desktop widths', { timeout: 60_000 }, async (t) => {
    const { port, browser } = await exampleInBrowser(t, { jwtSecret: 'layout-secret', allowedOrigins: '*' })
    await mkdir('test-artifacts', { recursive: true })
    for (const [width, height] of [[390, 844], [1280, 800], [1920, 1080]] as const) {
      const page = await browser.newPage({ viewport: { width, height } })
      await enterLobby(page, `http://127.0.0.1:${port}/`, `w${width}`)
      await page.fill('#text', `hello from ${width} px`)
      await page.click('#send button')
      await page.waitForFunction((text) => [...document.querySelectorAll('#log div')].some((div) => div.textContent?.includes(text)), `hello from ${width} px`, { timeout: 20_000 })
      // No named helper inside: tsx would wrap it in a __name() call the page does not have.
      const layout = await page.evaluate(() => ({
        chat: document.querySelector('#chat')!.getBoundingClientRect().width,
        text: document.querySelector('#text')!.getBoundingClientRect().width,
        send: document.querySelector('#send button')!.getBoundingClientRect().right,
        scrollWidth: document.documentElement.scrollWidth,
      }))
      await page.screenshot({ path: `test-artifacts/example-${width}.png`, fullPage: true })
      t.ok(layout.scrollWidth <= width, `${width} px: no horizontal scroll (content ${layout.scrollWidth} px)`)
      t.ok(layout.chat >= Math.min(width * 0.8, 600), `${width} px: the chat column is ${Math.round(layout.chat)} px wide`)
      t.ok(layout.text >= 200, `${width} px: the message box is ${Math.round(layout.text)} px wide`)
      t.ok(layout.send <= width, `${width} px: the send button is on screen`)
      await page.close()
    }
  })

  t.test('#12: the example page says why it cannot connect, once, in its status pill', { timeout: 60_000 }, async (t) => {
    const { port, browser } = await exampleInBrowser(t, { jwtSecret: 'pill-secret', allowedOrigins: ['https://elsewhere.test'] })
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${port}/`)
    await page.fill('#name', 'mallory')
    await page.click('#login button')
    await page.waitForFunction('window.chatClient?.state === "closed"', undefined, { timeout: 20_000 })
    const pill = await page.textContent('#state')
    t.match(pill, /^stopped — this page's address is not allowed by the server$/, `the pill says why: "${pill}"`)
    t.equal(await page.$$eval('#log div.error', (divs) => divs.length), 0, 'no error line per retry in the chat')
    await mkdir('test-artifacts', { recursive: true })
    await page.screenshot({ path: 'test-artifacts/example-refused.png' })
  })

  t.test('#21 the example page: scrollback for a late joiner, an outage that reads as one, a reset without a badge, logout', { timeout: 120_000 }, async (t) => {
    const port = await freePort()
    const build = async () => {
      const app = await buildChatApp({ jwtSecret: 'first-hour-secret', allowedOrigins: [`http://127.0.0.1:${port}`], fastify: { logger: false } })
      await app.listen({ port, host: '127.0.0.1' })
      return app
    }
    let app: FastifyInstance = await build()
    t.teardown(() => app.close())
    const browser: Browser = await chromium.launch({ executablePath: CHROMIUM_PATH, args: CHROMIUM_ARGS })
    t.teardown(() => browser.close())
    const url = `http://127.0.0.1:${port}/`
    const errors: string[] = []
    const failedRequests: string[] = []
    const watch = (page: Page) => {
      page.on('pageerror', (err) => errors.push(err.message))
      page.on('response', (response) => { if (response.status() === 404) failedRequests.push(response.url()) })
      return page
    }
    const alice = watch(await browser.newPage({ viewport: { width: 1280, height: 800 } }))
    await enterLobby(alice, url, 'alice')
    for (const text of ['before you came', 'and this too']) {
      await alice.fill('#text', text)
      await alice.click('#send button')
      await alice.waitForFunction((text) => [...document.querySelectorAll('#log div')].some((div) => div.textContent?.includes(text)), text)
    }

    // A late joiner sees what was said before, in order, then her own arrival: every seq once.
    await mkdir('test-artifacts', { recursive: true })
    for (const [width, height] of [[390, 844], [1280, 800]] as const) {
      const carol = watch(await browser.newPage({ viewport: { width, height } }))
      await enterLobby(carol, url, `carol${width}`)
      await carol.waitForFunction(() => document.querySelector('#log .scrollback-end') !== null, undefined, { timeout: 20_000 })
      const shown = await carol.$$eval('#log div', (divs) => divs.map((div) => [(div as HTMLElement).dataset.seq ?? null, div.className, div.textContent]))
      const marker = shown.findIndex(([, cls]) => cls === 'scrollback-end')
      t.ok(marker >= 3, `${width} px: the scrollback (${marker} lines) is marked off from what came live`)
      const seqs = shown.filter(([seq]) => seq !== null).map(([seq]) => Number(seq))
      t.same(seqs, Array.from({ length: seqs.length }, (_, i) => i + 1), `${width} px: seqs 1…${seqs.length}, once each, in order`)
      t.ok(shown.some(([, cls, text]) => cls === 'chat' && text?.includes('before you came')), `${width} px: the earlier chat is shown`)
      await carol.screenshot({ path: `test-artifacts/example-scrollback-${width}.png`, fullPage: true })
      await carol.close()
    }

    // The server goes away: the pill says so, not "token: getToken failed: Failed to fetch".
    await app.close()
    await alice.waitForFunction(() => document.getElementById('state')?.textContent?.includes('server unreachable'), undefined, { timeout: 30_000 })
    const pill = await alice.textContent('#state')
    t.match(pill, /^(reconnecting|connecting…) — server unreachable$/, `during the outage: "${pill}"`)
    await alice.waitForFunction(() => document.getElementById('retry')?.textContent?.startsWith('next try in'), undefined, { timeout: 30_000 })
    t.match(await alice.textContent('#retry'), /^next try in \d+ s \(attempt \d+\)$/, 'one attempt counter, beside the pill')
    await alice.screenshot({ path: 'test-artifacts/example-outage.png' })

    // Back on a fresh memory broker: a reset line, without a seq badge.
    app = await build()
    await alice.waitForSelector('#log div.reset', { timeout: 30_000 })
    await alice.waitForSelector('#state[data-state="open"]')
    const reset = await alice.$eval('#log div.reset', (div) => ({ seq: (div as HTMLElement).dataset.seq ?? null, text: div.textContent }))
    t.same(reset.seq, null, 'the reset line has no seq')
    t.notMatch(reset.text, /#\d/, `no badge: "${reset.text}"`)
    t.equal(await alice.textContent('#retry'), '', 'the retry note is gone once connected')

    // Logout: the socket closes, the page is signed out, another name can sign in.
    await alice.click('#logout')
    await alice.waitForFunction(() => (window as any).chatClient?.state === 'closed')
    t.equal(await alice.textContent('#state'), 'signed out')
    await alice.waitForFunction(() => document.getElementById('logout')?.hidden === true)
    await until(() => app.rooms.stats().connections === 0, 'the server seeing the socket close')
    await enterLobby(alice, url, 'dave')
    t.equal(await alice.textContent('#me'), 'dave')
    t.same(errors, [], 'no page errors')
    t.same(failedRequests, [], 'no 404 (favicon included)')
  })

  t.test('the dashboard charts live connections, message rate and broadcast latency', { timeout: 60_000 }, async (t) => {
    const { port, browser } = await exampleInBrowser(t, { jwtSecret: 'dashboard-secret', allowedOrigins: '*', dashboardIntervalMs: 200 })
    const page = await browser.newPage()
    await page.goto(`http://127.0.0.1:${port}/dashboard`)
    await page.waitForSelector('#status[data-live="true"]')
    // Traffic from two chat pages.
    const chatters = [await browser.newPage(), await browser.newPage()]
    for (const [i, chatter] of chatters.entries()) await enterLobby(chatter, `http://127.0.0.1:${port}/`, `user${i}`)
    for (let i = 0; i < 10; i++) {
      await chatters[i % 2]!.fill('#text', `message ${i}`)
      await chatters[i % 2]!.click('#send button')
    }
    await page.waitForFunction(() => document.getElementById('connections')?.textContent === '2', undefined, { timeout: 20_000 })
    await page.waitForFunction(() => Number(document.getElementById('latency-chart')?.dataset.points) >= 5, undefined, { timeout: 20_000 })
    await page.waitForFunction(() => [...document.querySelectorAll('#handshakes td')].some((td) => td.textContent === 'ok'))
    const latencyShown = await page.textContent('#latency')
    t.ok(latencyShown !== null, `latency shown: ${latencyShown}`)
    await mkdir('test-artifacts', { recursive: true })
    await page.screenshot({ path: 'test-artifacts/dashboard.png', fullPage: true })
    t.pass('dashboard rendered with live data')
  })

  t.test('#24 the example\'s assistant: /ask streams an answer that grows on every page; a page reloaded mid-answer continues it, byte-identical', { timeout: 60_000 }, async (t) => {
    const { port, browser } = await exampleInBrowser(t, { jwtSecret: 'assistant-secret', allowedOrigins: '*', assistantTokenMs: 40 })
    const url = `http://127.0.0.1:${port}/`
    const asker = await browser.newPage()
    const reader = await browser.newPage()
    const errors: string[] = []
    for (const page of [asker, reader]) page.on('pageerror', (err) => errors.push(err.message))
    await enterLobby(asker, url, 'asker')
    await enterLobby(reader, url, 'reader')
    await asker.fill('#text', '/ask why is the sky blue?')
    await asker.click('#send button')
    const expected = fakeAnswer('why is the sky blue?').join('')
    const answerText = (page: Page) => page.$eval('#log div.assistant .answer', (span) => span.textContent ?? '')
    // Mid-answer: some of it shown, not all.
    await reader.waitForFunction(() => (document.querySelector('#log div.assistant .answer')?.textContent ?? '').length > 40, undefined, { timeout: 20_000 })
    const before = await answerText(reader)
    t.ok(expected.startsWith(before) && before.length < expected.length, 'a prefix of the answer before the reload')
    await reader.reload()
    await enterLobby(reader, url, 'reader')
    for (const page of [asker, reader]) await page.waitForSelector('#log div.assistant[data-state="done"]', { timeout: 20_000 })
    t.equal(await answerText(reader), expected, 'the reloaded page ends with the whole answer')
    t.equal(await answerText(asker), expected, 'so does the page that asked')
    t.equal(await reader.$$eval('#log div.assistant', (divs) => divs.length), 1, 'one line for one answer')
    t.same(errors, [])
  })
}

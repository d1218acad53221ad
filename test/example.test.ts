// The example chat app, end to end over real sockets: login, chat, announce, presence.
import t from 'tap'
import { buildChatApp } from '../example/app.js'
import { bounded, Client, connect, rejectedUpgrade, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { postgresMissing, startPostgres } from './helpers/postgres.js'

const SECRET = 'example-test-secret'

async function startExample (t: { teardown(fn: () => unknown): void }): Promise<TestServer & { http: string }> {
  const app = await buildChatApp({ jwtSecret: SECRET, allowedOrigins: ['http://app.test'], fastify: { logger: false } })
  await app.listen({ port: 0, host: '127.0.0.1' })
  t.teardown(() => app.close())
  const address = app.server.address()
  const port = typeof address === 'object' && address !== null ? address.port : 0
  return { app, port, url: `ws://127.0.0.1:${port}`, http: `http://127.0.0.1:${port}`, logs: [] }
}

async function login (http: string, name: string): Promise<string> {
  const response = await fetch(`${http}/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name }) })
  if (response.status !== 200) throw new Error(`login ${response.status}`)
  return ((await response.json()) as { token: string }).token
}

t.test('GET / serves the page', async (t) => {
  const server = await startExample(t)
  const response = await fetch(`${server.http}/`)
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), 'text/html')
  t.match(await response.text(), 'fastify-rooms chat')
})

t.test('#21 the page imports the client the plugin serves; /favicon.ico and /favicon.svg answer (no 404 in the console)', async (t) => {
  const server = await startExample(t)
  t.match(await (await fetch(`${server.http}/`)).text(), "import { createClient } from '/ws/client.js'")
  const client = await fetch(`${server.http}/ws/client.js`)
  t.equal(client.status, 200)
  t.match(await client.text(), /export \{[^}]*\bcreateClient\b[^}]*\}/)
  t.equal((await fetch(`${server.http}/client.js`)).status, 404, 'the example serves no copy of its own')
  for (const icon of ['/favicon.ico', '/favicon.svg']) {
    const response = await fetch(`${server.http}${icon}`)
    t.equal(response.status, 200, icon)
    t.equal(response.headers.get('content-type'), 'image/svg+xml')
    t.match(await response.text(), /^<svg /)
  }
})

t.test('#21 GET /rooms/:room/history: a late joiner\'s scrollback, for signed-in users only', async (t) => {
  const server = await startExample(t)
  const alice: Client = await connect(server, 'alice', { token: await login(server.http, 'alice') })
  await alice.join('lobby')
  await alice.request({ type: 'chat', room: 'lobby', payload: { text: 'before you came' } })
  const token = await login(server.http, 'carol')
  const history = await fetch(`${server.http}/rooms/lobby/history`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(history.status, 200)
  const body = await history.json() as { seq: number; complete: boolean; events: Array<{ type: string; seq: number; payload: unknown }> }
  t.same([body.seq, body.complete], [2, true])
  t.same(body.events.map((event) => [event.seq, event.type, event.payload]), [
    [1, 'presence', { action: 'join', user: { id: 'alice' } }],
    [2, 'chat', { from: 'alice', text: 'before you came' }],
  ])
  t.equal((await fetch(`${server.http}/rooms/lobby/history`)).status, 401, 'no token: 401')
  t.equal((await fetch(`${server.http}/rooms/${'x'.repeat(129)}/history`, { headers: { authorization: `Bearer ${token}` } })).status, 414, 'a room name past the route\'s parameter length: 414')
})

t.test('login → token; two users chat, see presence; announce over HTTP; members', async (t) => {
  const server = await startExample(t)
  const alice: Client = await connect(server, 'alice', { token: await login(server.http, 'alice'), via: 'protocol' })
  const bob: Client = await connect(server, 'bob', { token: await login(server.http, 'bob') })
  await alice.join('lobby')
  await bob.join('lobby')
  t.same((await alice.nextOfType('presence')).payload, { action: 'join', user: { id: 'alice' } })
  t.same((await alice.nextOfType('presence')).payload, { action: 'join', user: { id: 'bob' } })

  const ack = await bob.request({ type: 'chat', room: 'lobby', payload: { text: '  hello alice  ' } })
  t.same(ack.payload, { seq: 3 })
  const chat = await alice.nextOfType('chat')
  t.same(chat.payload, { from: 'bob', text: 'hello alice' }, 'trimmed')
  t.equal(chat.seq, 3)

  const blank = await bob.request({ type: 'chat', room: 'lobby', payload: { text: '   ' } })
  t.equal(blank.payload.code, 'invalid_message')
  t.same(blank.payload.details.errors, [{ path: '/payload/text', message: 'must be 1 to 2000 characters after trimming' }])
  const long = await bob.request({ type: 'chat', room: 'lobby', payload: { text: 'x'.repeat(2001) } })
  t.equal(long.payload.code, 'invalid_message')
  const exact = await bob.request({ type: 'chat', room: 'lobby', payload: { text: ` ${'y'.repeat(2000)} ` } })
  t.equal(exact.type, 'ack', '2000 characters after trimming is fine')

  const announce = await fetch(`${server.http}/rooms/lobby/announce`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${await login(server.http, 'carol')}` },
    body: JSON.stringify({ text: 'maintenance at noon' }),
  })
  t.equal(announce.status, 200)
  t.same(await announce.json(), { seq: 5 })
  for (const client of [alice, bob]) {
    const event = await client.nextOfType('announcement')
    t.same(event.payload, { from: 'carol', text: 'maintenance at noon' })
    t.equal(event.seq, 5)
  }

  const members = await (await fetch(`${server.http}/rooms/lobby/members`, { headers: { authorization: `Bearer ${await login(server.http, 'carol')}` } })).json()
  t.same(members, { room: 'lobby', count: 2, members: [{ id: 'alice' }, { id: 'bob' }] })
})

t.test('GET /metrics is Prometheus text; /dashboard/stats streams stats() as Server-Sent Events', async (t) => {
  const server = await startExample(t)
  await connect(server, 'alice', { token: await login(server.http, 'alice') })
  const metrics = await fetch(`${server.http}/metrics`)
  t.equal(metrics.status, 200)
  t.match(metrics.headers.get('content-type'), 'text/plain')
  t.match(await metrics.text(), /^rooms_connections 1$/m)
  const dashboard = await fetch(`${server.http}/dashboard`)
  t.match(await dashboard.text(), 'fastify-rooms dashboard')
  const stream = await fetch(`${server.http}/dashboard/stats`)
  t.equal(stream.headers.get('content-type'), 'text/event-stream')
  const reader = stream.body!.getReader()
  let text = ''
  while (!text.includes('\n\n')) text += new TextDecoder().decode((await reader.read()).value)
  const first = JSON.parse(text.slice('data: '.length, text.indexOf('\n\n')))
  t.equal(first.connections, 1)
  t.same(first.handshakes, { ok: 1 })
  await reader.cancel()
})

t.test('#10 members needs a token; announce is limited per user (429)', async (t) => {
  const server = await startExample(t)
  t.equal((await fetch(`${server.http}/rooms/lobby/members`)).status, 401)
  const token = await login(server.http, 'mallory')
  const post = () => fetch(`${server.http}/rooms/lobby/announce`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: JSON.stringify({ text: 'spam' }),
  })
  const statuses: number[] = []
  for (let i = 0; i < 12; i++) statuses.push((await post()).status)
  t.same(statuses, [...Array(10).fill(200), 429, 429], 'ten a minute, then 429')
  const other = await fetch(`${server.http}/rooms/lobby/announce`, {
    method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${await login(server.http, 'alice')}` }, body: JSON.stringify({ text: 'hi' }),
  })
  t.equal(other.status, 200, 'the limit is per user')
})

t.test('announce without a valid token → 401; a bad name at login → 400', async (t) => {
  const server = await startExample(t)
  const anonymous = await fetch(`${server.http}/rooms/lobby/announce`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ text: 'hi' }),
  })
  t.equal(anonymous.status, 401)
  const badName = await fetch(`${server.http}/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'no spaces allowed' }) })
  t.equal(badName.status, 400)
})

t.test('the example refuses foreign origins and missing tokens before the 101', async (t) => {
  const server = await startExample(t)
  t.equal((await rejectedUpgrade(server, 'alice', { token: await login(server.http, 'alice'), origin: 'http://evil.test' })).status, 403)
  t.equal((await rejectedUpgrade(server, 'alice', { token: null })).status, 401)
})

t.test('#21 npm run example logs readable lines in a terminal (LOG_FORMAT=pretty), JSON when piped', async (t) => {
  const { spawn } = await import('node:child_process')
  const { freePort } = await import('./helpers/components.js')
  for (const format of ['pretty', 'json'] as const) {
    const port = await freePort()
    const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== 'NODE_OPTIONS' && name !== 'NODE_V8_COVERAGE'))
    const child = spawn(process.execPath, ['--import', 'tsx', 'example/server.ts'], { env: { ...env, PORT: String(port), LOG_FORMAT: format, JWT_SECRET: 'log-format-secret' }, stdio: ['ignore', 'pipe', 'pipe'] })
    t.teardown(() => child.kill('SIGKILL'))
    let output = ''
    child.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
    child.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
    await bounded(new Promise<void>((resolve) => {
      const check = () => (output.includes('chat example ready') ? resolve() : setTimeout(check, 50))
      check()
    }), `the example with LOG_FORMAT=${format}`, 30_000)
    const ready = output.split('\n').find((line) => line.includes('chat example ready'))!
    if (format === 'pretty') t.match(ready, /^\[\d\d:\d\d:\d\d\] INFO: chat example ready at http:\/\/127\.0\.0\.1:\d+/, `a readable line: ${ready}`)
    else t.match(JSON.parse(ready), { level: 30, msg: `chat example ready at http://127.0.0.1:${port}` })
    child.kill('SIGTERM')
    await bounded(new Promise((resolve) => child.once('exit', resolve)), 'the example exiting')
  }
})

if (componentAvailable(t, postgresMissing(), 'the example on DATABASE_URL')) {
  t.test('DATABASE_URL: the example runs on PostgreSQL, and a notes: room loads its rows with the position and joins from it', async (t) => {
    const db = await startPostgres(t)
    const app = await buildChatApp({ jwtSecret: SECRET, allowedOrigins: ['http://app.test'], fastify: { logger: false }, databaseUrl: db.url })
    await app.listen({ port: 0, host: '127.0.0.1' })
    t.teardown(() => app.close())
    const address = app.server.address()
    const http = `http://127.0.0.1:${typeof address === 'object' && address !== null ? address.port : 0}`
    const token = await login(http, 'alice')
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' }
    const note = (text: string) => fetch(`${http}/rooms/notes:plan/notes`, { method: 'POST', headers, body: JSON.stringify({ text }) }).then(async (response) => ({ status: response.status, body: await response.json() as { id: string; seq: number } }))
    const first = await note('buy milk')
    t.same([first.status, first.body.seq], [200, 1])
    const loaded = await (await fetch(`${http}/rooms/notes:plan/notes`, { headers })).json() as { notes: Array<{ from: string; text: string }>; position: { seq: number; epoch: string } }
    t.same(loaded.notes.map((n) => [n.from, n.text]), [['alice', 'buy milk']])
    t.equal(loaded.position.seq, 1)
    t.same((await note('buy bread')).body.seq, 2)
    const reader = await app.rooms.inject({ id: 'bob' })
    const seen: string[] = []
    reader.on('note', (event) => seen.push((event.payload as { text: string }).text))
    const ack = await reader.join('notes:plan', { from: loaded.position })
    t.same([ack.from, ack.replayed], ['replayed', 1])
    await bounded((async () => { while (seen.length < 1) await new Promise((resolve) => setImmediate(resolve)) })(), 'the note after the position')
    t.same(seen, ['buy bread'], 'the later note once, the loaded one not again')
    t.equal((await fetch(`${http}/rooms/lobby/notes`, { headers })).status, 400, 'only notes: rooms are rows')
    reader.close()
  })
}

// The example chat app, end to end over real sockets: login, chat, announce, presence.
import t from 'tap'
import { buildChatApp } from '../example/app.js'
import { Client, connect, rejectedUpgrade, type TestServer } from './helpers/index.js'

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

t.test('GET /client.js serves the built client: one ESM file with no imports', async (t) => {
  const server = await startExample(t)
  const response = await fetch(`${server.http}/client.js`)
  t.equal(response.status, 200)
  t.match(response.headers.get('content-type'), 'text/javascript')
  const source = await response.text()
  t.match(source, 'export function createClient')
  t.notMatch(source, /^\s*import\s/m, 'no imports')
  t.notMatch(source, 'sourceMappingURL', 'no map reference the server cannot serve')
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

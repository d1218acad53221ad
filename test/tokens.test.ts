// Tokens follow the policy: exp required and bounded, a refresh cannot remove the deadline and re-checks
// rooms, and the expiry timer holds past setTimeout's limit.
import t from 'tap'
import WebSocket from 'ws'
import { TokenExpiries } from '../lib/socket/token-expiry.js'
import { connect, sign, startServer, until, rejectedUpgrade } from './helpers/index.js'
import Type from 'typebox'
import { defineMessage } from '../lib/index.js'

t.test('#10 tokens: exp required by default, lifetime bounded, a refresh cannot remove the deadline', async (t) => {
  const server = await startServer(t)
  const now = Math.floor(Date.now() / 1000)
  const noExp = await rejectedUpgrade(server, 'alice', { token: sign('alice', { exp: undefined }) })
  t.same([noExp.status, JSON.parse(noExp.body).message], [401, "Unauthorized: token has no exp (sign tokens with an expiry, e.g. @fastify/jwt's sign: { expiresIn: '15m' }, or set token.requireExp: false)"])
  const farAway = await rejectedUpgrade(server, 'alice', { token: sign('alice', { exp: now + 100 * 365 * 86_400 }) })
  t.same([farAway.status, JSON.parse(farAway.body).message], [401, 'Unauthorized: token exp is further away than the server allows'])
  const alice = await connect(server, 'alice', { token: sign('alice', { exp: now + 60 }) })
  const refresh = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: undefined }) } })
  t.same(refresh.payload, { code: 'forbidden', message: "token has no exp (sign tokens with an expiry, e.g. @fastify/jwt's sign: { expiresIn: '15m' }, or set token.requireExp: false)" })
  const longer = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: now + 400 * 86_400 }) } })
  t.same(longer.payload.code, 'forbidden', 'nor extend it past token.maxLifetimeMs')
  const fine = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: now + 120 }) } })
  t.same(fine.payload, { exp: now + 120 })
})

t.test('#10 token.requireExp: false admits a token without exp, for token.maxLifetimeMs at most', async (t) => {
  const server = await startServer(t, { token: { requireExp: false, maxLifetimeMs: 60_000 } })
  const before = Math.floor(Date.now() / 1000)
  const alice = await connect(server, 'alice', { token: sign('alice', { exp: undefined }) })
  const answer = await alice.request({ type: 'auth', payload: { token: sign('alice', { exp: undefined }) } })
  t.ok(answer.payload.exp >= before + 59 && answer.payload.exp <= before + 61, `the deadline is about a minute away (${answer.payload.exp - before} s)`)
})

t.test('#10 an auth refresh that drops a role leaves the rooms authorizeJoin now refuses, each named in a left frame', async (t) => {
  const server = await startServer(t, {
    presence: false,
    userFromToken: (payload) => ({ id: payload.sub as string, roles: payload.roles as string[] }),
    authorizeJoin: (user, room) => !room.startsWith('admin:') || (user.roles as string[] | undefined)?.includes('admin') === true,
    messages: { post: defineMessage({ schema: Type.Object({}), room: true, handler: () => 'posted' }) },
  })
  const alice = await connect(server, 'alice', { token: sign('alice', { roles: ['admin'] }) })
  await alice.join('admin:ops')
  await alice.join('admin:audit')
  await alice.join('lobby')
  const ack = await alice.request({ type: 'auth', payload: { token: sign('alice', { roles: [] }) } })
  t.equal(ack.type, 'ack')
  const left = alice.frames.filter((frame) => frame.type === 'left')
  t.same(left.map((frame) => ({ room: frame.room, payload: frame.payload })), [
    { room: 'admin:ops', payload: { reason: 'forbidden' } },
    { room: 'admin:audit', payload: { reason: 'forbidden' } },
  ], 'each refused room named before the ack')
  t.same((await alice.request({ type: 'post', room: 'admin:ops', payload: {} })).payload.code, 'not_in_room')
  t.same((await alice.request({ type: 'post', room: 'lobby', payload: {} })).payload, 'posted', 'rooms still allowed are kept')
  t.same(await server.app.rooms.members('admin:ops'), [])
})

t.test('#11 a token that expires in 30 days (past setTimeout\'s 24.8-day limit) keeps its socket open', async (t) => {
  const warnings: string[] = []
  const onWarning = (warning: Error) => warnings.push(warning.name)
  process.on('warning', onWarning)
  t.teardown(() => process.off('warning', onWarning))
  const thirtyDays = 30 * 86_400
  const server = await startServer(t, { token: { maxLifetimeMs: 60 * 86_400_000 } })
  const client = await connect(server, 'alice', { token: sign('alice', { exp: Math.floor(Date.now() / 1000) + thirtyDays }) })
  // A timer of more than 2^31-1 ms would fire after 1 ms (with a TimeoutOverflowWarning): give it turns.
  for (let i = 0; i < 5; i++) {
    await new Promise((resolve) => setTimeout(resolve, 5))
    client.send({ type: 'ping', id: `p${i}` })
    t.equal((await client.nextOfType('pong')).id, `p${i}`)
  }
  t.equal(client.ws.readyState, WebSocket.OPEN, 'not closed for expiry')
  t.same(warnings.filter((name) => name === 'TimeoutOverflowWarning'), [], 'no timer overflowed')
  t.equal(server.app.rooms.stats().closes['1008'] ?? 0, 0)
})

t.test('#22 the expiry timer re-arms until exp is really reached, and fires once, not before', async (t) => {
  // The longest wait is shortened to 20 ms so the re-arm happens within the test (in production: 24.8 days).
  const exp = Math.ceil(Date.now() / 1000) + 1
  const fired: number[] = []
  const expiries = new TokenExpiries(20)
  t.teardown(() => expiries.stop())
  expiries.set({ tokenExpired: () => fired.push(Date.now()) }, exp)
  await until(() => fired.length > 0, 'the expiry')
  t.equal(fired.length, 1)
  t.ok(fired[0]! >= exp * 1000, `fired ${fired[0]! - exp * 1000} ms after exp, not at the first 20 ms wait`)
})

t.test('#26 one timer for every socket\'s exp: each told once, at its second, none after it was cleared or moved; a throw stops no other', async (t) => {
  const expiries = new TokenExpiries()
  t.teardown(() => expiries.stop())
  const first = Math.ceil(Date.now() / 1000) + 1
  const told: Array<{ index: number; at: number }> = []
  const sockets = Array.from({ length: 1000 }, (_, index) => ({
    tokenExpired: () => {
      told.push({ index, at: Date.now() })
      if (index === 0) throw new Error('a socket that throws')
    },
  }))
  for (const [index, socket] of sockets.entries()) expiries.set(socket, first + (index % 2))
  for (let index = 900; index < 1000; index++) expiries.set(sockets[index]!, undefined)
  for (let index = 800; index < 900; index++) expiries.set(sockets[index]!, first + 3600)
  t.equal(expiries.exp(sockets[850]!), first + 3600)
  t.equal(expiries.exp(sockets[950]!), undefined)
  await until(() => told.length >= 800, 'the first 800 expiries')
  await new Promise((resolve) => setTimeout(resolve, 1100))
  t.equal(told.length, 800, 'the moved and cleared ones were not told')
  t.same([...new Set(told.map((entry) => entry.index))].sort((a, b) => a - b), Array.from({ length: 800 }, (_, i) => i), 'each once')
  for (const entry of told) {
    if (entry.at < (first + (entry.index % 2)) * 1000) t.fail(`socket ${entry.index} told ${(first + (entry.index % 2)) * 1000 - entry.at} ms early`)
  }
  t.equal(expiries.exp(sockets[1]!), undefined, 'forgotten once told')
})

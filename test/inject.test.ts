// Issue #12: fastify.rooms.inject(user) gives a host's tests a connected client with no port and no
// token, going through everything a real socket meets on the server.
import Fastify from 'fastify'
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import rooms, { defineMessage, type RoomsOptions } from '../lib/index.js'
import { bounded, ORIGIN, SECRET, startServer } from './helpers/index.js'

async function app (t: { teardown(fn: () => unknown): void }, options: Partial<RoomsOptions> = {}) {
  const fastify = Fastify()
  await fastify.register(rooms, {
    jwt: { secret: SECRET },
    allowedOrigins: [ORIGIN],
    presence: false,
    messages: {
      shout: defineMessage({ schema: Type.Object({ text: Type.String() }), handler: (ctx, payload) => ({ from: ctx.user.id, text: payload.text.toUpperCase() }) }),
    },
    authorizeJoin: (user, room) => room !== 'staff' || user.role === 'staff',
    ...options,
  })
  fastify.post('/news', async (request) => fastify.rooms.broadcast('lobby', 'news', request.body))
  await fastify.ready() // no listen: inject needs no port
  t.teardown(() => fastify.close())
  return fastify
}

t.test('#12 inject: a connected client without a port or a token, through the real route', async (t) => {
  const fastify = await app(t)
  const alice = await fastify.rooms.inject({ id: 'alice' })
  t.equal(alice.state, 'open')
  t.equal(fastify.rooms.stats().connections, 1)
  t.same(await alice.request('shout', { text: 'hi' }), { from: 'alice', text: 'HI' }, 'a host handler answers')
  await t.rejects(alice.request('shout', { text: 42 }), { code: 'invalid_message' }, 'frames are validated')
  t.match(await alice.join('lobby'), { room: 'lobby', seq: 0 })
  await t.rejects(alice.join('staff'), { code: 'forbidden' }, 'authorizeJoin applies')
  const staff = await fastify.rooms.inject({ id: 'sam', role: 'staff' })
  t.match(await staff.join('staff'), { room: 'staff' }, 'the user object is ctx.user')
  const news = bounded(new Promise<unknown>((resolve) => alice.on('news', (frame) => resolve([frame.seq, frame.payload]))), 'the news event')
  const published = await fastify.inject({ method: 'POST', url: '/news', payload: { headline: 'up' } })
  t.same(published.json(), { seq: 1 })
  t.same(await news, [1, { headline: 'up' }], 'a broadcast from an HTTP handler reaches it')
  const direct = bounded(new Promise<unknown>((resolve) => alice.on('note', (frame) => resolve(frame.payload))), 'the direct frame')
  await fastify.rooms.sendToUser('alice', 'note', { n: 1 })
  t.same(await direct, { n: 1 })
  alice.close()
  staff.close()
  await bounded((async () => { while (fastify.rooms.stats().connections > 0) await new Promise((resolve) => setImmediate(resolve)) })(), 'the server closing them')
  t.equal(fastify.rooms.stats().connections, 0)
  t.equal(fastify.rooms.stats().closes['1000'], 2, 'the server saw each client\'s 1000, as over TCP')
})

t.test('#12 inject: limits apply, and a refusal rejects with its reason', async (t) => {
  const fastify = await app(t, { maxConnectionsPerUser: 1 })
  await fastify.rooms.inject({ id: 'alice' })
  await t.rejects(fastify.rooms.inject({ id: 'alice' }), { code: 'unavailable', details: { status: 503 } })
  await t.rejects(fastify.rooms.inject({ id: '' }), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(fastify.rooms.inject(null as never), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
})

t.test('#12 inject: the server closing ends injected clients (no reconnect), and close() completes', async (t) => {
  const fastify = Fastify()
  await fastify.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN] })
  await fastify.ready()
  const client = await fastify.rooms.inject({ id: 'alice' })
  const states: string[] = []
  client.on('state', (state) => states.push(state))
  await bounded(fastify.close(), 'fastify.close()')
  t.equal(client.state, 'closed')
  t.same(states, ['closed'], 'closed, never reconnecting')
})

t.test('#12 inject: the ticket header cannot be forged over the network, nor skip the rate limit', async (t) => {
  const server = await startServer(t, { handshakeRateLimit: { max: 2, timeWindow: '1 minute' } })
  const statuses: number[] = []
  for (let i = 0; i < 3; i++) {
    statuses.push(await bounded(new Promise<number>((resolve) => {
      const ws = new WebSocket(`${server.url}/ws`, { headers: { 'x-fastify-rooms-inject': 'guessed-ticket' }, origin: ORIGIN })
      ws.on('error', () => {})
      ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0))
      ws.on('open', () => resolve(101))
    }), 'the forged upgrade\'s answer'))
  }
  t.same(statuses, [401, 401, 429])
})

// fastify.rooms and handler contexts answer bad arguments with documented errors and leave other sockets
// alone: close codes and reasons, names that are not well-formed text, idempotency keys, handler errors.
import t from 'tap'
import { connect, sign, startServer, until, rejectedUpgrade } from './helpers/index.js'
import Type from 'typebox'
import { defineMessage, FrameError } from '../lib/index.js'

const cjk = (n: number) => '界'.repeat(n)

t.test('#10 disconnectUser: an over-long reason is cut on a character boundary; a bad code rejects and leaves sockets alone', async (t) => {
  const server = await startServer(t, { presence: false })
  const alice = await connect(server, 'alice')
  await alice.join('lobby')
  await t.rejects(server.app.rooms.disconnectUser('alice', 1006, 'x'), { code: 'FST_ROOMS_INVALID_ARGUMENT', statusCode: 400, message: /code must be an integer close code/ })
  await t.rejects(server.app.rooms.disconnectUser('alice', 999.5), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  alice.send({ type: 'ping', id: 'still' })
  t.equal((await alice.nextOfType('pong')).id, 'still', 'the socket is untouched by a refused call')
  await server.app.rooms.disconnectUser('alice', 4001, cjk(50))
  const closed = await alice.closed
  t.same(closed, { code: 4001, reason: cjk(41) }, '41 three-byte characters: 123 bytes, the most a close frame carries')
  await until(() => server.app.rooms.stats().connections === 0, 'the socket is gone from the registry')
  t.same(await server.app.rooms.members('lobby'), [], 'and from presence: no zombie')
})

t.test('#10 ctx.connection.close with a code ws refuses: the handler gets a clear error, the socket is not left half-closed', async (t) => {
  const server = await startServer(t, {
    messages: {
      kick: defineMessage({ schema: Type.Object({}), handler: (ctx) => ctx.connection.close(1006, 'nope') }),
    },
  })
  const alice = await connect(server, 'alice')
  const answer = await alice.request({ type: 'kick', payload: {} })
  t.same(answer.payload.code, 'internal_error')
  t.ok(server.logs.some((line) => line.includes('close code an endpoint may send')), 'the host sees why in its log')
  alice.send({ type: 'ping', id: 'p' })
  t.equal((await alice.nextOfType('pong')).id, 'p')
})

t.test('#10 names that are not well-formed text or hold control characters are refused everywhere', async (t) => {
  const server = await startServer(t, { presence: false })
  const alice = await connect(server, 'alice')
  for (const room of ['team:\ud800', 'a\nb', 'bell\u0007']) {
    const answer = await alice.request({ type: 'join', room })
    t.same(answer.payload.details, { errors: [{ path: '/room', message: 'must be well-formed text without control characters' }] }, JSON.stringify(room))
  }
  t.same((await alice.request({ type: 'join', room: 'team:\ufffd' })).type, 'ack', 'U+FFFD itself is a fine character')
  await t.rejects(server.app.rooms.broadcast('team:\ud800', 'note', {}), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(server.app.rooms.sendToUser('victim\nother', 'note', {}), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(server.app.rooms.disconnectUser('victim2\n4000'), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(server.app.rooms.broadcast('lobby', 'note', {}, { except: 'a\nb' }), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /except/ })
  for (const sub of ['eve\n', 'eve\ud800', '']) {
    t.equal((await rejectedUpgrade(server, sub, { token: sign(sub) })).status, 401, `sub ${JSON.stringify(sub)} → 401`)
  }
})

t.test('#10 broadcast idempotencyKey: the same key publishes once and resolves the first seq', async (t) => {
  const server = await startServer(t, { presence: false })
  const alice = await connect(server, 'alice')
  await alice.join('orders')
  const first = await server.app.rooms.broadcast('orders', 'paid', { order: 7 }, { idempotencyKey: 'pay-7' })
  const retried = await server.app.rooms.broadcast('orders', 'paid', { order: 7 }, { idempotencyKey: 'pay-7' })
  const other = await server.app.rooms.broadcast('orders', 'paid', { order: 8 }, { idempotencyKey: 'pay-8' })
  t.same([first, retried, other], [{ seq: 1 }, { seq: 1 }, { seq: 2 }])
  t.equal((await alice.nextOfType('paid')).seq, 1)
  t.equal((await alice.nextOfType('paid')).seq, 2)
  t.equal(alice.frames.filter((frame) => frame.type === 'paid').length, 2, 'the retry delivered nothing')
  t.same(await server.app.rooms.broadcast('elsewhere', 'paid', {}, { idempotencyKey: 'pay-7' }), { seq: 1 }, 'keys are per room')
})

t.test('#10 a handler that throws a FrameError or fails on input is answered without an error-level log', async (t) => {
  const server = await startServer(t, {
    messages: { refuse: defineMessage({ schema: Type.Unknown(), handler: () => { throw new FrameError('nope', 'refused') } }) },
  })
  const alice = await connect(server, 'alice')
  t.same((await alice.request({ type: 'refuse', payload: {} })).payload, { code: 'nope', message: 'refused' })
  // Deep enough to overflow JSON.stringify in the retry fingerprint, had it been parsed.
  alice.send('{"type":"refuse","id":"deep","payload":' + '['.repeat(20_000) + ']'.repeat(20_000) + '}')
  t.same((await alice.nextOfType('error')).payload.code, 'invalid_message')
  t.notOk(server.logs.some((line) => JSON.parse(line).level >= 50))
})

t.test('#11 disconnectUser without a code closes 1008 "disconnected by the server"', async (t) => {
  const server = await startServer(t)
  const alice = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  await server.app.rooms.disconnectUser('alice')
  t.same(await alice.closed, { code: 1008, reason: 'disconnected by the server' })
  bob.send({ type: 'ping', id: 'still' })
  t.equal((await bob.nextOfType('pong')).id, 'still', 'another user is untouched')
})

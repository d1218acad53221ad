// Every malformed input gets its documented answer, and only the sender sees it.
import t from 'tap'
import Type from 'typebox'
import { defineMessage, type MessageContext } from '../lib/index.js'
import { connect, startServer, type Frame } from './helpers/index.js'

const Chat = Type.Object({ text: Type.String({ minLength: 1, maxLength: 20 }) }, { additionalProperties: false })

function chatServer (t: Parameters<typeof startServer>[0], extra: Parameters<typeof startServer>[1] = {}) {
  const calls: unknown[] = []
  const server = startServer(t, {
    messages: {
      chat: defineMessage({
        schema: Chat,
        room: true,
        handler: async (ctx, payload) => {
          calls.push(payload)
          // payload.text is typed string here: inferred from the schema.
          const text: string = payload.text
          return ctx.rooms.broadcast(ctx.room!, 'chat', { from: ctx.user.id, text })
        },
      }),
      echo: defineMessage({
        schema: Type.Object({ value: Type.Unknown() }),
        handler: (ctx, payload) => {
          calls.push(payload)
          ctx.reply('echoed', payload)
          return { echoed: true, prototypeIsPlain: Object.getPrototypeOf(payload) === Object.prototype }
        },
      }),
      boom: defineMessage({
        schema: Type.Object({ mode: Type.Union([Type.Literal('throw'), Type.Literal('reject')]) }),
        handler: (_ctx: MessageContext, payload) => {
          if (payload.mode === 'throw') throw new Error('secret detail: db password wrong')
          return Promise.reject(new Error('secret detail: rejected'))
        },
      }),
    },
    ...extra,
  })
  return { server, calls }
}

function isAnswer (id: string | number) {
  return (frame: Frame) => (frame.type === 'ack' || frame.type === 'error') && frame.id === id
}

t.test('non-JSON → invalid_json', async (t) => {
  const { server } = chatServer(t)
  const client = await connect(await server)
  client.send('{not json')
  const error = await client.nextOfType('error')
  t.same(error.payload, { code: 'invalid_json', message: 'frame is not valid JSON' })
})

t.test('envelope failures → invalid_message with paths, echoing a readable id', async (t) => {
  const { server } = chatServer(t)
  const client = await connect(await server)
  client.send({ type: 'echo', id: 'e1', payload: { value: 1 }, extra: true })
  const extra = await client.next(isAnswer('e1'))
  t.equal(extra.payload.code, 'invalid_message')
  t.same(extra.payload.details.errors, [{ path: '', message: 'must not have additional properties' }])
  client.send([1, 2])
  const array = await client.nextOfType('error')
  t.equal(array.payload.code, 'invalid_message')
  t.equal(array.id, undefined)
  client.send({ id: 'e2' })
  const noType = await client.next(isAnswer('e2'))
  t.equal(noType.payload.code, 'invalid_message')
  t.match(noType.payload.details.errors, [{ path: '', message: /type/ }])
})

t.test('payload schema failure → invalid_message with TypeBox error paths; handler not run', async (t) => {
  const { server, calls } = chatServer(t)
  const client = await connect(await server)
  await client.join('lobby')
  const answer = await client.request({ type: 'chat', room: 'lobby', payload: { text: '' } }, 'c1')
  t.equal(answer.type, 'error')
  t.equal(answer.payload.code, 'invalid_message')
  t.same(answer.payload.details.errors, [{ path: '/payload/text', message: 'must not have fewer than 1 characters' }])
  const wrongType = await client.request({ type: 'chat', room: 'lobby', payload: { text: 5 } }, 'c2')
  t.same(wrongType.payload.details.errors, [{ path: '/payload/text', message: 'must be string' }])
  t.equal(calls.length, 0)
})

t.test('unknown type → unknown_type', async (t) => {
  const { server } = chatServer(t)
  const client = await connect(await server)
  const answer = await client.request({ type: 'teleport' }, 7)
  t.equal(answer.id, 7)
  t.same(answer.payload, { code: 'unknown_type', message: 'unknown message type "teleport"' })
  t.equal((await server).app.rooms.stats().messagesIn['(unknown)'], 1)
})

t.test('frame for a room not joined → not_in_room; room required → invalid_message', async (t) => {
  const { server, calls } = chatServer(t)
  const client = await connect(await server)
  const answer = await client.request({ type: 'chat', room: 'elsewhere', payload: { text: 'hi' } })
  t.equal(answer.payload.code, 'not_in_room')
  const noRoom = await client.request({ type: 'chat', payload: { text: 'hi' } })
  t.equal(noRoom.payload.code, 'invalid_message')
  t.same(noRoom.payload.details.errors, [{ path: '/room', message: 'is required' }])
  const leave = await client.request({ type: 'leave', room: 'elsewhere' })
  t.equal(leave.payload.code, 'not_in_room')
  t.equal(calls.length, 0)
})

t.test('too many rooms → too_many_rooms', async (t) => {
  const { server } = chatServer(t, { maxRoomsPerConnection: 2 })
  const client = await connect(await server)
  await client.join('a')
  await client.join('b')
  const third = await client.request({ type: 'join', room: 'c' })
  t.equal(third.type, 'error')
  t.equal(third.payload.code, 'too_many_rooms')
  t.equal((await client.request({ type: 'join', room: 'a' })).type, 'ack', 'joining a joined room again is fine')
})

t.test('binary frame → invalid_message', async (t) => {
  const { server } = chatServer(t)
  const client = await connect(await server)
  client.ws.send(Buffer.from([1, 2, 3]), { binary: true })
  const error = await client.nextOfType('error')
  t.same(error.payload, { code: 'invalid_message', message: 'binary frames are not supported: send JSON text frames' })
})

t.test('frame over maxPayload → close 1009; other sockets unaffected', async (t) => {
  const { server } = chatServer(t, { maxPayload: 1024 })
  const s = await server
  const bystander = await connect(s, 'bob')
  const client = await connect(s, 'alice')
  client.send({ type: 'echo', payload: { value: 'x'.repeat(2000) } })
  const closed = await client.closed
  t.equal(closed.code, 1009)
  bystander.send({ type: 'ping', id: 'still-there' })
  t.equal((await bystander.nextOfType('pong')).id, 'still-there', 'bystander still served')
})

t.test('ping → pong with the id, and without one', async (t) => {
  const { server } = chatServer(t)
  const client = await connect(await server)
  client.send({ type: 'ping', id: 'p1' })
  const pong = await client.nextOfType('pong')
  t.equal(pong.id, 'p1')
  t.type(pong.time, 'number')
  client.send({ type: 'ping' })
  t.equal((await client.nextOfType('pong')).id, undefined)
})

t.test('token bucket → rate_limited with the id; sustained abuse → close 1008', async (t) => {
  const { server } = chatServer(t, {
    rateLimit: { messagesPerSecond: 1, burst: 3 },
    abuseLimit: { rateLimited: 5, windowMs: 60_000 },
  })
  const s = await server
  const bystander = await connect(s, 'bob')
  const client = await connect(s, 'alice')
  for (let i = 0; i < 3; i++) client.send({ type: 'ping', id: `ok${i}` })
  client.send({ type: 'ping', id: 'limited' })
  const limited = await client.next(isAnswer('limited'))
  t.same(limited.payload, { code: 'rate_limited', message: 'too many frames: slow down' })
  for (let i = 0; i < 10; i++) client.send({ type: 'ping', id: `flood${i}` })
  const closed = await client.closed
  t.equal(closed.code, 1008)
  t.equal(closed.reason, 'rate limit abuse')
  const errors = client.frames.filter((f) => f.type === 'error' && f.payload.code === 'rate_limited')
  t.equal(errors.length, 5, 'one rate_limited per frame until the abuse limit, then the close')
  bystander.send({ type: 'ping', id: 'b' })
  t.equal((await bystander.nextOfType('pong')).id, 'b', 'other sockets keep their own bucket')
})

t.test('a handler that throws or rejects → internal_error to that client only, details logged', async (t) => {
  const { server } = chatServer(t)
  const s = await server
  const bystander = await connect(s, 'bob')
  await bystander.join('lobby')
  const client = await connect(s, 'alice')
  await client.join('lobby')
  await bystander.next((f) => f.type === 'presence' && f.payload.user.id === 'alice')
  const thrown = await client.request({ type: 'boom', payload: { mode: 'throw' }, traceId: 'trace-throw' }, 'b1')
  t.same(thrown.payload, { code: 'internal_error', message: 'internal error' })
  const rejected = await client.request({ type: 'boom', payload: { mode: 'reject' } }, 'b2')
  t.same(rejected.payload, { code: 'internal_error', message: 'internal error' })
  // Both sockets still work, and the bystander saw nothing of it.
  const chat = await client.request({ type: 'chat', room: 'lobby', payload: { text: 'still here' } })
  t.equal(chat.type, 'ack')
  const seen = await bystander.nextOfType('chat')
  t.same(seen.payload, { from: 'alice', text: 'still here' })
  t.notOk(bystander.frames.some((f) => f.type === 'error'))
  const logLine = s.logs.map((line) => JSON.parse(line)).find((line) => line.trace_id === 'trace-throw')
  t.equal(logLine?.msg, 'fastify-rooms: handler failed')
  t.equal(logLine?.type, 'boom')
  t.match(logLine?.err?.message, 'secret detail: db password wrong')
  t.match(logLine?.err?.stack, /Error: secret detail/)
  t.equal(s.app.rooms.stats().errors.internal_error, 2)
})

t.test('__proto__ and constructor.prototype keys never reach a handler', async (t) => {
  const { server, calls } = chatServer(t)
  const client = await connect(await server)
  client.send('{"type":"echo","id":"x1","payload":{"value":{"__proto__":{"polluted":true}}}}')
  const proto = await client.next(isAnswer('x1'))
  t.equal(proto.payload.code, 'invalid_message')
  t.match(proto.payload.message, 'forbidden key')
  client.send('{"type":"echo","id":"x2","payload":{"value":{"constructor":{"prototype":{"polluted":true}}}}}')
  const ctor = await client.next(isAnswer('x2'))
  t.equal(ctor.payload.code, 'invalid_message')
  client.send('{"type":"echo","id":"x3","__proto__":{"polluted":true},"payload":{"value":1}}')
  t.equal((await client.next(isAnswer('x3'))).payload.code, 'invalid_message')
  t.equal(calls.length, 0, 'handler never ran')
  t.equal(({} as Record<string, unknown>).polluted, undefined, 'Object.prototype untouched')
  const fine = await client.request({ type: 'echo', payload: { value: { constructor: 'just a string' } } }, 'x4')
  t.same(fine.payload, { echoed: true, prototypeIsPlain: true }, 'a plain "constructor" key is data, and allowed')
})

t.test('every frame with an id gets exactly one answer; ctx.reply sends a direct frame', async (t) => {
  const { server } = chatServer(t)
  const client = await connect(await server)
  const ids = ['a', 'b', 'c', 'd', 'e']
  client.send({ type: 'echo', id: 'a', payload: { value: 1 } })
  client.send({ type: 'echo', id: 'b', payload: {} })
  client.send({ type: 'nope', id: 'c' })
  client.send({ type: 'join', id: 'd', room: 'r' })
  client.send({ type: 'ping', id: 'e' })
  // A queued frame sent last: once it is answered, every earlier frame has been answered too.
  client.send({ type: 'join', id: 'fence', room: 'r2' })
  await client.next((f) => f.id === 'fence')
  for (const id of ids) {
    t.equal(client.frames.filter((f) => f.id === id).length, 1, `one answer for ${id}`)
  }
  const echoed = client.frames.find((f) => f.type === 'echoed')
  t.same(echoed?.payload, { value: 1 })
  t.same(client.frames.find((f) => f.id === 'a')?.payload, { echoed: true, prototypeIsPlain: true })
})

t.test('frames of one socket run in order: a chat sent right after join finds the room joined', async (t) => {
  const slowJoin = startServer(t, {
    authorizeJoin: () => new Promise((resolve) => setImmediate(() => resolve(true))),
    messages: {
      chat: defineMessage({ schema: Chat, room: true, handler: (ctx, payload) => ctx.rooms.broadcast(ctx.room!, 'chat', payload) }),
    },
  })
  const client = await connect(await slowJoin)
  client.send({ type: 'join', id: 'j', room: 'lobby' })
  client.send({ type: 'chat', id: 'c', room: 'lobby', payload: { text: 'first' } })
  const answer = await client.next(isAnswer('c'))
  t.equal(answer.type, 'ack')
  t.equal(answer.payload.seq, 2, 'presence join was seq 1, the chat seq 2')
})

t.test('a string id and an integer id are both echoed as sent', async (t) => {
  const { server } = chatServer(t)
  const client = await connect(await server)
  t.equal((await client.request({ type: 'join', room: 'r' }, 42)).id, 42)
  t.equal((await client.request({ type: 'join', room: 's' }, 'str')).id, 'str')
  client.send({ type: 'join', room: 't', id: 1.5 })
  const bad = await client.nextOfType('error')
  t.equal(bad.payload.code, 'invalid_message', 'a fractional id is not an id')
  t.equal(bad.id, undefined, 'and is not echoed')
  t.match(bad.payload.details.errors, [{ path: '/id' }])
})

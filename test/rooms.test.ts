// Rooms: membership, ordered fan-out with seq, presence, and the `fastify.rooms` API from HTTP handlers.
import t from 'tap'
import Type from 'typebox'
import { defineMessage } from '../lib/index.js'
import { connect, startServer, until, type Frame } from './helpers/index.js'

const chatMessages = {
  chat: defineMessage({
    schema: Type.Object({ text: Type.String({ minLength: 1 }) }),
    room: true,
    handler: (ctx, payload) => ctx.rooms.broadcast(ctx.room!, 'chat', { from: ctx.user.id, text: payload.text }),
  }),
}

t.test('two clients in one room see the same events with consecutive seq; another room sees none', async (t) => {
  const server = await startServer(t, { messages: chatMessages, presence: false })
  const alice = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  const carol = await connect(server, 'carol')
  await alice.join('lobby')
  await bob.join('lobby')
  await carol.join('other')
  for (let i = 0; i < 5; i++) {
    const sender = i % 2 === 0 ? alice : bob
    t.equal((await sender.request({ type: 'chat', room: 'lobby', payload: { text: `m${i}` } })).type, 'ack')
  }
  await server.app.rooms.broadcast('other', 'note', { n: 1 })
  const seenBy = async (client: typeof alice) => {
    const events: Frame[] = []
    while (events.length < 5) events.push(await client.nextOfType('chat'))
    return events
  }
  const aliceEvents = await seenBy(alice)
  const bobEvents = await seenBy(bob)
  t.same(aliceEvents.map((e) => e.seq), [1, 2, 3, 4, 5])
  t.same(bobEvents.map((e) => e.seq), [1, 2, 3, 4, 5])
  t.same(aliceEvents.map((e) => e.payload.text), ['m0', 'm1', 'm2', 'm3', 'm4'])
  t.same(aliceEvents, bobEvents, 'byte-for-byte the same events')
  for (const event of aliceEvents) {
    t.equal(event.room, 'lobby')
    t.type(event.traceId, 'string')
    t.type(event.time, 'number')
  }
  const note = await carol.nextOfType('note')
  t.equal(note.seq, 1, 'seq is per room')
  t.notOk(carol.frames.some((f) => f.type === 'chat'), 'the other room saw no chat')
  t.notOk(alice.frames.some((f) => f.type === 'note'))
})

t.test('broadcast from an HTTP handler resolves { seq } and reaches every member', async (t) => {
  const server = await startServer(t, { presence: false }, {
    setup: (app) => {
      app.post<{ Params: { room: string }; Body: { text: string } }>('/rooms/:room/announce', async (request) => {
        return app.rooms.broadcast(request.params.room, 'announcement', request.body, { traceId: String(request.id) })
      })
    },
  })
  const alice = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  const joined = await alice.join('news')
  t.equal(joined.payload.seq, 0)
  t.type(joined.payload.epoch, 'string')
  await bob.join('news')
  const post = (text: string) => server.app.inject({ method: 'POST', url: '/rooms/news/announce', payload: { text } })
  t.same((await post('one')).json(), { seq: 1 })
  t.same((await post('two')).json(), { seq: 2 })
  for (const client of [alice, bob]) {
    const first = await client.nextOfType('announcement')
    const second = await client.nextOfType('announcement')
    t.same([first.seq, second.seq], [1, 2])
    t.same(first.payload, { text: 'one' })
    t.equal(first.room, 'news')
    t.type(first.traceId, 'string')
  }
})

t.test('the traceId of a frame is carried into the events its handler broadcasts', async (t) => {
  const server = await startServer(t, { messages: chatMessages, presence: false })
  const alice = await connect(server, 'alice')
  await alice.join('lobby')
  alice.send({ type: 'chat', room: 'lobby', payload: { text: 'hi' }, traceId: 'trace-42' })
  t.equal((await alice.nextOfType('chat')).traceId, 'trace-42')
})

t.test('join ack carries seq, epoch and members; presence join/leave events; members/count/rooms', async (t) => {
  const server = await startServer(t)
  const alice = await connect(server, 'alice')
  const first = await alice.join('lobby')
  t.same(first.payload.members, [{ id: 'alice' }])
  t.equal(first.payload.seq, 0)
  const aliceJoin = await alice.nextOfType('presence')
  t.same(aliceJoin.payload, { action: 'join', user: { id: 'alice' } })
  t.equal(aliceJoin.seq, 1)

  const bob = await connect(server, 'bob')
  const second = await bob.join('lobby')
  t.equal(second.payload.seq, 1)
  t.equal(second.payload.epoch, first.payload.epoch)
  t.same(second.payload.members.map((m: { id: string }) => m.id).sort(), ['alice', 'bob'])
  const bobJoin = await alice.nextOfType('presence')
  t.same(bobJoin.payload, { action: 'join', user: { id: 'bob' } })
  t.equal(bobJoin.seq, 2)

  // A second socket of the same user is not a new member.
  const bob2 = await connect(server, 'bob')
  await bob2.join('lobby')
  t.same((await server.app.rooms.members('lobby')).map((m) => m.id).sort(), ['alice', 'bob'])
  t.equal(await server.app.rooms.count('lobby'), 2)
  t.same(await server.app.rooms.rooms(), ['lobby'])

  await bob.close()
  t.equal((await bob2.request({ type: 'leave', room: 'lobby' })).type, 'ack')
  const bobLeave = await alice.nextOfType('presence')
  t.same(bobLeave.payload, { action: 'leave', user: { id: 'bob' } })
  t.equal(bobLeave.seq, 3, 'one leave, when the last socket of bob left')
  t.equal(await server.app.rooms.count('lobby'), 1)

  await alice.request({ type: 'leave', room: 'lobby' })
  t.same(await server.app.rooms.rooms(), [])
  t.same(server.app.rooms.stats().rooms, 0)
})

t.test('authorizeJoin refusing → forbidden; it receives the user and the room', async (t) => {
  const seen: Array<[string, string]> = []
  const server = await startServer(t, {
    userFromToken: (claims) => ({ id: claims.sub as string, roles: claims.roles }),
    authorizeJoin: (user, room) => {
      seen.push([user.id, room])
      return !room.startsWith('admin:') || (user.roles as string[] | undefined)?.includes('admin') === true
    },
  })
  const { sign } = await import('./helpers/index.js')
  const alice = await connect(server, 'alice')
  const refused = await alice.request({ type: 'join', room: 'admin:ops' })
  t.same(refused.payload, { code: 'forbidden', message: 'not allowed to join "admin:ops"' })
  t.same(alice.frames.find((f) => f.type === 'welcome')?.payload.user, { id: 'alice' })
  const root = await connect(server, 'root', { token: sign('root', { roles: ['admin'] }) })
  t.equal((await root.request({ type: 'join', room: 'admin:ops' })).type, 'ack')
  t.same(seen, [['alice', 'admin:ops'], ['root', 'admin:ops']])
  t.same(await server.app.rooms.members('admin:ops'), [{ id: 'root' }])
})

t.test('an authorizeJoin that throws → internal_error, the socket lives on', async (t) => {
  const server = await startServer(t, { authorizeJoin: () => { throw new Error('lookup failed') } })
  const alice = await connect(server, 'alice')
  const answer = await alice.request({ type: 'join', room: 'x' })
  t.equal(answer.payload.code, 'internal_error')
  alice.send({ type: 'ping', id: 'alive' })
  t.equal((await alice.nextOfType('pong')).id, 'alive')
  t.same(await server.app.rooms.members('x'), [])
})

t.test('broadcast except skips one connection', async (t) => {
  const server = await startServer(t, {
    presence: false,
    messages: {
      say: defineMessage({
        schema: Type.Object({ text: Type.String() }),
        room: true,
        handler: (ctx, payload) => ctx.rooms.broadcast(ctx.room!, 'said', payload, { except: ctx.connection.id }),
      }),
    },
  })
  const alice = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  await alice.join('r')
  await bob.join('r')
  const ack = await alice.request({ type: 'say', room: 'r', payload: { text: 'not to me' } })
  t.equal(ack.payload.seq, 1)
  t.equal((await bob.nextOfType('said')).seq, 1)
  await alice.join('r') // a round trip: anything for alice would have arrived before this ack
  t.notOk(alice.frames.some((f) => f.type === 'said'))
})

t.test('sendToUser reaches every socket of that user only; disconnectUser closes them 1008', async (t) => {
  const server = await startServer(t)
  const a1 = await connect(server, 'alice')
  const a2 = await connect(server, 'alice')
  const bob = await connect(server, 'bob')
  await server.app.rooms.sendToUser('alice', 'notice', { text: 'hello' })
  for (const socket of [a1, a2]) {
    const notice = await socket.nextOfType('notice')
    t.same(notice.payload, { text: 'hello' })
    t.equal(notice.seq, undefined, 'direct frames carry no seq')
  }
  await server.app.rooms.disconnectUser('alice', 1008, 'banned')
  t.same(await a1.closed, { code: 1008, reason: 'banned' })
  t.same(await a2.closed, { code: 1008, reason: 'banned' })
  bob.send({ type: 'ping', id: 'b' })
  t.equal((await bob.nextOfType('pong')).id, 'b')
  t.notOk(bob.frames.some((f) => f.type === 'notice'))
})

t.test('the API rejects bad arguments with a 400 error that names them', async (t) => {
  const server = await startServer(t)
  const api = server.app.rooms
  await t.rejects(api.broadcast('', 'x', {}), { code: 'FST_ROOMS_INVALID_ARGUMENT', statusCode: 400, message: /room/ })
  await t.rejects(api.broadcast('r'.repeat(129), 'x', {}), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(api.broadcast('r', 'presence', {}), { message: /reserved/ })
  await t.rejects(api.broadcast('r', 'error', {}), { message: /reserved/ })
  await t.rejects(api.broadcast('r', 'bad type!', {}), { message: /type/ })
  await t.rejects(api.sendToUser('', 'x', {}), { message: /userId/ })
  await t.rejects(api.members(''), { message: /room/ })
  t.same(await api.broadcast('r', 'x', undefined), { seq: 1 }, 'an undefined payload is sent as null')
})

t.test('a publish is serialized once, whatever the number of members', async (t) => {
  const server = await startServer(t, { presence: false })
  const clients = await Promise.all(['a', 'b', 'c', 'd', 'e', 'f'].map((id) => connect(server, id)))
  const stringifyCallsFor = async (members: number) => {
    const room = `room-${members}`
    for (const client of clients.slice(0, members)) await client.join(room)
    const original = JSON.stringify
    let calls = 0
    JSON.stringify = ((...args: Parameters<typeof JSON.stringify>) => {
      calls++
      return original(...args)
    }) as typeof JSON.stringify
    try {
      await server.app.rooms.broadcast(room, 'tick', { big: 'x'.repeat(1000) })
    } finally {
      JSON.stringify = original
    }
    for (const client of clients.slice(0, members)) t.equal((await client.nextOfType('tick')).room, room)
    return calls
  }
  const one = await stringifyCallsFor(1)
  const six = await stringifyCallsFor(6)
  t.equal(six, one, 'no per-recipient serialization')
  t.ok(one <= 4, `a handful of stringify calls per publish (saw ${one})`)
  t.equal(server.app.rooms.stats().messagesOut.tick, 7)
})

t.test('stats() counts connections, members and messages', async (t) => {
  const server = await startServer(t, { messages: chatMessages })
  const alice = await connect(server, 'alice')
  await alice.join('a')
  await alice.join('b')
  await alice.request({ type: 'chat', room: 'a', payload: { text: 'x' } })
  const stats = server.app.rooms.stats()
  t.equal(stats.connections, 1)
  t.equal(stats.rooms, 2)
  t.equal(stats.members, 2)
  t.equal(stats.messagesIn.join, 2)
  t.equal(stats.messagesIn.chat, 1)
  t.equal(stats.messagesOut.chat, 1)
  t.equal(stats.messagesOut.ack, 3)
  t.equal(stats.handshakes.ok, 1)
  t.type(stats.maxBufferedBytes, 'number')
  await alice.close(1000)
  await until(() => server.app.rooms.stats().connections === 0, 'server saw the close')
  t.equal(server.app.rooms.stats().closes['1000'], 1)
})

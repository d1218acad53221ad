// Issue #12: declared `events` are checked where the host sends them (once per publish), so a JS host
// gets the same answer its TypeScript types give.
import Fastify from 'fastify'
import t from 'tap'
import Type from 'typebox'
import rooms, { defineMessage, defineRooms } from '../lib/index.js'
import { ORIGIN, SECRET } from './helpers/index.js'

const events = { chat: Type.Object({ from: Type.String(), text: Type.String({ maxLength: 10 }) }, { additionalProperties: false }) }

t.test('#12 events: broadcast, sendToUser and ctx.reply refuse a payload that does not match its schema', async (t) => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(rooms, defineRooms({
    jwt: { secret: SECRET },
    allowedOrigins: [ORIGIN],
    presence: false,
    events,
    messages: {
      echo: defineMessage({ schema: Type.Object({ text: Type.String() }), handler: (ctx, payload) => { ctx.reply('chat', { from: 'echo', text: payload.text }); return 'sent' } }),
    },
  }))
  await app.ready()
  t.same(await app.rooms.broadcast('lobby', 'chat', { from: 'ops', text: 'hi' }), { seq: 1 })
  await t.rejects(app.rooms.broadcast('lobby', 'chat', { from: 'ops', text: 'far too long a text' }), {
    code: 'FST_ROOMS_INVALID_ARGUMENT', statusCode: 400, message: /payload does not match events\.chat: \/text must not have more than 10 characters/,
  })
  await t.rejects(app.rooms.sendToUser('alice', 'chat', { from: 'ops' } as never), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /events\.chat/ })
  t.same(await app.rooms.broadcast('lobby', 'undeclared', { anything: true }), { seq: 2 }, 'undeclared types are not checked; the refused publish used no seq')
  t.same((await app.rooms.history('lobby')).events.map((event) => [event.seq, event.type]), [[1, 'chat'], [2, 'undeclared']])
  const client = await app.rooms.inject({ id: 'alice' })
  const echoed = new Promise<unknown>((resolve) => client.on('chat', (frame) => resolve(frame.payload)))
  t.equal(await client.request('echo', { text: 'short' }), 'sent')
  t.same(await echoed, { from: 'echo', text: 'short' })
  await t.rejects(client.request('echo', { text: 'much too long for chat' }), { code: 'internal_error' }, 'a handler replying a bad payload fails its frame')
  client.close()
})

t.test('#12 events: option errors name the option', async (t) => {
  const cases: Array<[unknown, RegExp]> = [
    [{ presence: Type.Object({}) }, /"events\.presence" uses a type name the protocol reserves/],
    [{ '9lives': Type.Object({}) }, /"events\.9lives" has a type name/],
    [{ chat: 'string' }, /"events\.chat" must be a TypeBox schema/],
    [[], /"events" must be an object/],
  ]
  for (const [value, message] of cases) {
    const app = Fastify()
    await t.rejects((async () => { await app.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], events: value as never }) })(), { code: 'FST_ROOMS_INVALID_OPTION', message })
    await app.close()
  }
})

// Type-level checks, enforced by `tsc --noEmit` in `npm test`: a handler's payload type comes from its
// TypeBox schema, and the decorator is typed. The runtime part only keeps tap from reporting an empty file.
import Fastify from 'fastify'
import t from 'tap'
import Type from 'typebox'
import rooms, { defineMessage, type RoomsApi, type RoomsStats } from '../lib/index.js'

const chat = defineMessage({
  schema: Type.Object({ text: Type.String(), tags: Type.Optional(Type.Array(Type.String())) }),
  room: true,
  handler: (ctx, payload) => {
    const text: string = payload.text
    const tags: string[] | undefined = payload.tags
    // @ts-expect-error the schema has no such field
    void payload.missing
    // @ts-expect-error text is a string, not a number
    const wrong: number = payload.text
    void wrong
    const room: string | undefined = ctx.room
    return { text, tags, room, user: ctx.user.id }
  },
})

async function typed (): Promise<void> {
  const app = Fastify()
  await app.register(rooms, { jwt: { secret: 's' }, allowedOrigins: '*', messages: { chat } })
  const api: RoomsApi = app.rooms
  const { seq }: { seq: number } = await api.broadcast('room', 'type', { any: 'payload' })
  const stats: RoomsStats = api.stats()
  void seq
  void stats
  // @ts-expect-error allowedOrigins is required
  await app.register(rooms, { jwt: { secret: 's' } })
  // A cookie session instead of a JWT: the request in, a user (or null) out, sync or async.
  await app.register(rooms, { allowedOrigins: '*', authenticate: async (request) => (request.headers.cookie === undefined ? null : { id: 'alice' }) })
  await app.register(rooms, { allowedOrigins: '*', authenticate: () => null })
  // @ts-expect-error authenticate returns a user, not a string
  await app.register(rooms, { allowedOrigins: '*', authenticate: () => 'alice' })
}

t.test('type checks compile (see tsc --noEmit)', async (t) => {
  t.type(typed, 'function')
  t.equal(chat.room, true)
})

// Room events are framed once per publish and written as is; frames must arrive intact and in order,
// interleaved with the socket's own sends, and sockets with permessage-deflate must take ws's path.
import websocket from '@fastify/websocket'
import t from 'tap'
import Type from 'typebox'
import { defineMessage, handleProtocols } from '../lib/index.js'
import { connect, startServer, until } from './helpers/index.js'

const sizes = [0, 1, 125, 126, 1000, 65_535, 65_536, 200_000]

const messages = {
  // Replies directly (ws's own send) and broadcasts (the pre-framed path) in one handler, so both kinds
  // of writes interleave on the same socket.
  mix: defineMessage({
    schema: Type.Object({ n: Type.Integer(), size: Type.Integer() }),
    room: true,
    handler: async (ctx, payload) => {
      ctx.reply('direct', { n: payload.n, blob: 'd'.repeat(payload.size) })
      await ctx.rooms.broadcast(ctx.room!, 'event', { n: payload.n, blob: 'e'.repeat(payload.size) })
      ctx.reply('direct-after', { n: payload.n })
      return null
    },
  }),
}

for (const deflate of [false, true]) {
  t.test(`frames arrive intact and in order (${deflate ? 'permessage-deflate: ws frames them' : 'no extension: framed once'})`, async (t) => {
    const server = await startServer(t, { messages, presence: false, maxPayload: 1_000_000, maxBufferedBytes: 64 * 1024 * 1024 }, {
      before: deflate
        ? async (app) => {
          await app.register(websocket, { options: { maxPayload: 1_000_000, handleProtocols, perMessageDeflate: true } })
        }
        : undefined,
    })
    const sender = await connect(server, 'sender', { wsOptions: { perMessageDeflate: deflate, maxPayload: 1_000_000 } })
    const watcher = await connect(server, 'watcher', { wsOptions: { perMessageDeflate: deflate, maxPayload: 1_000_000 } })
    t.equal(sender.ws.extensions, deflate ? 'permessage-deflate' : '', 'extension negotiated as intended')
    await sender.join('r')
    await watcher.join('r')
    let n = 0
    for (let round = 0; round < 3; round++) {
      for (const size of sizes) sender.send({ type: 'mix', id: `m${n}`, room: 'r', payload: { n: n++, size } })
    }
    await until(() => sender.frames.filter((f) => f.type === 'direct-after').length === n, 'all answers')
    await until(() => watcher.frames.filter((f) => f.type === 'event').length === n, 'all events')
    const expected = Array.from({ length: n }, (_, i) => i)
    const order = sender.frames.filter((f) => ['direct', 'event', 'direct-after'].includes(f.type)).map((f) => `${f.type}:${f.payload.n}`)
    t.same(order, expected.flatMap((i) => [`direct:${i}`, `event:${i}`, `direct-after:${i}`]), 'the socket\'s own sends and room events keep their order')
    const events = watcher.frames.filter((f) => f.type === 'event')
    t.same(events.map((f) => f.seq), expected.map((i) => i + 1))
    t.same(events.map((f) => f.payload.blob.length), expected.map((i) => sizes[i % sizes.length]), 'every payload intact, every length encoding')
    t.ok(events.every((f) => /^e*$/.test(f.payload.blob)))
  })
}

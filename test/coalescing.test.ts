// Issue #14: room events bound for one socket within one turn leave together, and nothing overtakes
// anything: a direct frame sent after queued events is written after them.
import t from 'tap'
import Type from 'typebox'
import { defineMessage } from '../lib/index.js'
import { connect, startServer, until } from './helpers/index.js'

t.test('#14 events queued in one turn and direct frames keep the order they were sent in, per socket', async (t) => {
  const server = await startServer(t, {
    presence: false,
    rateLimit: false,
    messages: {
      burst: defineMessage({
        schema: Type.Object({ count: Type.Integer() }),
        room: true,
        handler: async (ctx, payload) => {
          for (let i = 0; i < payload.count; i++) {
            await ctx.rooms.broadcast(ctx.room!, 'e', { i })
            if (i % 10 === 9) ctx.reply('direct', { after: i })
          }
          return 'done'
        },
      }),
    },
  })
  const sender = await connect(server, 'sender')
  const watcher = await connect(server, 'watcher')
  await sender.join('r')
  await watcher.join('r')
  const answer = await sender.request({ type: 'burst', room: 'r', payload: { count: 100 } })
  t.equal(answer.payload, 'done')
  await until(() => watcher.frames.filter((frame) => frame.type === 'e').length === 100, 'all 100 events')
  const seen = sender.frames.filter((frame) => frame.type === 'e' || frame.type === 'direct').map((frame) => frame.type === 'e' ? `e${frame.payload.i}` : `d${frame.payload.after}`)
  const expected = Array.from({ length: 100 }, (_, i) => i % 10 === 9 ? [`e${i}`, `d${i}`] : [`e${i}`]).flat()
  t.same(seen, expected, 'each direct frame right after the events before it')
  t.same(watcher.frames.filter((frame) => frame.type === 'e').map((frame) => frame.seq), Array.from({ length: 100 }, (_, i) => i + 1))
  // The ack is a direct frame too: it flushes the queue first, so it comes after every event of the handler.
  const ackAt = sender.frames.findIndex((frame) => frame.type === 'ack' && frame.payload === 'done')
  const lastEventAt = sender.frames.map((frame) => frame.type).lastIndexOf('e')
  t.ok(ackAt > lastEventAt && lastEventAt >= 0, `the ack (frame ${ackAt}) after the last event (frame ${lastEventAt})`)
})

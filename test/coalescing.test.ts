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

t.test('events over many turns (one, two or three a turn) and direct frames keep their order, with and without compression', async (t) => {
  for (const compression of [false, { threshold: 16 }] as const) {
    const server = await startServer(t, {
      presence: false,
      rateLimit: false,
      compression,
      messages: {
        turns: defineMessage({
          schema: Type.Object({ turns: Type.Integer() }),
          room: true,
          handler: async (ctx, payload) => {
            let n = 0
            for (let turn = 0; turn < payload.turns; turn++) {
              // 1, 2 or 3 events in a turn, a direct frame after some of them, then the next turn: the write
              // path (one event alone, a queue of several, a direct frame flushing it) in every order.
              for (let k = 0; k <= turn % 3; k++) void ctx.rooms.broadcast(ctx.room!, 'e', { i: n++, pad: 'x'.repeat(32) })
              if (turn % 4 === 1) ctx.reply('direct', { after: n - 1 })
              await new Promise((resolve) => setImmediate(resolve))
            }
            return n
          },
        }),
      },
    })
    const sender = await connect(server, 'sender', { wsOptions: { perMessageDeflate: compression !== false } })
    const watcher = await connect(server, 'watcher', { wsOptions: { perMessageDeflate: compression !== false } })
    await sender.join('r')
    await watcher.join('r')
    const answer = await sender.request({ type: 'turns', room: 'r', payload: { turns: 60 } })
    const total = answer.payload as number
    t.equal(total, 120)
    await until(() => watcher.frames.filter((frame) => frame.type === 'e').length === total, `all ${total} events`)
    t.same(watcher.frames.filter((frame) => frame.type === 'e').map((frame) => frame.seq), Array.from({ length: total }, (_, i) => i + 1), `seqs in order (compression ${compression !== false})`)
    const seen = sender.frames.filter((frame) => frame.type === 'e' || frame.type === 'direct').map((frame) => frame.type === 'e' ? frame.payload.i : `d${frame.payload.after}`)
    for (const [index, item] of seen.entries()) {
      if (typeof item === 'string') t.equal(seen[index - 1], Number(item.slice(1)), `${item} right after the events before it`)
    }
    t.same(seen.filter((item) => typeof item === 'number'), Array.from({ length: total }, (_, i) => i))
  }
})

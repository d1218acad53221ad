// No silent loss. Resume replays exactly what was missed, or says `reset`; retried ids run once.
import t from 'tap'
import Type from 'typebox'
import { defineMessage, memoryBroker, type Broker } from '../lib/index.js'
import { Client, connect, range, seqsOf, startServer, tcpSocketOf, type Frame } from './helpers/index.js'
import { seeded } from './helpers/stream-follower.js'

function lastPosition (client: Client, room: string, epoch: string): { seq: number; epoch: string } {
  const seqs = client.frames.filter((f) => f.room === room && typeof f.seq === 'number').map((f) => f.seq!)
  return { seq: seqs.length === 0 ? 0 : Math.max(...seqs), epoch }
}

t.test('disconnect, N events published, reconnect + resume: exactly those N in order, then live', async (t) => {
  const server = await startServer(t, { presence: false })
  const rooms = server.app.rooms
  const first = await connect(server, 'alice')
  const { payload: joined } = await first.join('feed')
  for (let i = 1; i <= 3; i++) await rooms.broadcast('feed', 'item', { i })
  t.same(await Promise.all([1, 2, 3].map(() => first.nextOfType('item').then((f) => f.seq))), [1, 2, 3])
  const position = lastPosition(first, 'feed', joined.epoch)
  await first.close()
  for (let i = 4; i <= 10; i++) await rooms.broadcast('feed', 'item', { i })

  const second = await connect(server, 'alice')
  const ack = await second.request({ type: 'resume', payload: { rooms: { feed: position } } })
  t.same(ack.payload, { rooms: { feed: { result: 'replayed', seq: 10, epoch: joined.epoch, replayed: 7 } } })
  await rooms.broadcast('feed', 'item', { i: 11 })
  const items: Frame[] = []
  while (items.length < 8) items.push(await second.nextOfType('item'))
  t.same(items.map((f) => f.seq), range(4, 11))
  t.same(items.map((f) => f.payload.i), range(4, 11))
  const ackIndex = second.frames.indexOf(ack)
  t.ok(second.frames.slice(0, ackIndex).filter((f) => f.type === 'item').length === 7, 'the replay comes before the ack')
  t.same(server.app.rooms.stats().resumes, { replayed: 1 })
})

t.test('join ack gives seq and epoch; resume from it with nothing missed replays nothing', async (t) => {
  const server = await startServer(t, { presence: false })
  await server.app.rooms.broadcast('r', 'x', {})
  const a = await connect(server, 'alice')
  const joined = await a.join('r')
  t.equal(joined.payload.seq, 1)
  await a.close()
  const b = await connect(server, 'alice')
  const ack = await b.request({ type: 'resume', payload: { rooms: { r: { seq: 1, epoch: joined.payload.epoch } } } })
  t.same(ack.payload.rooms.r, { result: 'replayed', seq: 1, epoch: joined.payload.epoch, replayed: 0 })
})

/**
 * The memory broker answers history reads at once, so no live event could ever arrive during a replay.
 * This wrapper (a real Broker, delegating to memoryBroker) lets a few turns of the event loop pass before
 * each history read, as a network round trip to Redis would, so live events do land mid-replay.
 */
function withSlowHistory (inner: Broker, turns: () => number): Broker {
  return Object.assign(Object.create(inner) as Broker, {
    async history (room: string, after: number) {
      for (let i = turns(); i > 0; i--) await new Promise((resolve) => setImmediate(resolve))
      return inner.history(room, after)
    },
  })
}

const SEED = 20261123
t.test(`resume while another client keeps publishing: gap-free, duplicate-free (seed ${SEED}, 25 interleavings)`, async (t) => {
  const random = seeded(SEED)
  const server = await startServer(t, {
    presence: false,
    rateLimit: false,
    broker: withSlowHistory(memoryBroker(), () => Math.floor(random() * 4)),
    messages: {
      say: defineMessage({
        schema: Type.Object({ n: Type.Integer() }),
        room: true,
        handler: (ctx, payload) => ctx.rooms.broadcast(ctx.room!, 'said', payload),
      }),
    },
  })
  const publisher = await connect(server, 'publisher')
  for (let round = 0; round < 25; round++) {
    const room = `room-${round}`
    await publisher.join(room)
    const receiver = await connect(server, 'receiver')
    const { payload: joined } = await receiver.join(room)
    const before = 1 + Math.floor(random() * 20)
    const whileAway = Math.floor(random() * 30)
    const during = 1 + Math.floor(random() * 40)
    let n = 0
    for (let i = 0; i < before; i++) await publisher.request({ type: 'say', room, payload: { n: n++ } })
    while (seqsOf(receiver.frames, 'said', room).length < before) await receiver.nextOfType('said')
    const position = lastPosition(receiver, room, joined.epoch)
    await receiver.close()
    for (let i = 0; i < whileAway; i++) await publisher.request({ type: 'say', room, payload: { n: n++ } })

    const resumed = await connect(server, 'receiver')
    // Publish without awaiting while the resume is in flight; random yields vary where they land.
    const publishing = (async () => {
      for (let i = 0; i < during; i++) {
        publisher.send({ type: 'say', room, payload: { n: n++ } })
        const yields = Math.floor(random() * 3)
        for (let y = 0; y < yields; y++) await new Promise((resolve) => setImmediate(resolve))
      }
    })()
    if (random() < 0.5) await new Promise((resolve) => setImmediate(resolve))
    const ack = await resumed.request({ type: 'resume', payload: { rooms: { [room]: position } } })
    await publishing
    const total = before + whileAway + during
    while (seqsOf(resumed.frames, 'said', room).length < total - before) {
      const seqs = seqsOf(resumed.frames, 'said', room)
      if (seqs.length > 0 && seqs[seqs.length - 1]! >= total) break
      await resumed.nextOfType('said')
    }
    const seen = [...seqsOf(receiver.frames, 'said', room), ...seqsOf(resumed.frames, 'said', room)]
    if (JSON.stringify(seen) !== JSON.stringify(range(1, total))) {
      t.fail(`round ${round}: got ${JSON.stringify(seen)}, expected 1..${total}`)
    }
    t.equal(ack.payload.rooms[room].result, 'replayed', `round ${round}: replayed`)
    await resumed.close()
  }
  t.pass('25 interleavings, every sequence exactly 1..N')
})

t.test('history overflow → reset with the current seq and epoch; live events follow', async (t) => {
  const server = await startServer(t, { presence: false, history: { maxEvents: 5, maxAgeMs: 60_000 } })
  const a = await connect(server, 'alice')
  const { payload: joined } = await a.join('r')
  await a.close()
  for (let i = 0; i < 8; i++) await server.app.rooms.broadcast('r', 'x', { i })
  const b = await connect(server, 'alice')
  const ack = await b.request({ type: 'resume', payload: { rooms: { r: { seq: 0, epoch: joined.epoch } } } })
  t.same(ack.payload.rooms.r, { result: 'reset', seq: 8, epoch: joined.epoch })
  const reset = b.frames.find((f) => f.type === 'reset')!
  t.same({ room: reset.room, payload: reset.payload }, { room: 'r', payload: { seq: 8, epoch: joined.epoch } })
  t.notOk(b.frames.some((f) => f.type === 'x'), 'nothing replayed after a reset')
  await server.app.rooms.broadcast('r', 'x', { i: 8 })
  t.equal((await b.nextOfType('x')).seq, 9)
  // Within the retained window the same room still replays.
  const c = await connect(server, 'alice')
  const partial = await c.request({ type: 'resume', payload: { rooms: { r: { seq: 4, epoch: joined.epoch } } } })
  t.same(partial.payload.rooms.r, { result: 'replayed', seq: 9, epoch: joined.epoch, replayed: 5 })
  t.same(server.app.rooms.stats().resumes, { reset: 1, replayed: 1 })
})

t.test('history older than maxAgeMs → reset', async (t) => {
  const maxAgeMs = 30
  const server = await startServer(t, { presence: false, history: { maxEvents: 100, maxAgeMs } })
  // A member stays, so the room keeps its seq and epoch: only its events age out.
  const stays = await connect(server, 'bob')
  await stays.join('r')
  const a = await connect(server, 'alice')
  const { payload: joined } = await a.join('r')
  await a.close()
  await server.app.rooms.broadcast('r', 'x', {})
  const publishedAt = Date.now()
  // The condition here is the clock itself: wait until the event is older than maxAgeMs.
  while (Date.now() - publishedAt <= maxAgeMs + 5) await new Promise((resolve) => setTimeout(resolve, maxAgeMs))
  const b = await connect(server, 'alice')
  const ack = await b.request({ type: 'resume', payload: { rooms: { r: { seq: 0, epoch: joined.epoch } } } })
  t.same(ack.payload.rooms.r, { result: 'reset', seq: 1, epoch: joined.epoch })
})

t.test('a restarted server (new epoch) → reset', async (t) => {
  const before = await startServer(t, { presence: false })
  const a = await connect(before, 'alice')
  const { payload: joined } = await a.join('r')
  await before.app.rooms.broadcast('r', 'x', {})
  await a.nextOfType('x')
  await before.app.close()
  const after = await startServer(t, { presence: false })
  await after.app.rooms.broadcast('r', 'x', {})
  const b = await connect(after, 'alice')
  const ack = await b.request({ type: 'resume', payload: { rooms: { r: { seq: 1, epoch: joined.epoch } } } })
  t.equal(ack.payload.rooms.r.result, 'reset')
  t.equal(ack.payload.rooms.r.seq, 1)
  t.not(ack.payload.rooms.r.epoch, joined.epoch)
})

t.test('a seq ahead of the room in the same epoch → invalid_message, nothing joined', async (t) => {
  const server = await startServer(t, { presence: false })
  const a = await connect(server, 'alice')
  const { payload: joined } = await a.join('r')
  const b = await connect(server, 'bob')
  const answer = await b.request({ type: 'resume', payload: { rooms: { r: { seq: 5, epoch: joined.epoch } } } })
  t.equal(answer.type, 'error')
  t.equal(answer.payload.code, 'invalid_message')
  t.same(answer.payload.details.errors, [{ path: '/payload/rooms/r/seq', message: 'is ahead of the room (its seq is 0)' }])
  t.same(await server.app.rooms.members('r'), [{ id: 'alice' }])
  const malformed = await b.request({ type: 'resume', payload: { rooms: { r: { seq: -1 } } } })
  t.equal(malformed.payload.code, 'invalid_message')
})

t.test('resume applies authorizeJoin again and reports each room on its own', async (t) => {
  const server = await startServer(t, { presence: false, authorizeJoin: (_user, room) => room !== 'secret' })
  const a = await connect(server, 'alice')
  const { payload: open } = await a.join('open')
  const epochOfSecret = (await server.app.rooms.history('secret')).epoch
  const ack = await a.request({ type: 'resume', payload: { rooms: { secret: { seq: 0, epoch: epochOfSecret }, open: { seq: 0, epoch: open.epoch } } } })
  t.same(ack.payload.rooms.secret, { result: 'error', code: 'forbidden', message: 'not allowed to join "secret"' })
  t.same(ack.payload.rooms.open, { result: 'error', code: 'invalid_message', message: 'already joined on this connection' })
  const b = await connect(server, 'alice')
  const fresh = await b.request({ type: 'resume', payload: { rooms: { open: { seq: 0, epoch: open.epoch } } } })
  t.equal(fresh.payload.rooms.open.result, 'replayed')
})

t.test('presence: a resumed user is announced when not present before', async (t) => {
  const server = await startServer(t)
  const watcher = await connect(server, 'watcher')
  const { payload: joined } = await watcher.join('r')
  const b = await connect(server, 'bob')
  await b.request({ type: 'resume', payload: { rooms: { r: { seq: joined.seq, epoch: joined.epoch } } } })
  const events = [await watcher.nextOfType('presence'), await watcher.nextOfType('presence')]
  t.same(events.map((e) => e.payload), [{ action: 'join', user: { id: 'watcher' } }, { action: 'join', user: { id: 'bob' } }])
  t.same((await b.nextOfType('presence')).payload, { action: 'join', user: { id: 'watcher' } }, 'the replay includes presence')
})

t.test('a slow consumer closed 1013 resumes and loses nothing still in history', async (t) => {
  const server = await startServer(t, { maxBufferedBytes: 64 * 1024, presence: false })
  const stalled = await connect(server, 'stalled')
  const { payload: joined } = await stalled.join('feed')
  const raw = tcpSocketOf(stalled.ws)
  raw.pause()
  const payload = { blob: 'x'.repeat(8 * 1024) }
  let published = 0
  while (published < 900 && server.app.rooms.stats().slowConsumerCloses === 0) {
    await server.app.rooms.broadcast('feed', 'blob', payload)
    published++
    if (published % 8 === 0) await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(server.app.rooms.stats().slowConsumerCloses, 1)
  for (let i = 0; i < 20; i++) await server.app.rooms.broadcast('feed', 'blob', payload)
  const total = published + 20
  raw.resume()
  t.equal((await stalled.closed).code, 1013)
  const received = seqsOf(stalled.frames, 'blob')
  t.same(received, range(1, received.length), 'what arrived before the close is in order')
  const again = await connect(server, 'stalled')
  const ack = await again.request({ type: 'resume', payload: { rooms: { feed: lastPosition(stalled, 'feed', joined.epoch) } } })
  t.equal(ack.payload.rooms.feed.result, 'replayed')
  t.same([...received, ...seqsOf(again.frames, 'blob')], range(1, total), 'every event exactly once')
})

t.test('a retried id runs the handler once and gets the same answer, across reconnects', async (t) => {
  let runs = 0
  const server = await startServer(t, {
    presence: false,
    messages: {
      order: defineMessage({
        schema: Type.Object({ item: Type.String() }),
        room: true,
        handler: async (ctx, payload) => {
          runs++
          if (payload.item === 'broken') throw new Error('warehouse down')
          return { ...(await ctx.rooms.broadcast(ctx.room!, 'ordered', payload)), run: runs }
        },
      }),
    },
  })
  const a = await connect(server, 'alice')
  await a.join('shop')
  const first = await a.request({ type: 'order', room: 'shop', payload: { item: 'tea' } }, 'order-1')
  t.same(first.payload, { seq: 1, run: 1 })
  await a.close()
  const b = await connect(server, 'alice')
  await b.join('shop')
  const retry = await b.request({ type: 'order', room: 'shop', payload: { item: 'tea' } }, 'order-1')
  t.same(retry.payload, first.payload, 'same ack')
  t.equal(runs, 1, 'handler ran once')
  // Concurrent duplicates share the one run.
  b.send({ type: 'order', id: 'order-2', room: 'shop', payload: { item: 'coffee' } })
  b.send({ type: 'order', id: 'order-2', room: 'shop', payload: { item: 'coffee' } })
  const answers = [await b.next((f) => f.id === 'order-2'), await b.next((f) => f.id === 'order-2')]
  t.same(answers.map((f) => f.payload), [{ seq: 2, run: 2 }, { seq: 2, run: 2 }])
  t.equal(runs, 2)
  // The same id with other content is a new frame, not a retry.
  const other = await b.request({ type: 'order', room: 'shop', payload: { item: 'cake' } }, 'order-1')
  t.same(other.payload, { seq: 3, run: 3 })
  // Another user's ids are their own.
  const bob = await connect(server, 'bob')
  await bob.join('shop')
  t.same((await bob.request({ type: 'order', room: 'shop', payload: { item: 'tea' } }, 'order-1')).payload, { seq: 4, run: 4 })
  // A failure is an answer too: the retry gets it again without a second run.
  const failed = await b.request({ type: 'order', room: 'shop', payload: { item: 'broken' } }, 'order-9')
  const failedAgain = await b.request({ type: 'order', room: 'shop', payload: { item: 'broken' } }, 'order-9')
  t.same([failed.payload.code, failedAgain.payload.code], ['internal_error', 'internal_error'])
  t.equal(runs, 5)
  t.equal(seqsOf(b.frames, 'ordered').length, 3, 'no event was published twice')
})

t.test('retryWindow: false runs every frame', async (t) => {
  let runs = 0
  const server = await startServer(t, {
    retryWindow: false,
    messages: { bump: defineMessage({ schema: Type.Object({}), handler: () => ++runs }) },
  })
  const a = await connect(server, 'alice')
  t.equal((await a.request({ type: 'bump', payload: {} }, 'same')).payload, 1)
  t.equal((await a.request({ type: 'bump', payload: {} }, 'same')).payload, 2)
})

t.test('retained history stays at maxEvents per room, whatever the traffic', async (t) => {
  const maxEvents = 50
  const server = await startServer(t, { presence: false, history: { maxEvents, maxAgeMs: 60_000 } })
  const rooms = Array.from({ length: 20 }, (_, i) => `room-${i}`)
  for (let i = 0; i < 400; i++) {
    for (const room of rooms) await server.app.rooms.broadcast(room, 'x', { i })
  }
  for (const room of rooms) {
    const history = await server.app.rooms.history(room)
    if (history.events.length !== maxEvents || history.seq !== 400 || history.events[0]!.seq !== 351) {
      t.fail(`${room}: ${history.events.length} events, seq ${history.seq}`)
    }
  }
  const sample = await server.app.rooms.history('room-3', { after: 390 })
  t.same(sample.events.map((e) => e.seq), range(391, 400))
  t.equal(sample.complete, true)
  t.same(sample.events[0], { type: 'x', room: 'room-3', seq: 391, payload: { i: 390 }, traceId: sample.events[0]!.traceId, time: sample.events[0]!.time })
  const old = await server.app.rooms.history('room-3', { after: 10 })
  t.equal(old.complete, false, 'events 11..350 were dropped')
  t.equal(old.events.length, maxEvents)
  await t.rejects(server.app.rooms.history('room-3', { after: -1 }), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
})

t.test('a room with no members frees its history (and seq) once its last event is maxAgeMs old', async (t) => {
  const maxAgeMs = 30
  const server = await startServer(t, { presence: false, history: { maxEvents: 100, maxAgeMs } })
  const member = await connect(server, 'alice')
  await member.join('kept')
  await server.app.rooms.broadcast('kept', 'x', {})
  await server.app.rooms.broadcast('empty', 'x', {})
  const { epoch: emptyEpoch } = await server.app.rooms.history('empty')
  const { epoch: keptEpoch } = await server.app.rooms.history('kept')
  const publishedAt = Date.now()
  // The sweep runs every maxAgeMs; wait on the clock for two of its periods past the event's age.
  while (Date.now() - publishedAt <= 3 * maxAgeMs) await new Promise((resolve) => setTimeout(resolve, maxAgeMs))
  const empty = await server.app.rooms.history('empty')
  t.equal(empty.seq, 0, 'the empty room starts over')
  t.not(empty.epoch, emptyEpoch, 'in a new epoch')
  const kept = await server.app.rooms.history('kept')
  t.same({ seq: kept.seq, epoch: kept.epoch, events: kept.events.length }, { seq: 1, epoch: keptEpoch, events: 0 }, 'a room with members keeps its seq; its old events expire')
})

t.test('a resume naming more rooms than maxRoomsPerConnection → too_many_rooms; refused rooms are not created', async (t) => {
  // A memoryBroker that notes every room whose state is created or read in full (position, history).
  const inner = memoryBroker()
  const created: string[] = []
  const broker: Broker = Object.assign(Object.create(inner) as Broker, {
    position: (room: string) => {
      created.push(room)
      return inner.position(room)
    },
    history: (room: string, after: number) => {
      created.push(room)
      return inner.history(room, after)
    },
  })
  const server = await startServer(t, { presence: false, broker, maxRoomsPerConnection: 3, authorizeJoin: (_user, room) => room !== 'vault' })
  const a = await connect(server, 'alice')
  const rooms = Object.fromEntries(['a', 'b', 'c', 'd'].map((room) => [room, { seq: 0, epoch: 'x' }]))
  const tooMany = await a.request({ type: 'resume', payload: { rooms } })
  t.same(tooMany.payload, { code: 'too_many_rooms', message: 'a connection may join at most 3 rooms' })
  const refused = await a.request({ type: 'resume', payload: { rooms: { vault: { seq: 7, epoch: 'old' } } } })
  t.equal(refused.payload.rooms.vault.code, 'forbidden')
  t.notOk(created.includes('vault'), 'a room the client may not join is never created by its resume')
})

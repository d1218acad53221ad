// Delivery at its edges: a resume reveals nothing about a refused room, a socket reset at once leaves no
// ghost, a live stream behind history never repeats a seq, and the client drops a seq it has seen.
import t from 'tap'
import { WebSocketServer } from 'ws'
import WebSocket from 'ws'
import { createClient, type ServerFrame } from '../lib/client/index.js'
import { SUBPROTOCOL } from '../lib/protocol/protocol.js'
import { bounded, connect, sign, startServer, until, type Frame, range } from './helpers/index.js'
import { memoryBroker, type Broker } from '../lib/index.js'
import type { BrokerDelivery, BrokerSettings } from '../lib/brokers/broker.js'
import { OrderedStreams } from '../lib/brokers/ordered-streams.js'

t.test('#10 resume authorizes before it reads anything: a refused room reveals no seq', async (t) => {
  const server = await startServer(t, { presence: false, authorizeJoin: (_user, room) => room !== 'secret' })
  for (let i = 0; i < 6; i++) await server.app.rooms.broadcast('secret', 'note', { i })
  const { epoch } = await server.app.rooms.history('secret')
  const mallory = await connect(server, 'mallory')
  const answer = await mallory.request({ type: 'resume', payload: { rooms: { secret: { seq: 99, epoch } } } })
  t.same(answer.type, 'ack', 'no whole-frame error that would quote the room\'s seq')
  t.same(answer.payload.rooms.secret, { result: 'error', code: 'forbidden', message: 'not allowed to join "secret"' })
  t.notOk(JSON.stringify(mallory.frames).includes('its seq'), 'nothing about the room was sent')
})

t.test('#10 a raw socket that joins and is reset at once never leaves a ghost', async (t) => {
  const server = await startServer(t)
  const observer = await connect(server, 'observer')
  await observer.join('lobby')
  for (let i = 0; i < 20; i++) {
    const ws = new WebSocket(`${server.url}/ws`, { headers: { authorization: `Bearer ${sign('ghost')}` }, origin: 'http://app.test' })
    await bounded(new Promise((resolve) => ws.once('open', resolve)), 'a ghost socket opening')
    ws.send(JSON.stringify({ type: 'join', id: 1, room: 'lobby' }))
    ws.terminate()
  }
  await until(() => server.app.rooms.stats().connections === 1, 'the 20 sockets are gone')
  const presence: Frame[] = []
  await until(() => {
    presence.splice(0, presence.length, ...observer.frames.filter((frame) => frame.type === 'presence' && frame.payload.user.id === 'ghost'))
    return presence.length % 2 === 0
  }, 'every join announced has its leave')
  presence.forEach((frame, i) => t.equal(frame.payload.action, i % 2 === 0 ? 'join' : 'leave', `presence ${i} in order`))
  t.same(await server.app.rooms.members('lobby'), [{ id: 'observer' }])
})

t.test('#10 a live stream that lags behind history (as Redis pub/sub can) never sends a resumed or joined socket a seq twice', async (t) => {
  const inner = memoryBroker()
  let lagging: Array<() => void> | undefined
  const methods = ['publish', 'position', 'peekPosition', 'history', 'subscribe', 'unsubscribe', 'presenceJoin', 'presenceLeave', 'presence', 'rooms', 'sendToUser', 'changeMembership', 'disconnectUser', 'close'] as const
  const broker = Object.fromEntries(methods.map((method) => [method, (...args: unknown[]) => (inner[method] as (...a: unknown[]) => unknown)(...args)])) as unknown as Broker
  Object.assign(broker, {
    name: 'lagging',
    start: (delivery: BrokerDelivery, settings: BrokerSettings) => inner.start({
      ...delivery,
      roomEvent: (...args: Parameters<BrokerDelivery['roomEvent']>) => {
        if (lagging === undefined) delivery.roomEvent(...args)
        else lagging.push(() => delivery.roomEvent(...args))
      },
      userMessage: delivery.userMessage.bind(delivery),
      userDisconnect: delivery.userDisconnect.bind(delivery),
      roomReset: delivery.roomReset.bind(delivery),
      presenceChanged: delivery.presenceChanged.bind(delivery),
      serverMembership: delivery.serverMembership.bind(delivery),
    }, settings),
  })
  const server = await startServer(t, { presence: false, broker })
  const first = await connect(server, 'alice')
  const { payload: joined } = await first.join('feed')
  for (let i = 1; i <= 3; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  await until(() => first.frames.filter((frame) => frame.type === 'item').length === 3)
  lagging = []
  for (let i = 4; i <= 6; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  const resumer = await connect(server, 'alice')
  const resumed = await resumer.request({ type: 'resume', payload: { rooms: { feed: { seq: 3, epoch: joined.epoch } } } })
  t.same(resumed.payload.rooms.feed, { result: 'replayed', seq: 6, epoch: joined.epoch, replayed: 3 })
  const joiner = await connect(server, 'bob')
  t.equal((await joiner.join('feed')).payload.seq, 6)
  const late = lagging
  lagging = undefined
  for (const deliver of late) deliver()
  await server.app.rooms.broadcast('feed', 'item', { i: 7 })
  await resumer.next((frame) => frame.seq === 7)
  await joiner.next((frame) => frame.seq === 7)
  t.same(resumer.frames.filter((frame) => frame.type === 'item').map((frame) => frame.seq), [4, 5, 6, 7], 'the replay, then only newer live events')
  t.same(joiner.frames.filter((frame) => frame.type === 'item').map((frame) => frame.seq), [7], 'after the ack, only seq > ack.seq')
  t.same(first.frames.filter((frame) => frame.type === 'item').map((frame) => frame.seq), [1, 2, 3, 4, 5, 6, 7], 'a member without a fence gets the late events')
})

t.test('#11 the client drops a room event it has already seen (replay and live overlap)', async (t) => {
  // A bare protocol server on 127.0.0.1 that sends duplicates and an old seq, as an overlap would.
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, handleProtocols: () => SUBPROTOCOL })
  t.teardown(() => new Promise<void>((resolve) => {
    for (const socket of wss.clients) socket.terminate()
    wss.close(() => resolve())
  }))
  await bounded(new Promise((resolve) => wss.once('listening', resolve)), 'the bare server listening')
  wss.on('connection', (socket) => {
    socket.send(JSON.stringify({ type: 'welcome', payload: { connectionId: 'c1', user: { id: 'alice' }, heartbeatMs: 30_000, maxPayload: 65536, protocol: 1 } }))
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data)) as { type: string; id?: string; room?: string }
      if (frame.type !== 'join') return
      socket.send(JSON.stringify({ type: 'ack', id: frame.id, payload: { room: frame.room, seq: 0, epoch: 'e1' } }))
      for (const seq of [1, 2, 2, 1, 3, 3, 4]) socket.send(JSON.stringify({ type: 'tick', room: frame.room, seq, payload: { seq } }))
    })
  })
  const port = (wss.address() as import('node:net').AddressInfo).port
  const client = createClient({ url: `ws://127.0.0.1:${port}/ws`, getToken: () => sign('alice'), WebSocket })
  t.teardown(() => client.close())
  const seen: number[] = []
  const done = bounded(new Promise<void>((resolve) => client.on('tick', (frame: ServerFrame) => {
    seen.push(frame.seq!)
    if (frame.seq === 4) resolve()
  })), 'seq 4')
  await client.join('lobby')
  await done
  t.same(seen, [1, 2, 3, 4], 'each seq once, in order')
  t.same(client.position('lobby'), { seq: 4, epoch: 'e1' })
})

t.test('#22 after a reconnect, live events wait for the catch-up: a run a failover rewrote is reset, never continued silently', async (t) => {
  // The ordering a real Redis gives only by chance, made exact: the subscriber is back, the catch-up has
  // not started (the broker restores presence first), and the new master (which lost seqs 9 and 10 of the
  // old run and handed them out again) publishes seq 11. Without holding live events until the catch-up, seq 11 would
  // reach members after the old 10 with no reset, ever: the catch-up would then find history consistent.
  const frame = (text: string) => JSON.stringify({ type: 'tick', room: 'r', payload: text })
  const history = new Map<number, string>()
  for (let seq = 1; seq <= 8; seq++) history.set(seq, frame(`a${seq}`))
  const got: Array<string | number> = []
  let answer: (() => void) | undefined
  const streams = new OrderedStreams(
    (_room, after) => new Promise((resolve) => {
      const slice = { position: { seq: Math.max(...history.keys()), epoch: 'e1' }, events: [...history].filter(([seq]) => seq > after).map(([seq, text]) => ({ seq, frame: text })), complete: true }
      answer = () => resolve(slice)
    }),
    () => ({
      roomEvent: (_room, _type, seq) => { got.push(seq) },
      roomReset: (_room, position) => { got.push(`reset ${position.seq} ${position.epoch}`) },
      userMessage: () => {},
      userDisconnect: () => {},
      presenceChanged: () => {},
      serverMembership: () => {},
    }),
    () => false,
    async () => ({ seq: 11, epoch: 'e2' })
  )
  streams.open('r')
  streams.start('r', { seq: 0, epoch: 'e1' })
  const live = (seq: number, text: string) => streams.receive('r', { seq, epoch: 'e1', type: 'tick', frame: frame(text), except: '', publishedAt: 0 })
  for (let seq = 1; seq <= 10; seq++) live(seq, `a${seq}`)
  t.same(got, range(1, 10))
  // The old master dies after 9 and 10 reached this process but not its replica; the new one reuses them.
  history.set(9, frame('b9'))
  history.set(10, frame('b10'))
  history.set(11, frame('b11'))
  // The broker holds live events as soon as the subscriber is back, and catches up once its presence is
  // restored: seq 11 arrives in between.
  streams.holdAll()
  live(11, 'b11')
  const caughtUp = streams.catchUpAll()
  await until(() => answer !== undefined, 'the catch-up reading history')
  answer!()
  await caughtUp
  t.same(got, [...range(1, 10), 'reset 11 e2'], 'the rewritten run ends in a reset to a new epoch; b11 of the old epoch is never delivered')
})

/**
 * A memory broker whose `position` and `history` reads can be held after they read (the room as it was
 * then), and whose delivery the test can reach: a room reset can then land while a join or resume is
 * reading the room, as it does when a Redis broker reconnects mid-join (the fault campaign found it).
 */
function readGatedBroker (): { broker: Broker; delivery: () => BrokerDelivery; hold: (method: 'position' | 'history') => { reached: Promise<void>; release: () => void } } {
  const inner = memoryBroker()
  let delivery: BrokerDelivery | undefined
  const gates = new Map<string, { reached: () => void; released: Promise<void> }>()
  const methods = ['publish', 'position', 'peekPosition', 'history', 'subscribe', 'unsubscribe', 'presenceJoin', 'presenceLeave', 'presence', 'rooms', 'sendToUser', 'changeMembership', 'disconnectUser', 'close'] as const
  const broker = Object.fromEntries(methods.map((method) => [method, async (...args: unknown[]) => {
    const result = await (inner[method] as (...a: unknown[]) => unknown)(...args)
    const gate = gates.get(method)
    if (gate !== undefined) {
      gates.delete(method)
      gate.reached()
      await gate.released
    }
    return result
  }])) as unknown as Broker
  Object.assign(broker, {
    name: 'read-gated',
    start: (given: BrokerDelivery, settings: BrokerSettings) => {
      delivery = given
      return inner.start(given, settings)
    },
  })
  return {
    broker,
    delivery: () => delivery!,
    hold: (method) => {
      let reached!: () => void
      let release!: () => void
      const held = { reached: new Promise<void>((resolve) => (reached = resolve)), release: () => release() }
      gates.set(method, { reached, released: new Promise<void>((resolve) => (release = resolve)) })
      return held
    },
  }
}

/** What a raw socket received about one room, in order: `type seq` (an event) or `type seq epoch` (positions). */
function roomTrace (frames: Frame[], room: string): string[] {
  return frames.filter((frame) => frame.room === room || (frame.type === 'ack' && frame.payload?.room === room) || (frame.type === 'ack' && frame.payload?.rooms?.[room] !== undefined)).map((frame) => {
    if (frame.type === 'ack') {
      const position = frame.payload.rooms?.[room] ?? frame.payload
      return `ack ${position.result ?? 'joined'} ${position.seq} ${position.epoch === 'renewed' ? 'renewed' : 'old'}`
    }
    if (frame.type === 'reset' || frame.type === 'joined') return `${frame.type} ${frame.payload.seq} ${frame.payload.epoch === 'renewed' ? 'renewed' : 'old'}`
    return `${frame.type} ${frame.seq}`
  })
}

t.test('chaos finding: a room reset while a join reads the room follows the join\'s ack, never precedes it', async (t) => {
  const gated = readGatedBroker()
  const server = await startServer(t, { presence: false, broker: gated.broker })
  const alice = await connect(server, 'alice')
  await alice.join('feed')
  for (let i = 1; i <= 3; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  const bob = await connect(server, 'bob')
  const held = gated.hold('position')
  const answer = bob.request({ type: 'join', room: 'feed' })
  await bounded(held.reached, 'the join reading the position')
  // The position read says seq 3 of the old epoch; the broker then finds the room renumbered.
  gated.delivery().roomReset('feed', { seq: 0, epoch: 'renewed' })
  held.release()
  await answer
  await bob.nextOfType('reset')
  t.same(roomTrace(bob.frames, 'feed'), ['ack joined 3 old', 'reset 0 renewed'], 'the ack, then the reset that supersedes it')
  t.same(roomTrace(alice.frames, 'feed').slice(-1), ['reset 0 renewed'], 'a member not joining is reset at once')
})

t.test('chaos finding: a server-side join\'s `joined` frame comes before a reset that landed while it read the room', async (t) => {
  const gated = readGatedBroker()
  const server = await startServer(t, { presence: false, broker: gated.broker })
  for (let i = 1; i <= 2; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  const bob = await connect(server, 'bob')
  const other = await connect(server, 'carol')
  await other.join('feed')
  const held = gated.hold('position')
  const joining = server.app.rooms.join({ userId: 'bob' }, 'feed')
  await bounded(held.reached, 'the server join reading the position')
  gated.delivery().roomReset('feed', { seq: 0, epoch: 'renewed' })
  held.release()
  await joining
  await bob.nextOfType('reset')
  t.same(roomTrace(bob.frames, 'feed'), ['joined 2 old', 'reset 0 renewed'])
})

t.test('chaos finding: a reset that landed while a resume read history comes after the replayed events', async (t) => {
  const gated = readGatedBroker()
  const server = await startServer(t, { presence: false, broker: gated.broker })
  const alice = await connect(server, 'alice')
  const { payload: joined } = await alice.join('feed')
  for (let i = 1; i <= 3; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  const resumer = await connect(server, 'alice')
  const held = gated.hold('history')
  const answer = resumer.request({ type: 'resume', payload: { rooms: { feed: { seq: 1, epoch: joined.epoch } } } })
  await bounded(held.reached, 'the resume reading history')
  gated.delivery().roomReset('feed', { seq: 0, epoch: 'renewed' })
  held.release()
  await answer
  t.same(roomTrace(resumer.frames, 'feed'), ['item 2', 'item 3', 'reset 0 renewed', 'ack replayed 3 old'], 'the replay of the old numbering, then the reset; the answer (sent last) is superseded by it')
})

t.test('a reset the join\'s own read already covers is not sent again', async (t) => {
  const gated = readGatedBroker()
  const server = await startServer(t, { presence: false, broker: gated.broker })
  for (let i = 1; i <= 2; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  const { epoch } = await server.app.rooms.position('feed')
  const carol = await connect(server, 'carol')
  await carol.join('feed')
  const bob = await connect(server, 'bob')
  const held = gated.hold('position')
  const answer = bob.request({ type: 'join', room: 'feed' })
  await bounded(held.reached, 'the join reading the position')
  // The room's own epoch and an older seq: what the join read (seq 2) is past it.
  gated.delivery().roomReset('feed', { seq: 1, epoch })
  held.release()
  await answer
  await server.app.rooms.broadcast('feed', 'item', { i: 3 })
  await bob.next((frame) => frame.seq === 3)
  await carol.next((frame) => frame.seq === 3)
  t.same(roomTrace(bob.frames, 'feed'), ['ack joined 2 old', 'item 3'])
  t.same(roomTrace(carol.frames, 'feed'), ['ack joined 2 old', 'reset 1 old', 'item 3'], 'a member not joining gets it')
})

t.test('chaos finding: a resume that arrives while a server-side join of the room is under way waits for it instead of being refused as already joined', async (t) => {
  const gated = readGatedBroker()
  const server = await startServer(t, { presence: false, broker: gated.broker })
  const first = await connect(server, 'alice')
  const { payload: joined } = await first.join('feed')
  for (let i = 1; i <= 3; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  await first.next((frame) => frame.seq === 3, 'seq 3')
  await first.close(1000)
  for (let i = 4; i <= 5; i++) await server.app.rooms.broadcast('feed', 'item', { i })
  const second = await connect(server, 'alice')
  const held = gated.hold('position')
  const joining = server.app.rooms.join({ userId: 'alice' }, 'feed')
  await bounded(held.reached, 'the server join reading the position')
  const resumesBefore = server.app.rooms.stats().messagesIn.resume ?? 0
  const answer = second.request({ type: 'resume', payload: { rooms: { feed: { seq: 3, epoch: joined.epoch } } } })
  await until(() => (server.app.rooms.stats().messagesIn.resume ?? 0) === resumesBefore + 1, 'the resume read by the server')
  held.release()
  await joining
  const { payload } = await answer
  t.match(payload.rooms.feed, { result: 'replayed', seq: 5 }, 'caught up into the joined room, not refused')
  t.same(roomTrace(second.frames, 'feed'), ['joined 5 old', 'item 4', 'item 5', 'ack replayed 5 old'])
})

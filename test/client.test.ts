// The client in Node with ws, through a TCP proxy the test controls: drops, restarts, token expiry.
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { createClient, type ClientOptions, type RoomsClient, type ServerFrame } from '../lib/client/index.js'
import { defineMessage } from '../lib/index.js'
import { bounded, connect, ORIGIN, range, sign, startServer, until, type TestServer } from './helpers/index.js'
import { startProxy, type TcpProxy } from './helpers/proxy.js'

/** ws with the Origin a browser would send (the server refuses a missing Origin by default). */
class BrowserLikeWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

const fast = { initialMs: 5, maxMs: 50 }

async function setup (t: Parameters<typeof startServer>[0], serverOptions: Parameters<typeof startServer>[1] = {}) {
  const server = await startServer(t, { presence: false, ...serverOptions })
  const proxy = await startProxy(server.port)
  t.teardown(() => proxy.close())
  return { server, proxy }
}

function client (t: { teardown(fn: () => unknown): void }, proxy: TcpProxy, options: Partial<ClientOptions> = {}): RoomsClient {
  const rooms = createClient({
    url: `ws://127.0.0.1:${proxy.port}/ws`,
    getToken: () => sign('alice'),
    WebSocket: BrowserLikeWebSocket,
    backoff: fast,
    ...options,
  })
  t.teardown(() => rooms.close())
  return rooms
}

function nextEvent<T = unknown> (rooms: RoomsClient, event: string, match: (value: T) => boolean = () => true): Promise<T> {
  return bounded(new Promise((resolve) => {
    const off = rooms.on(event, ((value: T) => {
      if (!match(value)) return
      off()
      resolve(value)
    }) as never)
  }), `client event "${event}"`)
}

function collect (rooms: RoomsClient, type: string): ServerFrame[] {
  const frames: ServerFrame[] = []
  rooms.on(type, (frame) => frames.push(frame))
  return frames
}

const echo = { echo: defineMessage({ schema: Type.Object({ text: Type.String() }), room: true, handler: (ctx, p) => ctx.rooms.broadcast(ctx.room!, 'echo', p) }) }

t.test('connects, joins, requests and receives; a server error rejects with its code', async (t) => {
  const { proxy } = await setup(t, { messages: echo })
  const states: string[] = []
  const rooms = client(t, proxy, { autoConnect: false })
  rooms.on('state', (state) => states.push(state))
  rooms.connect()
  await nextEvent(rooms, 'welcome')
  const joined = await rooms.join('lobby')
  t.equal(joined.seq, 0)
  const events = collect(rooms, 'echo')
  t.same(await rooms.request('echo', { text: 'hi' }, { room: 'lobby' }), { seq: 1 })
  await until(() => events.length === 1)
  t.same(events[0]!.payload, { text: 'hi' })
  await t.rejects(rooms.request('echo', { text: 'x' }, { room: 'elsewhere' }), { name: 'RoomsClientError', code: 'not_in_room' })
  await t.rejects(rooms.request('nope', {}), { code: 'unknown_type' })
  t.same(states, ['connecting', 'open'])
  t.same(rooms.position('lobby'), { seq: 1, epoch: joined.epoch })
})

t.test('dropped TCP connections: the client reconnects and resumes; no gap, no duplicate', async (t) => {
  const { server, proxy } = await setup(t)
  const rooms = client(t, proxy, { rooms: ['feed'] })
  const items = collect(rooms, 'item')
  await nextEvent(rooms, 'welcome')
  await until(() => rooms.position('feed') !== undefined, 'joined')
  const total = 300
  let drops = 0
  for (let i = 1; i <= total; i++) {
    await server.app.rooms.broadcast('feed', 'item', { i })
    if (i % 75 === 0) {
      proxy.cut()
      drops++
    }
  }
  await until(() => items.length > 0 && items[items.length - 1]!.seq === total, `all ${total} events`)
  t.same(items.map((f) => f.seq), range(1, total), `every seq once, in order, through ${drops} drops`)
  t.same(items.map((f) => f.payload.i), range(1, total))
  t.ok(server.app.rooms.stats().resumes.replayed! >= 1, 'at least one resume replayed missed events')
})

t.test('a server restart: reset, then live events again', async (t) => {
  const first = await startServer(t, { presence: false })
  const port = first.port
  const proxy = await startProxy(port)
  t.teardown(() => proxy.close())
  const rooms = client(t, proxy, { rooms: ['news'] })
  const news = collect(rooms, 'news')
  await nextEvent(rooms, 'welcome')
  await until(() => rooms.position('news') !== undefined, 'joined')
  await first.app.rooms.broadcast('news', 'news', { n: 1 })
  await until(() => news.length === 1)
  const epochBefore = rooms.position('news')!.epoch
  const reset = nextEvent<{ room: string; seq: number; epoch: string }>(rooms, 'reset')
  await first.app.close()
  // The same port, a new process's worth of state.
  let second: TestServer | undefined
  for (let tries = 0; second === undefined && tries < 50; tries++) {
    try {
      second = await startServer(t, { presence: false }, { listenPort: port })
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  }
  const info = await reset
  t.equal(info.room, 'news')
  t.not(info.epoch, epochBefore)
  await second!.app.rooms.broadcast('news', 'news', { n: 2 })
  await until(() => news.length === 2)
  t.same(news.map((f) => f.payload.n), [1, 2])
})

t.test('the token is refreshed with auth before exp; the connection outlives the first token', async (t) => {
  const { server, proxy } = await setup(t)
  const exp = Math.floor(Date.now() / 1000) + 2
  let calls = 0
  let onRefresh: () => void = () => {}
  const refreshed = new Promise<void>((resolve) => (onRefresh = resolve))
  const rooms = client(t, proxy, {
    getToken: () => {
      calls++
      if (calls === 2) onRefresh()
      return sign('alice', { exp: calls === 1 ? exp : exp + 3600 })
    },
  })
  await nextEvent(rooms, 'welcome')
  await bounded(refreshed, 'the token refresh')
  // A raw socket with the first token and no refresh is closed at its exp; the client is not.
  const control = await connect(server, 'alice', { token: sign('alice', { exp }) })
  t.equal((await control.closed).code, 1008)
  t.equal(rooms.state, 'open')
  t.same(await rooms.join('after-exp'), { room: 'after-exp', seq: 0, epoch: (await server.app.rooms.history('after-exp')).epoch })
  t.equal(calls, 2)
})

t.test('requests made offline wait and are re-sent with the same id; the handler runs once', async (t) => {
  let runs = 0
  let release: () => void = () => {}
  let started: () => void = () => {}
  const handlerStarted = new Promise<void>((resolve) => (started = resolve))
  const { proxy } = await setup(t, {
    messages: {
      order: defineMessage({
        schema: Type.Object({ item: Type.String() }),
        handler: async (_ctx, payload) => {
          runs++
          started()
          await new Promise<void>((resolve) => (release = resolve))
          return { ordered: payload.item, run: runs }
        },
      }),
    },
  })
  const rooms = client(t, proxy)
  await nextEvent(rooms, 'welcome')
  const answer = rooms.request('order', { item: 'tea' })
  await bounded(handlerStarted, 'the handler starting')
  const reconnected = nextEvent(rooms, 'welcome')
  proxy.cut() // the ack will go to a dead socket
  release()
  await reconnected
  t.same(await answer, { ordered: 'tea', run: 1 }, 'the re-sent id got the first answer')
  t.equal(runs, 1)
})

t.test('the offline queue is bounded', async (t) => {
  const { proxy } = await setup(t)
  // A token that never comes keeps the client offline: requests wait in the queue.
  const offline = client(t, proxy, { maxQueue: 2, getToken: () => new Promise<string>(() => {}) })
  const first = offline.request('ping-like', {}, { timeoutMs: 60_000 })
  const second = offline.request('ping-like', {}, { timeoutMs: 60_000 })
  await t.rejects(offline.request('ping-like', {}), { code: 'queue_full' })
  offline.close()
  await t.rejects(first, { code: 'closed' })
  await t.rejects(second, { code: 'closed' })
})

t.test('no pong in time → the connection is dropped and re-established', async (t) => {
  const { proxy } = await setup(t)
  const rooms = client(t, proxy, { heartbeatMs: 30, pongTimeoutMs: 100 })
  await nextEvent(rooms, 'welcome')
  await nextEvent(rooms, 'pong')
  t.type(rooms.latencyMs, 'number')
  const error = nextEvent<{ code: string }>(rooms, 'error')
  const reopened = nextEvent(rooms, 'welcome')
  proxy.stall() // the old connection neither answers nor closes
  t.equal((await error).code, 'connection')
  await reopened
  t.equal(rooms.state, 'open')
})

t.test('a refused handshake gets a fresh token before the next try', async (t) => {
  const { proxy } = await setup(t)
  let calls = 0
  const rooms = client(t, proxy, { getToken: () => (++calls === 1 ? 'not-a-token' : sign('alice')) })
  const reconnects: number[] = []
  rooms.on('reconnect', ({ attempt }) => reconnects.push(attempt))
  await nextEvent(rooms, 'welcome')
  t.equal(calls, 2)
  t.same(reconnects, [1])
  t.equal(rooms.state, 'open')
})

t.test('close() is final: state closed, no reconnect, the server sees the socket go', async (t) => {
  const { server, proxy } = await setup(t)
  const rooms = client(t, proxy)
  await nextEvent(rooms, 'welcome')
  const reconnects: unknown[] = []
  rooms.on('reconnect', (info) => reconnects.push(info))
  rooms.close()
  t.equal(rooms.state, 'closed')
  await until(() => server.app.rooms.stats().connections === 0, 'server saw the close')
  t.equal(server.app.rooms.stats().closes['1000'], 1)
  // Backoff here is at most 50 ms: wait past it once to see that nothing reconnects.
  await new Promise((resolve) => setTimeout(resolve, 100))
  t.same(reconnects, [])
  t.equal(server.app.rooms.stats().connections, 0)
  await t.rejects(rooms.request('x', {}), { code: 'closed' })
})

t.test('a join refused by the server rejects and is not re-joined', async (t) => {
  const { proxy } = await setup(t, { authorizeJoin: (_user, room) => room !== 'vip' })
  const rooms = client(t, proxy)
  await nextEvent(rooms, 'welcome')
  await t.rejects(rooms.join('vip'), { code: 'forbidden' })
  t.same(rooms.rooms, [], 'a refused room is not re-joined later')
})

t.test('a token that expires anyway: the server closes 1008, the client reconnects with a fresh one and resumes', async (t) => {
  const { server, proxy } = await setup(t)
  const shortExp = Math.floor(Date.now() / 1000) + 2
  let afterExpiry = false
  const rooms = client(t, proxy, {
    rooms: ['feed'],
    // Until the server has closed the socket, every token (refreshes included) carries the short exp.
    getToken: () => sign('alice', { exp: afterExpiry ? shortExp + 3600 : shortExp }),
  })
  rooms.on('state', (state) => {
    if (state === 'reconnecting') afterExpiry = true
  })
  const items = collect(rooms, 'item')
  await nextEvent(rooms, 'welcome')
  await until(() => rooms.position('feed') !== undefined, 'joined')
  await server.app.rooms.broadcast('feed', 'item', { i: 1 })
  const reopened = nextEvent(rooms, 'welcome')
  await until(() => afterExpiry, 'the server closed the expired connection')
  await server.app.rooms.broadcast('feed', 'item', { i: 2 }) // published while the client is away
  await reopened
  await server.app.rooms.broadcast('feed', 'item', { i: 3 })
  await until(() => items.length === 3, 'three items')
  t.same(items.map((f) => f.seq), [1, 2, 3])
  t.equal(server.app.rooms.stats().closes['1008'], 1, 'closed for the expired token')
  t.equal(rooms.state, 'open')
})

// Issue #13: namespaces configure the rooms named `<name>:…` — history, presence, maxMembers,
// authorizeJoin and latestOnJoin — with the memory broker and on Redis.
import t from 'tap'
import { redisBroker } from '../lib/brokers/redis.js'
import type { RoomsOptions } from '../lib/index.js'
import { componentAvailable } from './helpers/components.js'
import { connect, ORIGIN, SECRET, startServer, until, type Client } from './helpers/index.js'
import { redisMissing, startRedis, type RedisServer } from './helpers/redis.js'

const namespaces: RoomsOptions['namespaces'] = {
  ticker: { history: false, presence: false },
  chat: { history: { maxEvents: 2, maxAgeMs: 60_000 } },
  arena: { presence: 'count' },
  team: { maxMembers: 2 },
  admin: { authorizeJoin: (user) => user.id === 'root' },
  price: { latestOnJoin: true, history: { maxEvents: 1, maxAgeMs: 60_000 }, presence: false },
}

const ticks = (client: Client, type = 'tick') => client.frames.filter((frame) => frame.type === type).map((frame) => frame.seq)

const brokers: Array<[string, (redis?: RedisServer) => Partial<RoomsOptions>]> = [
  ['memory', () => ({})],
  ['Redis', (redis) => ({ broker: redisBroker({ url: redis!.url, processTtlMs: 600 }) })],
]

for (const [name, brokerOptions] of brokers) {
  if (name === 'Redis' && !componentAvailable(t, redisMissing(), 'Redis namespaces')) continue
  const start = async (t: Parameters<typeof startServer>[0]) => {
    const redis = name === 'Redis' ? await startRedis(t) : undefined
    return startServer(t, { namespaces, ...brokerOptions(redis) })
  }

  t.test(`#13 ${name}: a namespace without history keeps none: a resume that missed events gets reset, one that missed none replays nothing`, async (t) => {
    const server = await start(t)
    const first = await connect(server, 'alice')
    const ack = await first.join('ticker:BTC')
    t.equal(ack.payload.members, undefined, 'presence: false has no member list')
    await server.app.rooms.broadcast('ticker:BTC', 'tick', { p: 1 })
    await first.next((frame) => frame.seq === 1, 'seq 1')
    const upToDate = await connect(server, 'alice')
    upToDate.send({ type: 'resume', id: 'r', payload: { rooms: { 'ticker:BTC': { seq: 1, epoch: ack.payload.epoch } } } })
    t.match((await upToDate.next((frame) => frame.id === 'r', 'resume')).payload, { rooms: { 'ticker:BTC': { result: 'replayed', replayed: 0 } } })
    await server.app.rooms.broadcast('ticker:BTC', 'tick', { p: 2 })
    const behind = await connect(server, 'alice')
    behind.send({ type: 'resume', id: 'r', payload: { rooms: { 'ticker:BTC': { seq: 1, epoch: ack.payload.epoch } } } })
    t.match((await behind.next((frame) => frame.id === 'r', 'resume')).payload, { rooms: { 'ticker:BTC': { result: 'reset', seq: 2 } } })
    t.same((await server.app.rooms.history('ticker:BTC')).events, [], 'no history kept')
    t.equal((await server.app.rooms.history('lobby')).events.length, 0)
    await server.app.rooms.broadcast('lobby', 'tick', {})
    t.equal((await server.app.rooms.history('lobby')).events.length, 1, 'rooms outside namespaces keep the top-level history')
  })

  t.test(`#13 ${name}: a namespace's own history limits`, async (t) => {
    const server = await start(t)
    for (let n = 1; n <= 4; n++) await server.app.rooms.broadcast('chat:general', 'msg', { n })
    t.same((await server.app.rooms.history('chat:general')).events.map((event) => event.seq), [3, 4], 'maxEvents 2')
  })

  t.test(`#13 ${name}: presence 'count' sends counts, not members`, async (t) => {
    const server = await start(t)
    const watcher = await connect(server, 'watcher')
    const ack = await watcher.join('arena:final')
    t.equal(ack.payload.count, 1)
    t.equal(ack.payload.members, undefined)
    const others: Client[] = []
    for (const id of ['p1', 'p2', 'p3']) {
      const other = await connect(server, id)
      await other.join('arena:final')
      others.push(other)
    }
    await until(() => watcher.frames.some((frame) => frame.type === 'presence' && frame.payload.count === 4), 'a count of 4')
    const presence = watcher.frames.filter((frame) => frame.type === 'presence')
    t.ok(presence.every((frame) => frame.payload.action === 'count' && frame.payload.user === undefined), 'only count events')
    t.ok(presence.length <= 3, `throttled: ${presence.length} count events for 4 joins`)
  })

  t.test(`#13 ${name}: maxMembers → room_full for a new user; a member's second socket and server joins still get in`, async (t) => {
    const server = await start(t)
    const a = await connect(server, 'a')
    const b = await connect(server, 'b')
    const c = await connect(server, 'c')
    await a.join('team:red')
    await b.join('team:red')
    const full = await c.request({ type: 'join', room: 'team:red' })
    t.match(full, { type: 'error', payload: { code: 'room_full', message: '"team:red" is full (2 members)' } })
    const a2 = await connect(server, 'a')
    t.equal((await a2.request({ type: 'join', room: 'team:red' })).type, 'ack', 'a user already in is not counted twice')
    await server.app.rooms.join({ userId: 'c' }, 'team:red')
    t.match(await c.nextOfType('joined'), { room: 'team:red' }, 'the server\'s own join is not capped')
  })

  t.test(`#13 ${name}: a namespace's authorizeJoin replaces the top-level one`, async (t) => {
    const server = await start(t)
    const alice = await connect(server, 'alice')
    const root = await connect(server, 'root')
    t.match(await alice.request({ type: 'join', room: 'admin:panel' }), { type: 'error', payload: { code: 'forbidden' } })
    t.equal((await root.request({ type: 'join', room: 'admin:panel' })).type, 'ack')
    t.equal((await alice.request({ type: 'join', room: 'lobby' })).type, 'ack', 'other rooms are not affected')
  })

  t.test(`#13 ${name}: latestOnJoin: the join ack is followed by the room's latest event`, async (t) => {
    const server = await start(t)
    const empty = await connect(server, 'early')
    t.match((await empty.join('price:ETH')).payload, { seq: 0 })
    for (let n = 1; n <= 3; n++) await server.app.rooms.broadcast('price:ETH', 'price', { usd: 100 * n })
    await empty.next((frame) => frame.seq === 3, 'seq 3')
    const late = await connect(server, 'late')
    const ack = await late.join('price:ETH')
    t.equal(ack.payload.seq, 2, 'the ack: every event after 2…')
    const latest = await late.nextOfType('price')
    t.match(latest, { seq: 3, payload: { usd: 300 } }, '…and the latest, seq 3, right after it')
    t.equal(late.frames.indexOf(latest) > late.frames.indexOf(ack), true)
    await server.app.rooms.broadcast('price:ETH', 'price', { usd: 400 })
    await late.next((frame) => frame.seq === 4, 'seq 4')
    t.same(ticks(late, 'price'), [3, 4], 'then live, each seq once')
  })
}

t.test('#13 namespace options are checked at register, naming the option', async (t) => {
  const { default: Fastify } = await import('fastify')
  const { default: rooms } = await import('../lib/index.js')
  const cases: Array<[unknown, RegExp]> = [
    [{ 'bad:name': {} }, /"namespaces\.bad:name" has a name/],
    [{ chat: { histroy: false } }, /"namespaces\.chat\.histroy" is not a namespace option/],
    [{ chat: { history: { maxEvents: -1, maxAgeMs: 0 } } }, /"namespaces\.chat\.history" must be/],
    [{ chat: { presence: 'some' } }, /"namespaces\.chat\.presence" must be true, false or 'count'/],
    [{ chat: { maxMembers: 0 } }, /"namespaces\.chat\.maxMembers" must be an integer >= 1/],
    [{ chat: { authorizeJoin: true } }, /"namespaces\.chat\.authorizeJoin" must be a function/],
    [{ chat: { latestOnJoin: true, history: false } }, /"namespaces\.chat\.latestOnJoin" needs history/],
  ]
  for (const [value, message] of cases) {
    const app = Fastify()
    await t.rejects((async () => { await app.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], namespaces: value as never }) })(), { code: 'FST_ROOMS_INVALID_OPTION', message })
    await app.close()
  }
})

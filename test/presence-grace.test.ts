// Issue #13: presence that does not flap. A closed socket's user stays present for leaveGraceMs; a socket
// of that user that joins or resumes the room meanwhile, on any process, makes the whole drop invisible.
import t from 'tap'
import { redisBroker } from '../lib/brokers/redis.js'
import { resolveOptions } from '../lib/options.js'
import { componentAvailable } from './helpers/components.js'
import { connect, ORIGIN, SECRET, startServer, until, type Client, type Frame } from './helpers/index.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { startServerProcess } from './helpers/server-process.js'

const GRACE_MS = 400
// What the observer saw of the others (its own join is left out).
const presenceOf = (client: Client) => client.frames
  .filter((frame) => frame.type === 'presence' && frame.payload.user.id !== 'observer')
  .map((frame: Frame) => `${frame.payload.user.id} ${frame.payload.action}`)

t.test('#13 leaveGraceMs defaults to 5000 ms; presence: false needs none', async (t) => {
  t.equal(resolveOptions({ jwt: { secret: SECRET }, allowedOrigins: [ORIGIN] }).leaveGraceMs, 5000)
  t.equal(resolveOptions({ jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], presence: { leaveGraceMs: 250 } }).leaveGraceMs, 250)
  t.equal(resolveOptions({ jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], presence: false }).leaveGraceMs, 0)
  t.throws(() => resolveOptions({ jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], presence: { leaveGraceMs: -1 } }), { code: 'FST_ROOMS_INVALID_OPTION', message: /presence/ })
})

t.test('#13 memory: a reconnect inside the grace publishes nothing; a user who does not come back leaves after it', async (t) => {
  const server = await startServer(t, { presence: { leaveGraceMs: GRACE_MS } })
  const observer = await connect(server, 'observer')
  await observer.join('lobby')
  const alice = await connect(server, 'alice')
  const carol = await connect(server, 'carol')
  const aliceAck = await alice.join('lobby')
  await carol.join('lobby')
  await until(() => presenceOf(observer).length === 2, 'both joins seen')
  // Both drop; only alice comes back, resuming the room, well inside the grace.
  await alice.close(1001)
  await carol.close(1001)
  const back = await connect(server, 'alice')
  back.send({ type: 'resume', id: 'r', payload: { rooms: { lobby: { seq: aliceAck.payload.seq, epoch: aliceAck.payload.epoch } } } })
  t.match((await back.next((frame) => frame.id === 'r', 'resume answer')).payload, { rooms: { lobby: { result: 'replayed' } } })
  await until(() => presenceOf(observer).includes('carol leave'), 'carol\'s leave after the grace')
  await server.app.rooms.broadcast('lobby', 'marker', {})
  await observer.nextOfType('marker')
  t.same(presenceOf(observer), ['alice join', 'carol join', 'carol leave'], 'no leave and no join for alice')
  t.same((await server.app.rooms.members('lobby')).map((member) => member.id).sort(), ['alice', 'observer'])
})

t.test('#13 memory: an explicit leave frame is published at once, without the grace', async (t) => {
  const server = await startServer(t, { presence: { leaveGraceMs: 60_000 } })
  const observer = await connect(server, 'observer')
  await observer.join('lobby')
  const dave = await connect(server, 'dave')
  await dave.join('lobby')
  await dave.request({ type: 'leave', room: 'lobby' })
  await until(() => presenceOf(observer).includes('dave leave'), 'dave\'s leave, long before a 60 s grace')
  t.same(presenceOf(observer), ['dave join', 'dave leave'])
})

if (componentAvailable(t, redisMissing(), 'Redis presence grace')) {
  t.test('#13 Redis: a user who drops on one process and resumes on another inside the grace flaps nothing', async (t) => {
    const redis = await startRedis(t)
    const options = (processTtlMs = 600) => ({ presence: { leaveGraceMs: GRACE_MS }, broker: redisBroker({ url: redis.url, processTtlMs }) })
    const a = await startServer(t, options())
    const b = await startServer(t, options())
    const observer = await connect(b, 'observer')
    await observer.join('lobby')
    const alice = await connect(a, 'alice')
    const carol = await connect(a, 'carol')
    const ack = await alice.join('lobby')
    await carol.join('lobby')
    await until(() => presenceOf(observer).length === 2, 'both joins seen')
    await alice.close(1001)
    await carol.close(1001)
    const back = await connect(b, 'alice')
    back.send({ type: 'resume', id: 'r', payload: { rooms: { lobby: { seq: ack.payload.seq, epoch: ack.payload.epoch } } } })
    t.match((await back.next((frame) => frame.id === 'r', 'resume answer')).payload, { rooms: { lobby: { result: 'replayed' } } })
    await until(() => presenceOf(observer).includes('carol leave'), 'carol\'s leave after the grace')
    await b.app.rooms.broadcast('lobby', 'marker', {})
    await observer.nextOfType('marker')
    t.same(presenceOf(observer), ['alice join', 'carol join', 'carol leave'])
    t.same((await a.app.rooms.members('lobby')).map((member) => member.id).sort(), ['alice', 'observer'])
  })

  t.test('#13 Redis: a restarted process (SIGTERM) does not flap presence; who does not come back is removed by survivors', async (t) => {
    const redis = await startRedis(t)
    const survivor = await startServer(t, { presence: { leaveGraceMs: 2000 }, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const observer = await connect(survivor, 'observer')
    await observer.join('lobby')
    const leaving = await startServerProcess(t, redis, { LEAVE_GRACE_MS: '2000' })
    const alice = await connect(leaving.url, 'alice')
    const carol = await connect(leaving.url, 'carol')
    const ack = await alice.join('lobby')
    await carol.join('lobby')
    await until(() => presenceOf(observer).length === 2, 'both joins seen')
    const stopping = leaving.stop() // a rolling restart: the process closes its sockets (1001) and exits
    t.equal((await alice.closed).code, 1001)
    const back = await connect(survivor, 'alice')
    back.send({ type: 'resume', id: 'r', payload: { rooms: { lobby: { seq: ack.payload.seq, epoch: ack.payload.epoch } } } })
    t.match((await back.next((frame) => frame.id === 'r', 'resume answer')).payload, { rooms: { lobby: { result: 'replayed' } } })
    await stopping
    await until(() => presenceOf(observer).includes('carol leave'), 'carol\'s leave, published by the survivor after the grace')
    await survivor.app.rooms.broadcast('lobby', 'marker', {})
    await observer.nextOfType('marker')
    t.same(presenceOf(observer), ['alice join', 'carol join', 'carol leave'], 'alice never left; carol left once')
    t.same((await survivor.app.rooms.members('lobby')).map((member) => member.id).sort(), ['alice', 'observer'])
  })
}

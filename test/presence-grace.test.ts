// Issue #13: presence that does not flap. A closed socket's user stays present for leaveGraceMs; a socket
// of that user that joins or resumes the room meanwhile, on any process, makes the whole drop invisible.
import t, { type Test } from 'tap'
import { redisBroker } from '../lib/brokers/redis.js'
import { resolveOptions } from '../lib/config/options.js'
import { componentAvailable } from './helpers/components.js'
import { connect, ORIGIN, SECRET, startServer, until, type Client, type Frame, type TestServer } from './helpers/index.js'
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

/**
 * alice and carol drop from `first`; only alice comes back, on `second`, resuming the room well inside the
 * grace. The observer (on `second`) must see carol's leave after the grace and nothing at all of alice.
 */
async function dropAndComeBack (t: Test, first: TestServer, second: TestServer): Promise<void> {
  const observer = await connect(second, 'observer')
  await observer.join('lobby')
  const alice = await connect(first, 'alice')
  const carol = await connect(first, 'carol')
  const ack = await alice.join('lobby')
  await carol.join('lobby')
  await until(() => presenceOf(observer).length === 2, 'both joins seen')
  await alice.close(1001)
  await carol.close(1001)
  const back = await connect(second, 'alice')
  back.send({ type: 'resume', id: 'r', payload: { rooms: { lobby: { seq: ack.payload.seq, epoch: ack.payload.epoch } } } })
  t.match((await back.next((frame) => frame.id === 'r', 'resume answer')).payload, { rooms: { lobby: { result: 'replayed' } } })
  await until(() => presenceOf(observer).includes('carol leave'), 'carol\'s leave after the grace')
  await second.app.rooms.broadcast('lobby', 'marker', {})
  await observer.nextOfType('marker')
  t.same(presenceOf(observer), ['alice join', 'carol join', 'carol leave'], 'no leave and no join for alice')
  t.same((await first.app.rooms.members('lobby')).map((member) => member.id).sort(), ['alice', 'observer'])
}

t.test('#13 memory: a reconnect inside the grace publishes nothing; a user who does not come back leaves after it', async (t) => {
  const server = await startServer(t, { presence: { leaveGraceMs: GRACE_MS } })
  await dropAndComeBack(t, server, server)
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
    const options = () => ({ presence: { leaveGraceMs: GRACE_MS }, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    await dropAndComeBack(t, await startServer(t, options()), await startServer(t, options()))
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

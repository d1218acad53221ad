// Issue #13: presenceInfo(user) — a small public object shown with each member (members(), the join ack,
// presence join events), on every process, gone when the user leaves.
import { Redis } from 'ioredis'
import t from 'tap'
import { redisBroker } from '../lib/brokers/redis.js'
import type { RoomsOptions } from '../lib/index.js'
import { componentAvailable } from './helpers/components.js'
import { connect, sign, startServer, until } from './helpers/index.js'
import { redisMissing, startRedis } from './helpers/redis.js'

const presenceInfo: RoomsOptions['presenceInfo'] = (user) => {
  if (user.id === 'huge') return { bio: 'x'.repeat(2000) }
  if (user.id === 'broken') throw new Error('profile lookup failed')
  return typeof user.name === 'string' ? { name: user.name } : undefined
}
const userFromToken = (payload: Record<string, unknown>) => ({ id: payload.sub as string, name: payload.name })

t.test('#13 memory: presence data in members(), the join ack and presence events; bounded; failures left out', async (t) => {
  const server = await startServer(t, { presenceInfo, userFromToken })
  const ada = await connect(server, 'ada', { token: sign('ada', { name: 'Ada Lovelace' }) })
  t.same((await ada.join('lobby')).payload.members, [{ id: 'ada', info: { name: 'Ada Lovelace' } }])
  const bob = await connect(server, 'bob')
  t.same((await bob.join('lobby')).payload.members?.sort((a: { id: string }, b: { id: string }) => a.id.localeCompare(b.id)), [{ id: 'ada', info: { name: 'Ada Lovelace' } }, { id: 'bob' }], 'a user without data has none')
  const grace = await connect(server, 'grace', { token: sign('grace', { name: 'Grace Hopper' }) })
  await grace.join('lobby')
  t.match(await ada.next((frame) => frame.type === 'presence' && frame.payload.user.id === 'grace', 'grace\'s join'), { payload: { action: 'join', user: { id: 'grace', info: { name: 'Grace Hopper' } } } })
  for (const id of ['huge', 'broken']) {
    const socket = await connect(server, id)
    await socket.join('lobby')
  }
  const members = await server.app.rooms.members('lobby')
  t.same(members.find((member) => member.id === 'huge'), { id: 'huge' }, 'over 1 KiB: left out')
  t.same(members.find((member) => member.id === 'broken'), { id: 'broken' }, 'a throw: left out')
  t.ok(server.logs.some((line) => line.includes('presenceInfo over 1024 bytes')))
  t.ok(server.logs.some((line) => line.includes('presenceInfo failed') && line.includes('profile lookup failed')))
  await grace.close(1000)
  await until(() => ada.frames.some((frame) => frame.type === 'presence' && frame.payload.action === 'leave' && frame.payload.user.id === 'grace'), 'grace\'s leave')
  t.notOk((await server.app.rooms.members('lobby')).some((member) => member.id === 'grace'))
})

if (componentAvailable(t, redisMissing(), 'Redis presence info')) {
  t.test('#13 Redis: presence data is seen from another process, and removed with the user', async (t) => {
    const redis = await startRedis(t)
    const options = () => ({ presenceInfo, userFromToken, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const a = await startServer(t, options())
    const b = await startServer(t, options())
    const ada = await connect(a, 'ada', { token: sign('ada', { name: 'Ada Lovelace' }) })
    await ada.join('lobby')
    t.same(await b.app.rooms.members('lobby'), [{ id: 'ada', info: { name: 'Ada Lovelace' } }])
    const bob = await connect(b, 'bob')
    t.same((await bob.join('lobby')).payload.members?.find((member: { id: string }) => member.id === 'ada'), { id: 'ada', info: { name: 'Ada Lovelace' } })
    await ada.close(1000)
    await until(() => bob.frames.some((frame) => frame.type === 'presence' && frame.payload.action === 'leave'), 'ada\'s leave')
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    t.same(await inspect.hgetall('rooms:{lobby}:info'), {}, 'no data left behind in Redis')
  })
}

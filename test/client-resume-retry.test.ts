// A resume the server cannot serve now (`unavailable`: its Redis hung past commandTimeoutMs) is not the end
// of the room for our client: it keeps its position and sends the resume again after a jittered backoff,
// so the events it missed still arrive, each once and in order (seen in the reconnect-storm bench, where
// overloaded processes timed out on Redis and clients stopped following their rooms).
import { Redis } from 'ioredis'
import t from 'tap'
import WebSocket from 'ws'
import { createClient, type RoomsClientError, type ServerFrame } from '../lib/client/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { ORIGIN, range, sign, startServer, until } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { startProxy } from './helpers/proxy.js'
import { redisMissing, startRedis } from './helpers/redis.js'

class BrowserLikeWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

if (componentAvailable(t, redisMissing(), 'the client retrying an unavailable resume')) {
  t.test('#26 resume answered `unavailable` (Redis hung): the client keeps its position, resumes again once Redis answers, and misses nothing', async (t) => {
    const redis = await startRedis(t)
    const server = await startServer(t, { presence: false, broker: redisBroker({ url: redis.url, processTtlMs: 600, commandTimeoutMs: 300 }) })
    const proxy = await startProxy(server.port)
    t.teardown(() => proxy.close())
    const client = createClient({ url: `ws://127.0.0.1:${proxy.port}/ws`, getToken: () => sign('alice'), WebSocket: BrowserLikeWebSocket, backoff: { initialMs: 5, maxMs: 50 }, rooms: ['feed'] })
    t.teardown(() => client.close())
    const items: ServerFrame[] = []
    client.on('item', (frame) => items.push(frame))
    const errors: RoomsClientError[] = []
    client.on('error', (err) => errors.push(err))
    await until(() => client.position('feed') !== undefined, 'joined')
    for (let i = 1; i <= 3; i++) await server.app.rooms.broadcast('feed', 'item', { i })
    await until(() => items.length === 3, 'three live')
    // Offline: three more are published, then Redis hangs before the client is back.
    proxy.refuse(true)
    proxy.cut()
    for (let i = 4; i <= 6; i++) await server.app.rooms.broadcast('feed', 'item', { i })
    const inspect = new Redis(redis.url)
    t.teardown(() => inspect.disconnect())
    const pid = Number((await inspect.info('server')).match(/process_id:(\d+)/)![1])
    process.kill(pid, 'SIGSTOP')
    let running = false
    const wake = () => {
      if (!running) process.kill(pid, 'SIGCONT')
      running = true
    }
    t.teardown(wake)
    proxy.refuse(false)
    await until(() => errors.some((err) => err.code === 'unavailable'), 'the resume answered unavailable')
    t.equal(client.state, 'open', 'the connection itself is fine')
    t.equal(client.position('feed')?.seq, 3, 'the position is kept')
    wake()
    await until(() => items.length === 6, 'the missed events, after the resume is sent again')
    await server.app.rooms.broadcast('feed', 'item', { i: 7 })
    await until(() => items.length === 7, 'then live')
    t.same(items.map((frame) => frame.seq), range(1, 7), 'every seq once, in order')
    t.same(items.map((frame) => (frame.payload as { i: number }).i), range(1, 7))
    t.notOk(errors.some((err) => err.code !== 'unavailable' && err.code !== 'network'), JSON.stringify(errors.map((err) => err.code)))
  })
}

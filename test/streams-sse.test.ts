// Streamed events on the SSE fallback: a raw EventSource resumes a stream from its Last-Event-ID (which
// carries where it stands in each unfinished stream), on its session or in a new one on another server;
// the project's client on the fallback keeps one object through every cut.
import t from 'tap'
import { redisBroker } from '../lib/brokers/redis.js'
import { startServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { checkScenario, streamScenario } from './helpers/stream-scenario.js'
import { decodePositions } from '../lib/sse/transport.js'

const options = { sse: true as const, presence: false as const, handshakeRateLimit: false as const, allowMissingOrigin: true }

t.test('one server, the SSE fallback: 1500 tokens at 100/s, raw EventSources cut and re-attached with Last-Event-ID (seed 5)', async (t) => {
  const server = await startServer(t, options)
  checkScenario(t, await streamScenario({ servers: [server], seed: 5, count: 1500, perSecond: 100, transport: 'sse' }), 3)
})

t.test('an SSE event id carries the unfinished streams of each room (id → text length), and only theirs', async (t) => {
  const positions = decodePositions('p1.' + Buffer.from(JSON.stringify([['room', 4, 'e', { s1: 10 }], ['other', 1, 'e']])).toString('base64url'), 10)
  t.same(positions, { room: { seq: 4, epoch: 'e', streams: { s1: 10 } }, other: { seq: 1, epoch: 'e' } })
})

if (componentAvailable(t, redisMissing(), 'streamed events on the SSE fallback across servers')) {
  t.test('two servers on Redis, the SSE fallback: raw EventSources resumed in new sessions on the other server (seed 11)', async (t) => {
    const redis = await startRedis(t)
    const a = await startServer(t, { ...options, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    const b = await startServer(t, { ...options, broker: redisBroker({ url: redis.url, processTtlMs: 600 }) })
    checkScenario(t, await streamScenario({ servers: [a, b], seed: 11, count: 1500, perSecond: 100, transport: 'sse' }), 3)
  })
}

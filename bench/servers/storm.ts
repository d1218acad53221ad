// The reconnect storm's server: fastify-rooms on Redis, as an app deploys it, on a fixed port (a restart
// comes back on the same one). POST /bench/cut destroys every TCP connection at once (a network cut: no
// close frame); SIGTERM closes gracefully (a deploy). STORM_SHEDDING=off turns loadShedding off.
import type { Socket } from 'node:net'
import Fastify from 'fastify'
import rooms from '../../lib/index.js'
import { redisBroker } from '../../lib/brokers/redis.js'
import { BENCH_ORIGIN, BENCH_SECRET } from './common.js'

const app = Fastify({ logger: false })
await app.register(rooms, {
  jwt: { secret: BENCH_SECRET },
  allowedOrigins: [BENCH_ORIGIN],
  // Every client comes from this machine; the per-address limit would refuse the storm for that alone.
  handshakeRateLimit: false,
  presence: false,
  loadShedding: process.env.STORM_SHEDDING === 'off' ? false : { maxEventLoopDelayMs: Number(process.env.STORM_MAX_DELAY_MS ?? 1000) },
  broker: redisBroker({ url: process.env.REDIS_URL! }),
})
const sockets = new Set<Socket>()
app.server.on('connection', (socket: Socket) => {
  sockets.add(socket)
  socket.once('close', () => sockets.delete(socket))
})
app.post('/bench/cut', async (request) => {
  const own = request.raw.socket
  const cut = sockets.size - 1
  setImmediate(() => { for (const socket of sockets) if (socket !== own) socket.destroy() })
  return { cut }
})
app.get('/bench/stats', async () => ({ connections: app.rooms.stats().connections, rss: process.memoryUsage().rss }))
process.once('SIGTERM', () => { app.close().then(() => process.exit(0), () => process.exit(1)) })
// STORM_BACKLOG: the listen backlog (Node's default 511; the kernel caps it at net.core.somaxconn).
await app.listen({ port: Number(process.env.PORT ?? 0), host: '127.0.0.1', backlog: Number(process.env.STORM_BACKLOG ?? 511) })
process.stdout.write(`${(app.server.address() as import('node:net').AddressInfo).port}\n`)

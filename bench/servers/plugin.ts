// fastify-rooms, as an app would use it: JWT + Origin check at the upgrade, rooms, broadcast over HTTP.
import Fastify from 'fastify'
import rooms from '../../lib/index.js'
import { BENCH_ORIGIN, BENCH_SECRET, COMPRESSION, countEgress, handleStats, ready } from './common.js'

// BENCH_TRACING=off: `tracing: false`; =sdk: an OpenTelemetry SDK records every span (exported in batches
// to nowhere); unset: @opentelemetry/api installed but no provider (a host that has the API and no SDK).
if (process.env.BENCH_TRACING === 'sdk') {
  const { context, trace } = await import('@opentelemetry/api')
  const { AsyncLocalStorageContextManager } = await import('@opentelemetry/context-async-hooks')
  const { BasicTracerProvider, BatchSpanProcessor } = await import('@opentelemetry/sdk-trace-base')
  const nowhere = { export: (_spans: unknown[], done: (result: { code: number }) => void) => done({ code: 0 }), shutdown: async () => {} }
  trace.setGlobalTracerProvider(new BasicTracerProvider({ spanProcessors: [new BatchSpanProcessor(nowhere)] }))
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
}
const app = Fastify({ logger: false })
await app.register(rooms, {
  jwt: { secret: BENCH_SECRET },
  allowedOrigins: [BENCH_ORIGIN],
  // The load comes from one IP and joins are setup, not the measured traffic.
  handshakeRateLimit: false,
  presence: false,
  maxBufferedBytes: 1_048_576,
  compression: COMPRESSION ? { threshold: 1024 } : false,
  // BENCH_SSE=1: the Server-Sent Events fallback too (the sse scenario's clients use it).
  sse: process.env.BENCH_SSE === '1',
  tracing: process.env.BENCH_TRACING !== 'off',
  // BENCH_HEARTBEAT_MS: the density scenario's heartbeat, short enough to measure its ticks.
  ...(process.env.BENCH_HEARTBEAT_MS === undefined ? {} : { heartbeatMs: Number(process.env.BENCH_HEARTBEAT_MS) }),
})
countEgress(app.server)
app.addHook('onRequest', async (request, reply) => {
  if (handleStats(request.raw, reply.raw, () => app.rooms.stats().connections)) reply.hijack()
})
app.post<{ Body: { room: string; payload: unknown } }>('/publish', async (request) => {
  return app.rooms.broadcast(request.body.room, 'event', request.body.payload)
})
await app.listen({ port: 0, host: '127.0.0.1' })
ready((app.server.address() as import('node:net').AddressInfo).port)

// fastify-rooms at its default limits with one strict host message type: the server of bench/fairness.ts.
import Fastify from 'fastify'
import Type from 'typebox'
import rooms, { defineMessage } from '../../lib/index.js'
import { BENCH_ORIGIN, BENCH_SECRET, handleStats, ready } from './common.js'

const app = Fastify({ logger: false })
await app.register(rooms, {
  jwt: { secret: BENCH_SECRET },
  allowedOrigins: [BENCH_ORIGIN],
  handshakeRateLimit: false,
  messages: {
    // additionalProperties: false makes unknown keys the most expensive thing to validate.
    chat: defineMessage({ schema: Type.Object({ text: Type.String({ maxLength: 2000 }) }, { additionalProperties: false }), handler: () => null }),
  },
})
app.addHook('onRequest', async (request, reply) => {
  if (handleStats(request.raw, reply.raw, () => app.rooms.stats().connections)) reply.hijack()
})
await app.listen({ port: 0, host: '127.0.0.1' })
ready((app.server.address() as import('node:net').AddressInfo).port)

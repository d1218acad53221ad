// The host app of a fault campaign, one per server process: the plugin on its public API, over the broker
// BROKER names (memory, redis, cluster, postgres). Its first stdout line is its port; later lines report
// what the checker needs from inside: `ran <user> <id>` each time the `say` handler runs.
import Fastify from 'fastify'
import pg from 'pg'
import Type from 'typebox'
import rooms, { defineMessage, type RoomsOptions } from '../lib/index.js'
import { postgresBroker } from '../lib/brokers/postgres.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { CHAOS_ORIGIN, CHAOS_SECRET, streamTokens } from './protocol.js'

const broker = process.env.BROKER ?? 'memory'
const processTtlMs = 1500
const pool = broker === 'postgres' ? new pg.Pool({ connectionString: process.env.DATABASE_URL, max: 10 }) : undefined
pool?.on('error', () => {})

function brokerOption (): RoomsOptions['broker'] {
  if (broker === 'redis') return redisBroker({ url: process.env.REDIS_URL!, processTtlMs })
  if (broker === 'cluster') {
    const cluster = process.env.REDIS_CLUSTER_NODES!.split(',').map((node) => ({ host: '127.0.0.1', port: Number(node.split(':')[1]) }))
    return redisBroker({ cluster, processTtlMs })
  }
  if (broker === 'postgres') return postgresBroker({ pool: pool!, processTtlMs, checkIntervalMs: 200 })
  return undefined
}

const app = Fastify()
await app.register(rooms, {
  jwt: { secret: CHAOS_SECRET },
  allowedOrigins: [CHAOS_ORIGIN],
  allowMissingOrigin: true,
  sse: true,
  handshakeRateLimit: false,
  presence: { leaveGraceMs: 0 },
  ...(brokerOption() === undefined ? {} : { broker: brokerOption() }),
  messages: {
    say: defineMessage({
      schema: Type.Object({ pid: Type.String({ maxLength: 64 }) }),
      room: true,
      handler: async (ctx, payload) => {
        process.stdout.write(`ran ${ctx.user.id} ${String(ctx.id)}\n`)
        return ctx.rooms.broadcast(ctx.room!, 'said', payload)
      },
    }),
    talk: defineMessage({
      schema: Type.Object({ count: Type.Integer({ minimum: 1, maximum: 200 }) }),
      room: true,
      handler: async (ctx, payload) => {
        const stream = await ctx.rooms.stream(ctx.room!, 'talk', { count: payload.count })
        const tokens = streamTokens(payload.count)
        let sent = 0
        const timer = setInterval(() => {
          try {
            stream.append(tokens[sent]!)
            if (++sent === tokens.length) {
              clearInterval(timer)
              void stream.end().catch(() => {})
            }
          } catch {
            clearInterval(timer)
          }
        }, 10)
        return { id: stream.id, seq: stream.seq }
      },
    }),
  },
})

// A publish from an HTTP handler: with an idempotency key when the client retries, inside a transaction
// (committed or rolled back) on PostgreSQL.
app.post<{ Body: { room: string; pid: string; key?: string; tx?: 'commit' | 'rollback' } }>('/publish', async (request, reply) => {
  const { room, pid, key, tx } = request.body
  try {
    if (tx === undefined || pool === undefined) {
      return await app.rooms.broadcast(room, 'news', { pid }, key === undefined ? {} : { idempotencyKey: key })
    }
    const client = await pool.connect()
    // As docs/postgres.md says: a checked-out client without an 'error' listener ends the process when
    // PostgreSQL goes away (the campaign found this with the listener missing).
    const lost = () => {}
    client.on('error', lost)
    try {
      await client.query('BEGIN')
      const published = await app.rooms.broadcast(room, 'news', { pid }, { transaction: client })
      await client.query(tx === 'commit' ? 'COMMIT' : 'ROLLBACK')
      return { ...published, committed: tx === 'commit' }
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw err
    } finally {
      client.off('error', lost)
      client.release()
    }
  } catch (err) {
    return reply.code((err as { statusCode?: number }).statusCode ?? 500).send({ code: (err as { code?: string }).code })
  }
})

// A server-side join: every socket of the user, on every process, gets a `joined` frame.
app.post<{ Body: { user: string; room: string } }>('/server-join', async (request, reply) => {
  try {
    await app.rooms.join({ userId: request.body.user }, request.body.room)
    return { joined: true }
  } catch (err) {
    return reply.code((err as { statusCode?: number }).statusCode ?? 500).send({ code: (err as { code?: string }).code })
  }
})

app.get<{ Querystring: { room: string } }>('/position', async (request) => app.rooms.position(request.query.room))
app.get<{ Querystring: { room: string } }>('/members', async (request) => (await app.rooms.members(request.query.room)).map((member) => member.id).sort())
app.get('/memory', async () => process.memoryUsage())

await app.listen({ port: Number(process.env.PORT ?? 0), host: '127.0.0.1' })
const address = app.server.address()
process.stdout.write(`${typeof address === 'object' && address !== null ? address.port : 0}\n`)
process.once('SIGTERM', () => { void app.close().then(() => pool?.end()) })
// A campaign that dies (Ctrl-C, a CI timeout) must not leave its servers behind: its end of the pipe closes.
if (process.env.CHAOS_PARENT_PIPE === '1') process.stdin.once('end', () => process.exit(0)).resume()

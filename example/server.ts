// `npm run example`: the chat server on the in-memory broker (REDIS_URL: one Redis; REDIS_CLUSTER_NODES: a
// Redis Cluster; DATABASE_URL: PostgreSQL, with `notes:` rooms whose messages are rows).
import { buildChatApp } from './app.js'

const host = process.env.HOST ?? '127.0.0.1'
const port = Number(process.env.PORT ?? 3000)
const DEV_SECRET = 'fastify-rooms-example-dev-secret-change-me'
const jwtSecret = process.env.JWT_SECRET ?? DEV_SECRET
const allowedOrigins = process.env.ALLOWED_ORIGINS
  ? process.env.ALLOWED_ORIGINS.split(',').map((origin) => origin.trim()).filter(Boolean)
  : [`http://localhost:${port}`, `http://127.0.0.1:${port}`]

const redisUrl = process.env.REDIS_URL || undefined
const databaseUrl = process.env.DATABASE_URL || undefined
// REDIS_CLUSTER_NODES=127.0.0.1:7000,127.0.0.1:7001,… (any of the cluster's nodes; the rest are discovered).
const redisClusterNodes = process.env.REDIS_CLUSTER_NODES?.split(',').filter((node) => node !== '').map((node) => {
  const at = node.lastIndexOf(':')
  return { host: node.slice(0, at), port: Number(node.slice(at + 1)) }
})
// Readable lines in a terminal; JSON (for a log shipper) when piped, or with LOG_FORMAT=json.
const logFormat = process.env.LOG_FORMAT ?? (process.stdout.isTTY ? 'pretty' : 'json')
const app = await buildChatApp({
  fastify: {
    logger: logFormat === 'pretty'
      ? { transport: { target: 'pino-pretty', options: { translateTime: 'HH:MM:ss', ignore: 'pid,hostname' } } }
      : true,
  },
  jwtSecret,
  allowedOrigins,
  ...(redisUrl === undefined ? {} : { redisUrl }),
  ...(databaseUrl === undefined ? {} : { databaseUrl }),
  ...(redisClusterNodes === undefined || redisClusterNodes.length === 0 ? {} : { redisClusterNodes }),
})
if (jwtSecret === DEV_SECRET) {
  app.log.warn('*** JWT_SECRET is not set: using a built-in development secret. Anyone can forge tokens. Set JWT_SECRET outside development. ***')
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    app.log.info({ signal }, 'closing')
    app.close().catch((err: unknown) => {
      app.log.error({ err }, 'close failed')
      process.exitCode = 1
    })
  })
}

await app.listen({ host, port })
app.log.info({ allowedOrigins, broker: databaseUrl !== undefined ? 'postgres' : redisClusterNodes !== undefined && redisClusterNodes.length > 0 ? 'redis cluster' : redisUrl === undefined ? 'memory' : 'redis' }, `chat example ready at http://${host.includes(':') ? `[${host}]` : host}:${port}`)

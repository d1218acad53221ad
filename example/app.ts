// The example chat app, as a function so tests can build it on a free port.
import { readFile } from 'node:fs/promises'
import fastifyJwt from '@fastify/jwt'
import rateLimit from '@fastify/rate-limit'
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyServerOptions } from 'fastify'
import pg from 'pg'
import Type from 'typebox'
import rooms, { defineMessage, ErrorCode, FrameError, type RoomsApi } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { postgresBroker } from '../lib/brokers/postgres.js'

export interface ChatAppOptions {
  jwtSecret: string
  allowedOrigins: string[] | '*'
  /** Share rooms with other processes through this Redis; the in-memory broker when absent. */
  redisUrl?: string
  /** A Redis Cluster's nodes (`REDIS_CLUSTER_NODES=host:port,…`): the broker runs on sharded pub/sub. */
  redisClusterNodes?: Array<{ host: string; port: number }>
  /** Rooms on this PostgreSQL (`DATABASE_URL`), and `notes:` rooms whose messages are rows. */
  databaseUrl?: string
  /** How often the dashboard stream sends stats (default 1000 ms). */
  dashboardIntervalMs?: number
  fastify?: FastifyServerOptions
  /** Announcements one user may post per minute (default 10). */
  announcementsPerMinute?: number
  /** How often the fake assistant sends a token of its answer (default 40 ms). */
  assistantTokenMs?: number
}

/**
 * The fake assistant's answer to `/ask <question>`: deterministic, no model, no network — made of tokens
 * as a language model streams them (words with their spaces, a line break now and then).
 */
export function fakeAnswer (question: string): string[] {
  const words = `You asked: "${question}". I am the example's assistant and I know nothing, but I answer at length, one token at a time, the way a language model streams its reply. Reload the page while I talk: the answer continues from where it was, every character once. Every member of this room sees the same text growing, and a late joiner gets what I said so far, then the rest. When I am done, the room's history keeps my answer as one message.`.split(' ')
  return words.map((word, index) => (index === words.length - 1 ? word : index % 24 === 23 ? `${word}\n` : `${word} `))
}

const MAX_TEXT = 2000
const Name = Type.String({ pattern: '^[A-Za-z0-9_-]{1,32}$' })
const RoomParam = Type.Object({ room: Type.String({ minLength: 1, maxLength: 128 }) })
// The schema bounds the frame; the 1–2000 rule applies after trimming, in the handler.
const Text = Type.String({ minLength: 1, maxLength: MAX_TEXT * 2 })

function trimmedText (text: string): string {
  const trimmed = text.trim()
  if (trimmed.length === 0 || trimmed.length > MAX_TEXT) {
    throw new FrameError(ErrorCode.invalidMessage, `text must be 1 to ${MAX_TEXT} characters after trimming`, {
      errors: [{ path: '/payload/text', message: `must be 1 to ${MAX_TEXT} characters after trimming` }],
    })
  }
  return trimmed
}

/** Streams the fake answer into the room, token by token, as a model's reply would arrive. */
async function startAnswer (answering: Set<NodeJS.Timeout>, rooms: RoomsApi, room: string, question: string, askedBy: string, tokenMs: number, log: FastifyBaseLogger): Promise<void> {
  const answer = await rooms.stream(room, 'assistant', { question, askedBy })
  const tokens = fakeAnswer(question)
  let next = 0
  const timer = setInterval(() => {
    try {
      answer.append(tokens[next++]!)
      if (next === tokens.length) {
        clearInterval(timer)
        answering.delete(timer)
        answer.end().catch((err: unknown) => log.warn({ err }, 'the assistant\'s answer could not be ended'))
      }
    } catch (err) {
      // Ended under it (the server closing, or its broker lost it): stop talking.
      clearInterval(timer)
      answering.delete(timer)
      log.warn({ err }, 'the assistant stopped')
    }
  }, tokenMs)
  answering.add(timer)
}

export async function buildChatApp (options: ChatAppOptions): Promise<FastifyInstance> {
  const app = Fastify(options.fastify ?? { logger: true })
  // The app signs tokens at /login and checks them on its HTTP routes; fastify-rooms reuses this
  // @fastify/jwt (jwt: false) so there is one secret and one set of verify options.
  await app.register(fastifyJwt, { secret: options.jwtSecret, sign: { algorithm: 'HS256', expiresIn: '1h' } })
  // Per-route limits only (the /ws route's handshake limit is the plugin's, on this same instance).
  await app.register(rateLimit, { global: false })
  const signedIn = async (request: import('fastify').FastifyRequest) => {
    await request.jwtVerify()
  }
  // With DATABASE_URL the app's own data and the rooms share one PostgreSQL (and one pool).
  // The fake assistant's answers being written (their token timers).
  const answering = new Set<NodeJS.Timeout>()
  const database = options.databaseUrl === undefined ? undefined : new pg.Pool({ connectionString: options.databaseUrl })
  if (database !== undefined) {
    database.on('error', (err) => app.log.warn({ err }, 'database client error'))
    await database.query('CREATE TABLE IF NOT EXISTS example_notes (id bigserial PRIMARY KEY, room text NOT NULL, from_user text NOT NULL, text text NOT NULL)')
    app.addHook('onClose', async () => { await database.end() })
  }
  await app.register(rooms, {
    jwt: false,
    metrics: true,
    // Where WebSockets are blocked, the page's client falls back to Server-Sent Events by itself.
    sse: true,
    allowedOrigins: options.allowedOrigins,
    ...(options.databaseUrl !== undefined
      ? { broker: postgresBroker({ pool: database! }) }
      : options.redisClusterNodes !== undefined
        ? { broker: redisBroker({ cluster: options.redisClusterNodes }) }
        : options.redisUrl === undefined ? {} : { broker: redisBroker({ url: options.redisUrl }) }),
    // The events clients receive: their payloads are checked on the way out, and typed in the contract.
    events: {
      chat: Type.Object({ from: Type.String(), text: Text }),
      announcement: Type.Object({ from: Type.String(), text: Text }),
      assistant: Type.Object({ question: Type.String(), askedBy: Type.String() }),
      note: Type.Object({ id: Type.Union([Type.String(), Type.Integer()]), from: Type.String(), text: Text }),
    },
    messages: {
      chat: defineMessage({
        schema: Type.Object({ text: Text }, { additionalProperties: false }),
        room: true,
        handler: async (ctx, payload) => {
          const text = trimmedText(payload.text)
          const said = await ctx.rooms.broadcast(ctx.room!, 'chat', { from: ctx.user.id, text })
          if (/^\/ask(\s|$)/.test(text)) await startAnswer(answering, ctx.rooms, ctx.room!, text.slice(4).trim() || 'nothing', ctx.user.id, options.assistantTokenMs ?? 40, app.log)
          return said
        },
      }),
    },
  })
  // Open answers end (aborted, reason 'shutdown') when the server closes: their timers go with them.
  app.addHook('preClose', async () => {
    for (const timer of answering) clearInterval(timer)
  })

  // The page imports the client the plugin serves on /ws/client.js.
  const page = await readFile(new URL('./public/index.html', import.meta.url), 'utf8')
  app.get('/', async (_request, reply) => reply.type('text/html; charset=utf-8').send(page))
  const icon = await readFile(new URL('./public/favicon.svg', import.meta.url))
  for (const url of ['/favicon.svg', '/favicon.ico']) {
    app.get(url, async (_request, reply) => reply.type('image/svg+xml').header('cache-control', 'public, max-age=86400').send(icon))
  }

  // DEMO ONLY: anyone can log in as any name. A real app authenticates the user here.
  app.post('/login', {
    schema: { body: Type.Object({ name: Name }, { additionalProperties: false }) },
  }, async (request) => {
    const { name } = request.body as { name: string }
    return { token: app.jwt.sign({ sub: name }) }
  })

  // DEMO ONLY: any signed-in user may announce to any room. A real app checks that this user may post
  // there (e.g. the same rule as authorizeJoin, or an admin role). Limited per user, as any write route should be.
  app.post('/rooms/:room/announce', {
    schema: { params: RoomParam, body: Type.Object({ text: Text }, { additionalProperties: false }) },
    onRequest: signedIn,
    config: {
      rateLimit: {
        max: options.announcementsPerMinute ?? 10,
        timeWindow: '1 minute',
        keyGenerator: (request) => (request.user as { sub?: string } | undefined)?.sub ?? request.ip,
      },
    },
  }, async (request, reply) => {
    const { room } = request.params as { room: string }
    const text = (request.body as { text: string }).text.trim()
    if (text.length === 0 || text.length > MAX_TEXT) return reply.code(400).send({ message: `text must be 1 to ${MAX_TEXT} characters after trimming` })
    const from = (request.user as { sub: string }).sub
    // Under a tracer (e.g. @fastify/otel) the event carries this request's trace id.
    return app.rooms.broadcast(room, 'announcement', { from, text })
  })

  // Prometheus scrapes this. DEMO: a real deployment keeps it off the public listener.
  // The contract: every frame both ways with its schema, for client generators and contract tests.
  app.get('/asyncapi.json', async (request) => app.rooms.asyncapi({
    title: 'fastify-rooms example chat',
    version: '1.0.0',
    servers: { here: { host: request.host, protocol: request.protocol === 'https' ? 'wss' : 'ws' } },
  }))

  app.get('/metrics', async (_request, reply) => {
    const { contentType, body } = await app.rooms.metrics()
    return reply.type(contentType).send(body)
  })

  // The dashboard page, and stats() once a second over Server-Sent Events.
  const dashboard = await readFile(new URL('./public/dashboard.html', import.meta.url), 'utf8')
  app.get('/dashboard', async (_request, reply) => reply.type('text/html; charset=utf-8').send(dashboard))
  const streams = new Set<import('node:http').ServerResponse>()
  app.get('/dashboard/stats', (request, reply) => {
    reply.hijack()
    const stream = reply.raw
    stream.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' })
    const send = () => stream.write(`data: ${JSON.stringify({ time: Date.now(), ...app.rooms.stats() })}\n\n`)
    send()
    const timer = setInterval(send, options.dashboardIntervalMs ?? 1000)
    streams.add(stream)
    request.raw.once('close', () => {
      clearInterval(timer)
      streams.delete(stream)
    })
  })
  // Open event streams would hold fastify.close() forever: end them first.
  app.addHook('preClose', async () => {
    for (const stream of streams) stream.end()
  })

  // Scrollback for a page that joins late: the room's retained events, as clients receive them. The page
  // joins first and shows the events up to its join ack's seq, so nothing falls between the two.
  // DEMO: any signed-in user may read any room, as any may join it (no authorizeJoin here).
  app.get('/rooms/:room/history', { schema: { params: RoomParam }, onRequest: signedIn }, async (request) => {
    const { room } = request.params as { room: string }
    const { seq, epoch, complete, events } = await app.rooms.history(room)
    return { room, seq, epoch, complete, events }
  })

  // Presence is for signed-in users only.
  app.get('/rooms/:room/members', { schema: { params: RoomParam }, onRequest: signedIn }, async (request) => {
    const { room } = request.params as { room: string }
    const members = await app.rooms.members(room)
    return { room, count: members.length, members }
  })

  if (database !== undefined) registerNotes(app, database, signedIn)
  return app
}

/**
 * `notes:` rooms: a note is a row, announced in the transaction that writes it (no note without its
 * event, no event without its note), and a page loads the notes with the position they were read at.
 */
function registerNotes (app: FastifyInstance, database: pg.Pool, signedIn: (request: import('fastify').FastifyRequest) => Promise<void>): void {
  const NotesRoom = Type.Object({ room: Type.String({ pattern: '^notes:[A-Za-z0-9_-]{1,64}$' }) })
  app.post('/rooms/:room/notes', {
    schema: { params: NotesRoom, body: Type.Object({ text: Text }, { additionalProperties: false }) },
    onRequest: signedIn,
    config: { rateLimit: { max: 30, timeWindow: '1 minute', keyGenerator: (request) => (request.user as { sub?: string } | undefined)?.sub ?? request.ip } },
  }, async (request, reply) => {
    const { room } = request.params as { room: string }
    const text = (request.body as { text: string }).text.trim()
    if (text.length === 0 || text.length > MAX_TEXT) return reply.code(400).send({ message: `text must be 1 to ${MAX_TEXT} characters after trimming` })
    const from = (request.user as { sub: string }).sub
    const client = await database.connect()
    try {
      await client.query('BEGIN')
      const { rows } = await client.query<{ id: string }>('INSERT INTO example_notes (room, from_user, text) VALUES ($1, $2, $3) RETURNING id', [room, from, text])
      const { seq } = await app.rooms.broadcast(room, 'note', { id: rows[0]!.id, from, text }, { transaction: client })
      await client.query('COMMIT')
      return { id: rows[0]!.id, seq }
    } catch (err) {
      await client.query('ROLLBACK').catch(() => {})
      throw err
    } finally {
      client.release()
    }
  })
  // The latest 100 notes and the room's position in the same snapshot: join from it, and nothing falls between.
  app.get('/rooms/:room/notes', { schema: { params: NotesRoom }, onRequest: signedIn }, async (request) => {
    const { room } = request.params as { room: string }
    const client = await database.connect()
    try {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
      const position = await app.rooms.position(room, { transaction: client })
      const { rows } = await client.query<{ id: string; from: string; text: string }>(
        'SELECT id, from_user AS "from", text FROM (SELECT * FROM example_notes WHERE room = $1 ORDER BY id DESC LIMIT 100) latest ORDER BY id', [room])
      await client.query('COMMIT')
      return { notes: rows, position }
    } finally {
      client.release()
    }
  })
}

// Options are checked at register, with an error naming the option; reuse of the host's @fastify/jwt
// and @fastify/websocket.
import fastifyJwt from '@fastify/jwt'
import websocket from '@fastify/websocket'
import Fastify from 'fastify'
import t from 'tap'
import Type from 'typebox'
import rooms, { handleProtocols, type RoomsOptions } from '../lib/index.js'
import { connect, ORIGIN, SECRET, sign, startServer } from './helpers/index.js'

const base = { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN] }
const message = { schema: Type.Object({}), handler: () => null }

async function registerError (options: Record<string, unknown>): Promise<Error & { code?: string }> {
  const app = Fastify()
  try {
    await app.register(rooms, options as unknown as RoomsOptions)
    await app.ready()
  } catch (err) {
    return err as Error & { code?: string }
  } finally {
    await app.close()
  }
  throw new Error(`register accepted ${JSON.stringify(options)}`)
}

const cases: Array<[string, Record<string, unknown>, string]> = [
  ['jwt missing', { allowedOrigins: [ORIGIN] }, 'option "jwt" is required'],
  ['jwt.secret empty', { ...base, jwt: { secret: '' } }, 'option "jwt.secret"'],
  ['jwt unknown key', { ...base, jwt: { secret: 'x', sign: {} } }, 'option "jwt.sign"'],
  ['jwt false without @fastify/jwt', { ...base, jwt: false }, 'option "jwt" is false, but no @fastify/jwt'],
  ['allowedOrigins missing', { jwt: base.jwt }, 'option "allowedOrigins" is required'],
  ['allowedOrigins with a path', { ...base, allowedOrigins: ['https://a.test/x'] }, 'option "allowedOrigins" has "https://a.test/x"'],
  ['allowedOrigins * in a list', { ...base, allowedOrigins: ['*'] }, "option \"allowedOrigins\" takes '*' on its own"],
  ['allowedOrigins empty', { ...base, allowedOrigins: [] }, 'option "allowedOrigins"'],
  ['unknown option', { ...base, heartbeatMS: 10 }, 'option "heartbeatMS" is not a fastify-rooms option'],
  ['path', { ...base, path: 'ws' }, 'option "path"'],
  ['heartbeatMs', { ...base, heartbeatMs: 0 }, 'option "heartbeatMs"'],
  ['maxPayload', { ...base, maxPayload: 'big' }, 'option "maxPayload"'],
  ['rateLimit.burst', { ...base, rateLimit: { messagesPerSecond: 5, burst: 0 } }, 'option "rateLimit.burst"'],
  ['abuseLimit.windowMs', { ...base, abuseLimit: { rateLimited: 5, windowMs: -1 } }, 'option "abuseLimit.windowMs"'],
  ['handshakeRateLimit.max', { ...base, handshakeRateLimit: { max: 0, timeWindow: 1000 } }, 'option "handshakeRateLimit.max"'],
  ['maxRoomsPerConnection', { ...base, maxRoomsPerConnection: 1.5 }, 'option "maxRoomsPerConnection"'],
  ['maxConnections', { ...base, maxConnections: 0 }, 'option "maxConnections"'],
  ['maxConnectionsPerUser', { ...base, maxConnectionsPerUser: -2 }, 'option "maxConnectionsPerUser"'],
  ['maxBufferedBytes', { ...base, maxBufferedBytes: 10 }, 'option "maxBufferedBytes"'],
  ['history.maxEvents', { ...base, history: { maxEvents: -1, maxAgeMs: 1 } }, 'option "history.maxEvents"'],
  ['closeTimeoutMs', { ...base, closeTimeoutMs: -1 }, 'option "closeTimeoutMs"'],
  ['presence', { ...base, presence: 'yes' }, 'option "presence"'],
  ['allowMissingOrigin', { ...base, allowMissingOrigin: 1 }, 'option "allowMissingOrigin"'],
  ['userFromToken', { ...base, userFromToken: 'sub' }, 'option "userFromToken" must be a function'],
  ['authorizeJoin', { ...base, authorizeJoin: true }, 'option "authorizeJoin" must be a function'],
  ['broker', { ...base, broker: {} }, 'option "broker" must be a Broker'],
  ['metrics', { ...base, metrics: 'yes' }, 'option "metrics" must be true, false or a prom-client Registry'],
  ['messages not an object', { ...base, messages: [] }, 'option "messages"'],
  ['message reserved type', { ...base, messages: { join: message } }, 'option "messages.join" uses a type name the protocol reserves'],
  ['message bad type name', { ...base, messages: { 'has space': message } }, 'option "messages.has space"'],
  ['message without handler', { ...base, messages: { chat: { schema: Type.Object({}) } } }, 'option "messages.chat.handler" must be a function'],
  ['message without schema', { ...base, messages: { chat: { handler: () => null } } }, 'option "messages.chat.schema" must be a TypeBox schema'],
  ['message room not boolean', { ...base, messages: { chat: { ...message, room: 'yes' } } }, 'option "messages.chat.room" must be a boolean'],
]

for (const [name, options, expected] of cases) {
  t.test(`register rejects: ${name}`, async (t) => {
    const err = await registerError(options)
    t.equal(err.code, 'FST_ROOMS_INVALID_OPTION')
    t.match(err.message, expected)
  })
}

t.test('jwt: false reuses the @fastify/jwt the host registered (and its extra checks)', async (t) => {
  const server = await startServer(t, { jwt: false }, {
    before: async (app) => {
      await app.register(fastifyJwt, { secret: SECRET, verify: { allowedIss: 'issuer-a' } })
    },
  })
  const client = await connect(server, 'alice', { token: sign('alice', { iss: 'issuer-a' }) })
  t.equal(client.frames[0]!.payload.user.id, 'alice')
  const { rejectedUpgrade } = await import('./helpers/index.js')
  t.equal((await rejectedUpgrade(server, 'alice', { token: sign('alice', { iss: 'issuer-b' }) })).status, 401)
  t.ok(server.app.jwt.sign({ sub: 'x' }), 'the host keeps its own jwt decorator')
})

t.test('jwt options of our own live beside a host @fastify/jwt with another secret', async (t) => {
  const server = await startServer(t, {}, {
    before: async (app) => {
      await app.register(fastifyJwt, { secret: 'the-host-secret' })
    },
  })
  const client = await connect(server, 'alice')
  t.equal(client.frames[0]!.payload.user.id, 'alice')
  const hostToken = server.app.jwt.sign({ sub: 'alice' })
  const { rejectedUpgrade } = await import('./helpers/index.js')
  t.equal((await rejectedUpgrade(server, 'alice', { token: hostToken })).status, 401, 'the host secret is not ours')
})

t.test('jwt.verify options reach @fastify/jwt (issuer check)', async (t) => {
  const server = await startServer(t, { jwt: { secret: SECRET, verify: { allowedIss: 'rooms' } } })
  await connect(server, 'alice', { token: sign('alice', { iss: 'rooms' }) })
  const { rejectedUpgrade } = await import('./helpers/index.js')
  t.equal((await rejectedUpgrade(server, 'alice', { token: sign('alice', { iss: 'other' }) })).status, 401)
})

t.test('a host that registered @fastify/websocket first keeps it; rooms uses it', async (t) => {
  const server = await startServer(t, { maxPayload: 1024 }, {
    before: async (app) => {
      await app.register(websocket, { options: { maxPayload: 1_000_000, handleProtocols } })
    },
  })
  const client = await connect(server, 'alice', { via: 'protocol' })
  t.equal(client.ws.protocol, 'rooms.v1')
  client.send({ type: 'ping', pad: 'x'.repeat(4000) })
  t.equal((await client.closed).code, 1009, 'our maxPayload still applies')
})

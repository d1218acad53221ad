// Issue #16: the client on the SSE fallback in Node (an EventSource from test/helpers/event-source.ts):
// forced, falling back by itself when upgrades fail, and moving back when they work again — with every
// request answered and every event once.
import t from 'tap'
import Type from 'typebox'
import WebSocket from 'ws'
import { createClient } from '../lib/client/index.js'
import { defineMessage } from '../lib/index.js'
import { NodeEventSource } from './helpers/event-source.js'
import { ORIGIN, sign, startServer, until } from './helpers/index.js'

const options = {
  sse: true as const,
  presence: false as const,
  handshakeRateLimit: false as const,
  messages: { order: defineMessage({ schema: Type.Object({ item: Type.String() }), handler: (_ctx, payload) => ({ ordered: payload.item }) }) },
}

// Node's fetch sends no Origin (the session POSTs); the EventSource and the sockets do.
class OriginWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

t.test('#16 transport: \'sse\' — joins, requests and room events over the stream and POSTs; a dropped stream reconnects and resumes', async (t) => {
  const server = await startServer(t, { ...options, allowMissingOrigin: true })
  const client = createClient({ url: `${server.url}/ws`, getToken: () => sign('mia'), transport: 'sse', EventSource: NodeEventSource, rooms: ['news'], backoff: { initialMs: 20, maxMs: 50 } })
  t.teardown(() => client.close())
  const got: number[] = []
  client.on('story', (frame: { payload: { n: number } }) => got.push(frame.payload.n))
  await until(() => client.state === 'open' && client.position('news') !== undefined, 'open on the fallback')
  t.equal(client.transport, 'sse')
  t.same(await client.request('order', { item: 'tea' }), { ordered: 'tea' }, 'a request answered on the stream')
  for (let n = 1; n <= 3; n++) await server.app.rooms.broadcast('news', 'story', { n })
  await until(() => got.length === 3, 'three stories')
  // The server ends every stream (as a restart would): the client reconnects and resumes.
  for (const connection of [...server.app.websocketServer.clients]) connection.terminate()
  await server.app.rooms.disconnectUser('mia', 4002, 'moved')
  for (let n = 4; n <= 6; n++) await server.app.rooms.broadcast('news', 'story', { n })
  await until(() => got.length === 6, 'the stories after the reconnect')
  t.same(got, [1, 2, 3, 4, 5, 6], 'each once, in order')
  t.equal(server.app.websocketServer.clients.size, 0, 'never a WebSocket')
})

t.test('#16 transport: \'auto\' — two failed upgrades send the client to the fallback; a probe that reaches welcome brings it back, losing and repeating nothing', async (t) => {
  const server = await startServer(t, { ...options, allowMissingOrigin: true })
  let blocked = true
  // Upgrades that fail on the way while `blocked` (a gateway dropping them): a port where nothing listens.
  class Blockable extends OriginWebSocket {
    constructor (url: string, protocols?: string | string[]) {
      super(blocked ? 'ws://127.0.0.1:9/blocked' : url, protocols)
    }
  }
  const transports: string[] = []
  const client = createClient({ url: `${server.url}/ws`, getToken: () => sign('noa'), WebSocket: Blockable, EventSource: NodeEventSource, rooms: ['news'], backoff: { initialMs: 20, maxMs: 50 }, probeIntervalMs: 100 })
  t.teardown(() => client.close())
  client.on('transport', (transport: string) => transports.push(transport))
  const got: number[] = []
  client.on('story', (frame: { payload: { n: number } }) => got.push(frame.payload.n))
  await until(() => client.transport === 'sse' && client.state === 'open' && client.position('news') !== undefined, 'on the fallback')
  let n = 0
  for (; n < 3; n++) await server.app.rooms.broadcast('news', 'story', { n })
  await until(() => got.length === 3, 'three on the fallback')
  const answer = client.request('order', { item: 'queued across the move' })
  blocked = false
  await until(() => client.transport === 'websocket' && client.state === 'open', 'back on a WebSocket')
  for (let i = 0; i < 3; i++) await server.app.rooms.broadcast('news', 'story', { n: n++ })
  await until(() => got.length === n, 'all of them')
  t.same(await answer, { ordered: 'queued across the move' })
  t.same(transports, ['sse', 'websocket'])
  t.same(got, [0, 1, 2, 3, 4, 5], 'each once, in order')
  t.equal(server.app.websocketServer.clients.size, 1)
  t.same(server.app.rooms.stats().sse.streams, 0, 'the stream is gone')
})

t.test('#16 transport: \'websocket\' never falls back, and \'auto\' without an EventSource (Node) stays on WebSockets', async (t) => {
  const server = await startServer(t, { ...options, allowMissingOrigin: true })
  const errors: string[] = []
  const forced = createClient({ url: 'ws://127.0.0.1:9/ws', getToken: () => sign('ola'), WebSocket: OriginWebSocket, transport: 'websocket', EventSource: NodeEventSource, backoff: { initialMs: 10, maxMs: 20 } })
  const bare = createClient({ url: 'ws://127.0.0.1:9/ws', getToken: () => sign('ola'), WebSocket: OriginWebSocket, backoff: { initialMs: 10, maxMs: 20 } })
  t.teardown(() => { forced.close(); bare.close() })
  forced.on('error', (err: { code: string }) => errors.push(err.code))
  await until(() => forced.attempt >= 4 && bare.attempt >= 4, 'a few failed attempts each')
  t.same([forced.transport, bare.transport], ['websocket', 'websocket'])
  t.ok(errors.every((code) => code === 'network'), 'network errors only')
  t.throws(() => createClient({ url: `${server.url}/ws`, transport: 'websocket', autoConnect: false, WebSocket: undefined as never }), /no global WebSocket/)
})

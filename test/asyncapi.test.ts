// The AsyncAPI 3.0 contract: the reference parser (@asyncapi/parser) finds no error in the example's
// document or in a host's with namespaces, streams, events and SSE; each type is listed with its schema;
// and frames a raw client really receives and sends validate against the document's schemas.
import t from 'tap'
import { Parser } from '@asyncapi/parser'
import Type from 'typebox'
import { Compile } from 'typebox/compile'
import { buildChatApp } from '../example/app.js'
import { defineMessage, ErrorCode, type AsyncApiDocument, type RoomsOptions } from '../lib/index.js'
import { connect, startServer, type Frame } from './helpers/index.js'

const parser = new Parser()

interface Message { name: string; payload: Record<string, any> }
const messagesOf = (document: AsyncApiDocument) => (document.components as { messages: Record<string, Message> }).messages
const named = (document: AsyncApiDocument, name: string) => Object.values(messagesOf(document)).find((message) => message.name === name)
const plain = (schema: unknown) => JSON.parse(JSON.stringify(schema))

/** The parser's errors (severity 0); the AsyncAPI version hint (3.0.0 is what we write) is information. */
async function parserErrors (document: unknown): Promise<string[]> {
  const { diagnostics } = await parser.parse(document as never)
  return diagnostics.filter((diagnostic) => diagnostic.severity === 0).map((diagnostic) => `${diagnostic.path.join('/')}: ${diagnostic.message}`)
}

const Said = Type.Object({ text: Type.String({ maxLength: 200 }) }, { additionalProperties: false })
const hostOptions = {
  sse: true,
  token: { fromQuery: true },
  namespaces: { doc: { presence: 'count' as const, maxMembers: 5, history: false as const }, 'live-feed': { latestOnJoin: true } },
  messages: {
    'chat:send': defineMessage({ schema: Type.Object({ text: Type.String({ minLength: 1 }) }), room: true, handler: (ctx, payload) => ctx.rooms.broadcast(ctx.room!, 'chat:said', payload) }),
    whoami: defineMessage({ schema: Type.Object({}), handler: (ctx) => ({ id: ctx.user.id }) }),
  },
  events: { 'chat:said': Said, chat_said: Type.Object({ other: Type.Boolean() }) },
} satisfies Partial<RoomsOptions>

t.test('the example\'s /asyncapi.json parses with no error and lists its messages and events with their schemas', async (t) => {
  const app = await buildChatApp({ jwtSecret: 'asyncapi-secret', allowedOrigins: '*', fastify: { logger: false } })
  t.teardown(() => app.close())
  const response = await app.inject({ method: 'GET', url: '/asyncapi.json', headers: { host: 'chat.test:3000' } })
  t.equal(response.statusCode, 200)
  const document = response.json() as AsyncApiDocument
  t.same(await parserErrors(document), [])
  t.equal(document.asyncapi, '3.0.0')
  t.same(document.servers, { here: { host: 'chat.test:3000', protocol: 'ws', pathname: '/ws' } })
  t.match(named(document, 'chat')?.payload, { required: ['type', 'room', 'payload'], properties: { payload: { required: ['text'] } } }, 'the chat message, with its schema')
  for (const event of ['announcement', 'assistant', 'note']) t.ok(named(document, event), `event ${event}`)
  t.ok((document.channels as Record<string, unknown>).sseStream, 'the SSE fallback is described')
  const page = await app.inject({ method: 'GET', url: '/' })
  t.match(page.body, /<footer>[^]*href="\/asyncapi.json"/, 'the page links it from its footer')
})

t.test('a host with namespaces, streams, events, SSE and query tokens: every type with its schema, codes, security', async (t) => {
  const server = await startServer(t, hostOptions)
  const document = server.app.rooms.asyncapi({ title: 'host', version: '2.1.0', servers: { prod: { host: 'rooms.example.com', protocol: 'wss' } } })
  t.same(await parserErrors(document), [])
  t.same(document.info, { title: 'host', version: '2.1.0', description: 'Rooms over WebSocket (and a Server-Sent Events fallback), served by fastify-rooms.' })

  const messages = messagesOf(document)
  for (const type of ['join', 'leave', 'ping', 'auth', 'resume', 'latency', 'welcome', 'ack', 'error', 'pong', 'reset', 'left', 'joined', 'append', 'presence', 'chat:send', 'whoami', 'chat:said', 'chat_said']) {
    t.ok(named(document, type), `${type} is listed`)
  }
  t.not(Object.keys(messages).find((key) => messages[key]!.name === 'chat:said'), Object.keys(messages).find((key) => messages[key]!.name === 'chat_said'), 'two types that spell alike keep two keys')
  t.same(named(document, 'chat:send')!.payload.properties.payload, plain(hostOptions.messages['chat:send'].schema))
  t.same(named(document, 'chat:said')!.payload.properties.payload, plain(Said))
  t.ok(named(document, 'chat:said')!.payload.properties.stream, 'an event may be streamed')
  t.same(named(document, 'error')!.payload.properties.payload.properties.code.enum, Object.values(ErrorCode))

  const channels = document.channels as Record<string, any>
  t.equal(channels.socket.address, '/ws')
  t.same(Object.keys(channels.socket['x-close-codes']).map(Number).sort(), [1000, 1001, 1006, 1008, 1009, 1011, 1013, 4000])
  t.match(channels.socket['x-namespaces'], { doc: { presence: 'count', maxMembers: 5, history: { maxEvents: 0 } }, 'live-feed': { latestOnJoin: true } })
  t.equal(channels.sseStream.address, '/ws/sse/{session}')
  const schemes = (document.components as { securitySchemes: Record<string, any> }).securitySchemes
  t.same(Object.keys(schemes).sort(), ['bearerHeader', 'bearerSubprotocol', 'tokenQuery'])
  const operations = document.operations as Record<string, any>
  t.same(operations['receive.message.chat_send'].reply.messages.map((to: { $ref: string }) => to.$ref), ['#/channels/socket/messages/ack', '#/channels/socket/messages/error'])
  t.equal(operations['send.append'].action, 'send')
})

t.test('what a raw client really sends and receives validates against the document', async (t) => {
  const server = await startServer(t, { ...hostOptions, token: undefined })
  const document = server.app.rooms.asyncapi()
  const validator = (name: string) => Compile(named(document, name)!.payload as never)
  const alice = await connect(server, 'alice')
  const sent = [
    { type: 'join', id: 'j1', room: 'lobby' },
    { type: 'chat:send', id: 'c1', room: 'lobby', payload: { text: 'hello' }, traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' },
    { type: 'whoami', id: 'w1', payload: {} },
    { type: 'ping', id: 'p1' },
  ]
  for (const frame of sent) {
    t.ok(validator(frame.type).Check(frame), `the ${frame.type} frame we send fits its schema`)
    alice.send(frame)
  }
  t.notOk(validator('chat:send').Check({ type: 'chat:send', room: 'lobby', payload: { text: 'x' }, extra: 1 }), 'the envelope is strict, as on the wire')
  await alice.next((frame) => frame.type === 'pong')
  alice.send({ type: 'leave', id: 'l1', room: 'nowhere' })
  await alice.next((frame) => frame.type === 'error')
  const received: Frame[] = alice.frames
  for (const type of ['welcome', 'ack', 'chat:said', 'pong', 'error']) {
    const frames = received.filter((frame) => frame.type === type)
    t.ok(frames.length > 0, `received ${type}`)
    for (const frame of frames) t.ok(validator(type).Check(frame), `a received ${type} fits its schema: ${JSON.stringify(frame)}`)
  }
})

t.test('what the options leave out is left out; bad info is refused by name', async (t) => {
  const server = await startServer(t, { authenticate: async () => ({ id: 'u' }), jwt: undefined, presence: false })
  const document = server.app.rooms.asyncapi()
  t.same(await parserErrors(document), [])
  t.same(Object.keys((document.components as { securitySchemes: object }).securitySchemes), ['session'])
  t.notOk(named(document, 'presence'), 'no presence events when presence is off')
  t.ok(named(document, 'event'), 'no events declared: one message for any event')
  t.same(Object.keys(document.channels as object), ['socket'], 'no SSE channels without the fallback')
  t.notOk('servers' in document)
  t.throws(() => server.app.rooms.asyncapi({ title: 3 } as never), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /info\.title/ })
  t.throws(() => server.app.rooms.asyncapi({ servers: { a: { host: 'x' } } } as never), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /info\.servers\.a/ })
  t.throws(() => server.app.rooms.asyncapi(null as never), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /info/ })
})

t.test('the parser check bites: a document with a broken reference has errors', async (t) => {
  const server = await startServer(t, {})
  const document = server.app.rooms.asyncapi() as AsyncApiDocument & { operations: Record<string, { channel: { $ref: string } }> }
  document.operations['send.welcome']!.channel = { $ref: '#/channels/nowhere' }
  t.not((await parserErrors(document)).length, 0)
})

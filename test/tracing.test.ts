// OpenTelemetry with the real SDK (in-memory exporter, AsyncLocalStorage context) and @fastify/otel on the
// host: a frame's traceparent parents its handler span, an HTTP route's broadcast is its request's child,
// the trace id reaches raw clients and survives Redis, refusals and errors are spans too, `tracing: false`
// makes none.
import t from 'tap'
import { context, trace } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor, type ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { FastifyOtelInstrumentation } from '@fastify/otel'
import Type from 'typebox'
import WebSocket from 'ws'
import { createClient } from '../lib/client/index.js'
import { defineMessage, type RoomsOptions } from '../lib/index.js'
import { redisBroker } from '../lib/brokers/redis.js'
import { bounded, connect, ORIGIN, rejectedUpgrade, sign, startServer, until, type Client, type Frame, type StartOptions, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { startServerProcess } from './helpers/server-process.js'
import { run } from './helpers/exec.js'

/** ws with the Origin a browser would send. */
class BrowserLikeWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

const exporter = new InMemorySpanExporter()
const provider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
trace.setGlobalTracerProvider(provider)
context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
const instrumentation = new FastifyOtelInstrumentation()
instrumentation.setTracerProvider(provider)

const TRACE_ID = '4bf92f3577b34da6a3ce929d0e0e4736'
const PARENT_SPAN_ID = '00f067aa0ba902b7'
const TRACEPARENT = `00-${TRACE_ID}-${PARENT_SPAN_ID}-01`
const HEX_TRACE_ID = /^[0-9a-f]{32}$/

const ours = () => exporter.getFinishedSpans().filter((span) => span.instrumentationScope.name === 'fastify-rooms')
const named = (name: string) => ours().filter((span) => span.name === name)
const parentOf = (span: ReadableSpan) => span.parentSpanContext?.spanId

async function waitForSpan (name: string, predicate: (span: ReadableSpan) => boolean = () => true): Promise<ReadableSpan> {
  await until(() => named(name).some(predicate), `a "${name}" span`)
  return named(name).find(predicate)!
}

const messages = {
  chat: defineMessage({
    schema: Type.Object({ text: Type.String() }),
    room: true,
    handler: async (ctx, payload) => {
      const { seq } = await ctx.rooms.broadcast(ctx.room!, 'said', payload)
      ctx.log.info({ seq }, 'chat handled')
      return { traceId: ctx.traceId, seq }
    },
  }),
  fail: defineMessage({
    schema: Type.Object({}),
    handler: () => { throw new Error('boom') },
  }),
} satisfies RoomsOptions['messages']

/** A host with @fastify/otel (registered first, as its README asks) and an HTTP route that broadcasts. */
function tracedHost (t: Parameters<typeof startServer>[0], options: Partial<RoomsOptions> = {}, start: StartOptions = {}): Promise<TestServer> {
  return startServer(t, { messages, ...options }, {
    ...start,
    before: async (app) => { await app.register(instrumentation.plugin()) },
    setup: async (app) => {
      app.post<{ Params: { room: string } }>('/rooms/:room/news', async (request) => {
        const { seq } = await app.rooms.broadcast(request.params.room, 'news', { text: 'hi' })
        return { seq, traceId: trace.getActiveSpan()?.spanContext().traceId }
      })
    },
  })
}

async function joined (server: TestServer, room: string, sub = 'alice'): Promise<Client> {
  const client = await connect(server, sub)
  client.send({ type: 'join', id: 'j', room })
  await client.nextOfType('ack')
  return client
}

t.beforeEach(() => exporter.reset())

t.test('a frame with a traceparent: handler span its child, ctx.traceId its trace, publish and fan-out below it', async (t) => {
  const server = await tracedHost(t)
  const alice = await joined(server, 'lobby')
  alice.send({ type: 'chat', id: 'c1', room: 'lobby', payload: { text: 'hello' }, traceparent: TRACEPARENT, tracestate: 'vendor=abc' })
  const ack = await alice.next((frame) => frame.type === 'ack' && frame.id === 'c1')
  t.equal((ack.payload as { traceId: string }).traceId, TRACE_ID)
  const event = await alice.nextOfType('said')
  t.equal(event.traceId, TRACE_ID, 'the room event carries the frame\'s trace id')

  const handler = await waitForSpan('process chat')
  t.equal(handler.spanContext().traceId, TRACE_ID)
  t.equal(parentOf(handler), PARENT_SPAN_ID)
  t.equal(handler.spanContext().traceState?.get('vendor'), 'abc')
  t.match(handler.attributes, { 'messaging.system': 'fastify-rooms', 'messaging.operation.type': 'process', 'messaging.destination.name': 'lobby', 'rooms.outcome': 'ok' })
  const publish = await waitForSpan('publish said')
  t.equal(parentOf(publish), handler.spanContext().spanId)
  t.match(publish.attributes, { 'messaging.destination.name': 'lobby', 'rooms.event.type': 'said', 'rooms.seq': event.seq, 'rooms.broker': 'memory' })
  t.equal((event as Frame & { traceparent?: string }).traceparent, `00-${TRACE_ID}-${publish.spanContext().spanId}-01`)
  const deliver = await waitForSpan('deliver said')
  t.equal(parentOf(deliver), publish.spanContext().spanId)
  t.equal(deliver.attributes['rooms.recipients'], 1, 'one span for the fan-out, with its count')

  const line = server.logs.map((text) => JSON.parse(text)).find((entry) => entry.msg === 'chat handled')
  t.equal(line?.trace_id, TRACE_ID)
  t.equal(line?.span_id, handler.spanContext().spanId)
})

t.test('frames without a traceparent start their own trace; errors and unknown types are spans with their code', async (t) => {
  const server = await tracedHost(t)
  const alice = await joined(server, 'lobby')
  alice.send({ type: 'chat', id: 'c2', room: 'lobby', payload: { text: 'x' } })
  const ack = await alice.next((frame) => frame.type === 'ack' && frame.id === 'c2')
  const handler = await waitForSpan('process chat')
  t.equal((ack.payload as { traceId: string }).traceId, handler.spanContext().traceId)
  t.equal(parentOf(handler), undefined, 'a root span, not the upgrade\'s child')

  alice.send({ type: 'chat', id: 'c3', room: 'elsewhere', payload: { text: 'x' } })
  t.equal((await alice.next((frame) => frame.id === 'c3')).payload.code, 'not_in_room')
  const refused = await waitForSpan('process chat', (span) => span.attributes['error.type'] === 'not_in_room')
  t.equal(refused.status.code, 2)

  alice.send({ type: 'fail', id: 'f1', payload: {} })
  t.equal((await alice.next((frame) => frame.id === 'f1')).payload.code, 'internal_error')
  await waitForSpan('process fail', (span) => span.attributes['error.type'] === 'internal_error')

  alice.send({ type: 'no-such-type-made-up-by-a-client', id: 'u1', payload: {} })
  t.equal((await alice.next((frame) => frame.id === 'u1')).payload.code, 'unknown_type')
  const unknown = await waitForSpan('process', (span) => span.attributes['error.type'] === 'unknown_type')
  t.equal(unknown.attributes['rooms.frame.type'], 'unknown', 'a client\'s type never names a span')
  t.notOk(ours().some((span) => span.name.includes('made-up')))
})

t.test('a payload a handler echoes cannot forge the traceparent its event\'s fan-out is parented by', async (t) => {
  const server = await tracedHost(t)
  const alice = await joined(server, 'lobby')
  const forged = `00-${'f'.repeat(32)}-${'e'.repeat(16)}-01`
  // Untraced event (the client's own traceId): the payload's look-alike fields must not make a deliver span.
  alice.send({ type: 'chat', id: 'c1', room: 'lobby', payload: { text: 'x', traceparent: forged, time: 1 }, traceId: 'custom-trace' })
  const untraced = await alice.nextOfType('said')
  t.equal(untraced.traceId, 'custom-trace')
  t.notOk('traceparent' in untraced, 'no traceparent of ours: the trace id is not the span\'s')
  await waitForSpan('publish said')
  // Traced event with the same payload: the fan-out is parented by the real publish span.
  alice.send({ type: 'chat', id: 'c2', room: 'lobby', payload: { text: 'y', traceparent: forged, time: 1 }, traceparent: TRACEPARENT })
  const traced = await alice.nextOfType('said')
  const publish = await waitForSpan('publish said', (span) => span.spanContext().traceId === TRACE_ID)
  const deliver = await waitForSpan('deliver said')
  t.equal(parentOf(deliver), publish.spanContext().spanId)
  t.equal((traced as Frame & { traceparent?: string }).traceparent, `00-${TRACE_ID}-${publish.spanContext().spanId}-01`)
  t.same(named('deliver said').length, 1, 'the untraced event made no deliver span')
  t.notOk(ours().some((span) => span.spanContext().traceId === 'f'.repeat(32)))
})

t.test('a malformed traceparent or tracestate → invalid_message, other sockets unaffected', async (t) => {
  const server = await tracedHost(t)
  const alice = await joined(server, 'lobby')
  const bob = await joined(server, 'lobby', 'bob')
  for (const [id, fields, path] of [
    ['t1', { traceparent: '00-xyz' }, '/traceparent'],
    ['t2', { traceparent: `00-${'0'.repeat(32)}-${PARENT_SPAN_ID}-01` }, '/traceparent'],
    ['t3', { traceparent: `00-${TRACE_ID}-${'0'.repeat(16)}-01` }, '/traceparent'],
    ['t4', { traceparent: `ff-${TRACE_ID}-${PARENT_SPAN_ID}-01` }, '/traceparent'],
    ['t5', { traceparent: TRACEPARENT, tracestate: 'a=b\nc' }, '/tracestate'],
    ['t6', { traceparent: TRACEPARENT, tracestate: 'a'.repeat(513) }, '/tracestate'],
  ] as const) {
    alice.send({ type: 'chat', id, room: 'lobby', payload: { text: 'x' }, ...fields })
    const error = await alice.next((frame) => frame.id === id)
    t.equal(error.payload.code, 'invalid_message', id)
    t.equal(error.payload.details.errors[0].path, path, id)
  }
  bob.send({ type: 'chat', id: 'b1', room: 'lobby', payload: { text: 'still fine' }, traceparent: TRACEPARENT })
  t.equal((await bob.next((frame) => frame.id === 'b1')).type, 'ack')
})

t.test('an HTTP route under @fastify/otel broadcasts: the publish span is the request\'s child, the event carries its trace id', async (t) => {
  const server = await tracedHost(t)
  const alice = await joined(server, 'news')
  const response = await server.app.inject({ method: 'POST', url: '/rooms/news/news' })
  t.equal(response.statusCode, 200)
  const { traceId, seq } = response.json() as { traceId: string; seq: number }
  t.match(traceId, HEX_TRACE_ID)
  const event = await alice.nextOfType('news')
  t.equal(event.traceId, traceId, 'client, server and backend see one trace')
  t.equal(event.seq, seq)
  const publish = await waitForSpan('publish news')
  t.equal(publish.spanContext().traceId, traceId)
  const requestSpans = exporter.getFinishedSpans().filter((span) => span.instrumentationScope.name !== 'fastify-rooms' && span.spanContext().traceId === traceId)
  t.ok(requestSpans.some((span) => span.spanContext().spanId === parentOf(publish)), 'its parent is one of the request\'s spans')
})

t.test('admission spans: accepted with the connection id, refused with status and code', async (t) => {
  const server = await tracedHost(t)
  const alice = await connect(server, 'alice')
  const welcome = alice.frames.find((frame) => frame.type === 'welcome') ?? await alice.nextOfType('welcome')
  const accepted = await waitForSpan('admission', (span) => span.attributes['rooms.admission.outcome'] === 'accepted')
  t.equal(accepted.attributes['messaging.client.id'], (welcome.payload as { connectionId: string }).connectionId)
  const rejection = await rejectedUpgrade(server, 'mallory', { token: 'not-a-jwt' })
  t.equal(rejection.status, 401)
  const refused = await waitForSpan('admission', (span) => span.attributes['rooms.admission.outcome'] === 'refused')
  t.equal(refused.attributes['http.response.status_code'], 401)
  t.equal(refused.status.code, 2)
  t.type(refused.attributes['error.type'], 'string')
})

t.test('our client sends a traceparent with a request and sees the event\'s trace id', async (t) => {
  const server = await tracedHost(t)
  const client = createClient<{ messages: { chat: { payload: { text: string }; result: { traceId: string; seq: number } } }; events: { said: { text: string } } }>({
    url: `${server.url}/ws`,
    getToken: () => sign('carol'),
    WebSocket: BrowserLikeWebSocket,
  })
  t.teardown(() => client.close())
  await client.join('lobby')
  const said = new Promise<Frame>((resolve) => client.on('said', (frame) => resolve(frame as Frame)))
  const result = await client.request('chat', { text: 'hi' }, { room: 'lobby', traceparent: TRACEPARENT })
  t.equal(result.traceId, TRACE_ID)
  t.equal((await bounded(said, 'the said event')).traceId, TRACE_ID)
})

t.test('tracing: false → no spans of ours and no errors; trace ids are still W3C trace ids', async (t) => {
  const server = await tracedHost(t, { tracing: false })
  const alice = await joined(server, 'lobby')
  alice.send({ type: 'chat', id: 'c1', room: 'lobby', payload: { text: 'x' }, traceparent: TRACEPARENT })
  t.equal((await alice.next((frame) => frame.id === 'c1')).payload.traceId, TRACE_ID, 'the frame\'s trace id without spans')
  const event = await alice.nextOfType('said')
  t.notOk('traceparent' in event)
  const response = await server.app.inject({ method: 'POST', url: '/rooms/lobby/news' })
  t.equal(response.statusCode, 200)
  const news = await alice.nextOfType('news')
  t.match(news.traceId, HEX_TRACE_ID)
  t.same(ours(), [])
  t.notOk(server.logs.some((line) => JSON.parse(line).level >= 50), 'nothing logged at error')
})

t.test('Redis: the trace id and the publish span reach the other process\'s fan-out', async (t) => {
  if (!componentAvailable(t, redisMissing(), 'redis-server')) return
  const redis = await startRedis(t)
  const a = await tracedHost(t, { broker: redisBroker({ url: redis.url }) })
  const b = await tracedHost(t, { broker: redisBroker({ url: redis.url }) })
  const bob = await joined(b, 'news', 'bob')
  const response = await a.app.inject({ method: 'POST', url: '/rooms/news/news' })
  const { traceId } = response.json() as { traceId: string }
  const event = await bob.nextOfType('news')
  t.equal(event.traceId, traceId)
  const publish = await waitForSpan('publish news')
  t.equal(publish.attributes['rooms.broker'], 'redis')
  const deliver = await waitForSpan('deliver news')
  t.equal(parentOf(deliver), publish.spanContext().spanId, 'B\'s fan-out is a child of A\'s publish')
  t.equal(deliver.spanContext().traceId, traceId)

  // A process of its own (no tracer provider there): the trace crosses it both ways.
  const other = await startServerProcess(t, redis)
  const carol = await connect(other.url, 'carol')
  carol.send({ type: 'join', id: 'j', room: 'news' })
  await carol.nextOfType('ack')
  const again = (await a.app.inject({ method: 'POST', url: '/rooms/news/news' })).json() as { traceId: string }
  const seen = await carol.nextOfType('news')
  t.equal(seen.traceId, again.traceId, 'the other process\'s client gets the trace id')
  const republished = await waitForSpan('publish news', (span) => span.spanContext().traceId === again.traceId)
  t.equal((seen as Frame & { traceparent?: string }).traceparent, `00-${again.traceId}-${republished.spanContext().spanId}-01`)
  const alice = await joined(a, 'news')
  carol.send({ type: 'say', id: 's1', room: 'news', payload: { text: 'from afar' }, traceparent: TRACEPARENT })
  t.equal((await alice.nextOfType('said')).traceId, TRACE_ID, 'a frame\'s trace id published on the other process')
})

for (const [api, name] of [['missing', 'a host without @opentelemetry/api'], ['installed', 'a host with the API and no SDK']] as const) {
  t.test(`${name}: the plugin starts, traceparent still names ctx.traceId, trace ids are W3C ones`, async (t) => {
    const fixture = new URL('./fixtures/untraced-host.ts', import.meta.url).pathname
    const output = await run('env', [`OTEL_API=${api}`, process.execPath, '--import=tsx', fixture], new URL('..', import.meta.url).pathname, 60_000)
    const seen = JSON.parse(output.trim().split('\n').at(-1)!) as { apiMissing: boolean; handlerTraceId: string; event: Frame & { traceparent?: string } | null }
    t.equal(seen.apiMissing, api === 'missing', `the API really is ${api} in that process`)
    t.equal(seen.handlerTraceId, TRACE_ID)
    t.match(seen.event?.traceId, HEX_TRACE_ID)
    t.notOk(seen.event !== null && 'traceparent' in seen.event, 'nothing recorded, no traceparent')
  })
}

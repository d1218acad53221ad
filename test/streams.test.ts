// Streamed events (`fastify.rooms.stream`): one room event whose text grows, delivered to every member in
// order with no byte twice and none missing — checked on the wire, by raw clients that accept an append
// only at exactly the offset they stand at.
import t from 'tap'
import Type from 'typebox'
import { defineMessage, memoryBroker, type Broker } from '../lib/index.js'
import { Client, connect, startServer, tcpSocketOf, type Frame, type TestServer } from './helpers/index.js'
import { follow, StreamFollower } from './helpers/stream-follower.js'
import { checkScenario, streamScenario } from './helpers/stream-scenario.js'

async function ended (client: Client, id: string): Promise<Frame & { state: string; reason?: string }> {
  return client.next((f: any) => f.type === 'append' && f.id === id && f.state !== undefined, `end of ${id}`) as Promise<Frame & { state: string; reason?: string }>
}

function tokens (count: number): string[] {
  return Array.from({ length: count }, (_, i) => `tok${i}${i % 7 === 0 ? ' ✓\n' : ' '}`)
}

async function server (t: { teardown(fn: () => unknown): void }, options = {}): Promise<TestServer> {
  return startServer(t, { presence: false, ...options })
}

t.test('a stream is one event: members get it, then its text in order, then its end', async (t) => {
  const s = await server(t)
  const a = await connect(s, 'alice')
  await a.join('chat')
  const stream = await s.app.rooms.stream('chat', 'answer', { question: 'q' })
  t.equal(stream.seq, 1)
  t.equal(stream.state, 'streaming')
  const words = tokens(50)
  for (const word of words) {
    stream.append(word)
    await new Promise((resolve) => setImmediate(resolve))
  }
  await stream.end()
  t.equal(stream.state, 'done')
  await ended(a, stream.id)
  const wire = new StreamFollower('chat')
  for (const frame of a.frames) wire.apply(frame)
  t.same(wire.errors, [])
  t.equal(wire.texts.get(stream.id), words.join(''))
  t.equal(wire.states.get(stream.id), 'done')
  const start = a.frames.find((f: any) => f.type === 'answer')!
  t.same((start as any).stream, { id: stream.id, state: 'streaming', text: '' })
  const history = await s.app.rooms.history('chat')
  t.equal(history.events.length, 1)
  t.same(history.events[0]!.stream, { id: stream.id, state: 'done', text: words.join('') })
  t.throws(() => stream.append('more'), { code: 'FST_ROOMS_STREAM_ENDED' })
})

t.test('3000 tokens at 100/s, raw clients dropped and resumed at random moments, a late joiner, the client cut: every text byte-identical (seed 24)', async (t) => {
  const s = await server(t, { handshakeRateLimit: false })
  const result = await streamScenario({ servers: [s], seed: 24, count: 3000, perSecond: 100, transport: 'websocket' })
  t.equal(result.followers.length, 3)
  checkScenario(t, result)
  const history = await s.app.rooms.history('conversation')
  t.equal(history.events.length, 1, 'one history entry')
  t.equal(history.events[0]!.stream!.text, result.source)
})

const turn = () => new Promise((resolve) => setImmediate(resolve))

t.test('a late joiner gets the text so far in its join ack, then every append exactly once; a resume from before the stream gets it replayed with its text', async (t) => {
  const s = await server(t)
  const stream = await s.app.rooms.stream('chat', 'answer', { q: 1 })
  stream.append('Hello, ')
  await turn()
  const late = await connect(s, 'bob')
  const follower = new StreamFollower('chat')
  follow(late.ws, follower)
  const ack = await late.join('chat')
  t.same(ack.payload.streams.map((given: any) => given.stream), [{ id: stream.id, state: 'streaming', text: 'Hello, ' }], 'the ack gives the open stream')
  t.equal(ack.payload.streams[0].seq, stream.seq)
  t.equal(ack.payload.streams[0].type, 'answer')
  stream.append('world')
  await stream.end()
  await ended(late, stream.id)
  t.same(follower.errors, [])
  t.equal(follower.texts.get(stream.id), 'Hello, world')

  // A client that was in the room before the stream began resumes from there: the stream event is replayed with its text.
  const early = await connect(s, 'carol')
  const earlyFollower = new StreamFollower('chat')
  follow(early.ws, earlyFollower)
  earlyFollower.seq = 0
  earlyFollower.epoch = ack.payload.epoch
  const next = await s.app.rooms.stream('chat', 'answer', {})
  next.append('partial')
  await turn()
  const resumed = await early.request({ type: 'resume', payload: { rooms: { chat: { seq: 0, epoch: ack.payload.epoch } } } })
  t.equal(resumed.payload.rooms.chat.result, 'replayed')
  next.append(' and more')
  await next.end()
  await ended(early, next.id)
  t.same(earlyFollower.errors, [])
  t.equal(earlyFollower.texts.get(stream.id), 'Hello, world')
  t.equal(earlyFollower.states.get(stream.id), 'done')
  t.equal(earlyFollower.texts.get(next.id), 'partial and more')
})

t.test('abort keeps the text and says why; an idle stream is aborted after streamIdleMs; a stream\'s appends after its end throw', async (t) => {
  const s = await server(t, { streamIdleMs: 100 })
  const a = await connect(s, 'alice')
  const follower = new StreamFollower('chat')
  follow(a.ws, follower)
  await a.join('chat')
  const cancelled = await s.app.rooms.stream('chat', 'answer', {})
  cancelled.append('half an ans')
  await cancelled.abort('user pressed stop')
  t.equal(cancelled.state, 'aborted')
  const end = await ended(a, cancelled.id)
  t.same([end.state, end.reason], ['aborted', 'user pressed stop'])
  t.equal(follower.texts.get(cancelled.id), 'half an ans')
  t.throws(() => cancelled.append('x'), { code: 'FST_ROOMS_STREAM_ENDED', statusCode: 409 })
  t.throws(() => cancelled.abort('x'.repeat(129)), TypeError)

  const idle = await s.app.rooms.stream('chat', 'answer', {})
  idle.append('then nothing')
  const idleEnd = await ended(a, idle.id)
  t.same([idleEnd.state, idleEnd.reason], ['aborted', 'idle'])
  t.equal(idle.state, 'aborted')
  t.throws(() => idle.append('late'), { code: 'FST_ROOMS_STREAM_ENDED' })
  await t.resolves(idle.end(), 'end() of an ended stream resolves: it is stored')
  const history = await s.app.rooms.history('chat')
  t.same(history.events.map((event) => [event.stream!.state, event.stream!.text, event.stream!.reason]), [['aborted', 'half an ans', 'user pressed stop'], ['aborted', 'then nothing', 'idle']])
  t.same(follower.errors, [])
})

t.test('budgets: open streams per room and per process, bytes per stream, and the option\'s bound', async (t) => {
  const s = await server(t, { maxOpenStreamsPerRoom: 2, maxOpenStreams: 3, maxStreamBytes: 100 })
  const first = await s.app.rooms.stream('a', 'answer', {})
  const second = await s.app.rooms.stream('a', 'answer', {})
  await t.rejects(s.app.rooms.stream('a', 'answer', {}), { code: 'FST_ROOMS_TOO_MANY_STREAMS', statusCode: 429, message: /room "a" has 2 open streams/ })
  t.equal((await s.app.rooms.history('a')).events.length, 2, 'a refused stream publishes nothing')
  await first.end()
  const third = await s.app.rooms.stream('a', 'answer', {})
  const elsewhere = await s.app.rooms.stream('c', 'answer', {})
  await t.rejects(s.app.rooms.stream('b', 'answer', {}), { code: 'FST_ROOMS_TOO_MANY_STREAMS', message: /this process has 3 open streams/ })
  await elsewhere.end()
  third.append('x'.repeat(90))
  t.throws(() => third.append('"'.repeat(6)), { code: 'FST_ROOMS_STREAM_TOO_LARGE', statusCode: 413 }, 'counted as it travels: an escaped quote is two bytes')
  third.append('"'.repeat(5))
  t.equal(third.state, 'streaming', 'a refused append leaves the stream as it was')
  await third.end()
  await second.end()
  t.equal((await s.app.rooms.history('a')).events.at(-1)!.stream!.text, 'x'.repeat(90) + '"'.repeat(5))
  await t.rejects(s.app.rooms.stream('a', 'presence', {}), { code: 'FST_ROOMS_INVALID_ARGUMENT' })
  await t.rejects(s.app.rooms.stream('a', 'answer', { big: 'x'.repeat(1_048_576) }), { code: 'FST_ROOMS_PAYLOAD_TOO_LARGE' })
  await t.rejects(startServer(t, { maxBufferedBytes: 65_536, maxStreamBytes: 40_000 }), { code: 'FST_ROOMS_INVALID_OPTION', message: /"maxStreamBytes" must be at most maxBufferedBytes \/ 2 = 32768/ })
  // A custom broker without the stream methods: a clear error, and nothing published.
  const custom = Object.assign(Object.create(memoryBroker()) as Broker, { appendStream: undefined, stream: undefined, openStreams: undefined, name: 'custom' })
  const withCustom = await server(t, { broker: custom })
  await t.rejects(withCustom.app.rooms.stream('a', 'answer', {}), { code: 'FST_ROOMS_STREAMS_UNSUPPORTED', message: /the custom broker does not store streams/ })
  t.equal((await withCustom.app.rooms.history('a')).seq, 0)
})

t.test('resume with forged or stale streams: each is answered aborted (unknown stream); more than 16 is an invalid frame; nothing else is affected', async (t) => {
  const s = await server(t)
  const other = await s.app.rooms.stream('other', 'answer', {})
  other.append('secret of another room')
  const a = await connect(s, 'alice')
  const { payload: joined } = await a.join('chat')
  const real = await s.app.rooms.stream('chat', 'answer', {})
  real.append('abc')
  await turn()
  await a.close()
  const b = await connect(s, 'alice')
  const ack = await b.request({ type: 'resume', payload: { rooms: { chat: { seq: 1, epoch: joined.epoch, streams: { 'no-such-stream': 0, [other.id]: 0, [real.id]: 99 } } } } })
  t.equal(ack.payload.rooms.chat.result, 'replayed')
  const answers = b.frames.filter((f: any) => f.type === 'append')
  t.same(answers.map((f: any) => [f.id, f.offset, f.text, f.state, f.reason]).sort(), [
    ['no-such-stream', 0, '', 'aborted', 'unknown stream'],
    [other.id, 0, '', 'aborted', 'unknown stream'],
    [real.id, 99, '', 'aborted', 'unknown stream'],
  ].sort(), 'another room\'s stream reveals nothing; an offset past the text is not trusted')
  const many = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`s${i}`, 0]))
  const refused = await b.request({ type: 'resume', payload: { rooms: { x: { seq: 0, epoch: joined.epoch, streams: many } } } })
  t.equal(refused.type, 'error')
  t.equal(refused.payload.code, 'invalid_message')
  const good = await connect(s, 'bob')
  const follower = new StreamFollower('chat')
  follow(good.ws, follower)
  await good.request({ type: 'resume', payload: { rooms: { chat: { seq: 1, epoch: joined.epoch, streams: { [real.id]: 1 } } } } })
  real.append('def')
  await real.end()
  await ended(good, real.id)
  t.equal((good.frames.find((f: any) => f.type === 'append') as any).offset, 1, 'a real resume gets the rest from where it stands')
  t.equal(good.frames.filter((f: any) => f.type === 'append').map((f: any) => f.text).join(''), 'bcdef')
  await other.end()
})

t.test('a slow reader gets a stream\'s appends merged into larger deltas instead of being closed; a healthy one gets each', async (t) => {
  const s = await server(t, { maxBufferedBytes: 262_144, maxStreamBytes: 65_536 })
  const slow = await connect(s, 'slow')
  const fast = await connect(s, 'fast')
  await slow.join('chat')
  await fast.join('chat')
  const raw = tcpSocketOf(slow.ws)
  raw.pause()
  // Filled until the server holds more for it than a socket that keeps up ever should.
  for (let i = 0; i < 2000 && s.app.rooms.stats().maxBufferedBytes < 80_000; i++) {
    await s.app.rooms.broadcast('chat', 'blob', { blob: 'x'.repeat(8192) })
    await turn()
  }
  t.ok(s.app.rooms.stats().maxBufferedBytes >= 80_000, 'the slow reader is behind')
  const stream = await s.app.rooms.stream('chat', 'answer', {})
  const pieces: string[] = []
  for (let i = 0; i < 2000; i++) {
    pieces.push(`w${i % 10} `)
    stream.append(pieces[i]!)
    await turn()
  }
  await stream.end()
  t.equal(s.app.rooms.stats().slowConsumerCloses, 0, 'no one closed: 2000 append frames would have passed its budget')
  raw.resume()
  await ended(slow, stream.id)
  await ended(fast, stream.id)
  const text = (client: Client) => client.frames.filter((f: any) => f.type === 'append').map((f: any) => f.text).join('')
  t.equal(text(slow), pieces.join(''))
  t.equal(text(fast), pieces.join(''))
  const slowFrames = slow.frames.filter((f: any) => f.type === 'append').length
  t.ok(slowFrames < 100, `the slow reader got ${slowFrames} append frames`)
  t.ok(fast.frames.filter((f: any) => f.type === 'append').length > 1000, 'the healthy one got them as they came')
})

t.test('ctx.rooms.stream in a handler carries the frame\'s traceId; an idempotencyKey gives the same stream back', async (t) => {
  const s = await server(t, {
    messages: {
      ask: defineMessage({
        schema: Type.Object({ q: Type.String({ maxLength: 100 }) }),
        room: true,
        handler: async (ctx, payload) => {
          const stream = await ctx.rooms.stream(ctx.room!, 'answer', { q: payload.q })
          stream.append(`You asked: ${payload.q}`)
          await stream.end()
          return { seq: stream.seq }
        },
      }),
    },
  })
  const a = await connect(s, 'alice')
  await a.join('chat')
  const answer = await a.request({ type: 'ask', room: 'chat', traceId: 'trace-1', payload: { q: '<script>' } })
  const event = a.frames.find((f: any) => f.type === 'answer') as any
  t.equal(event.traceId, 'trace-1')
  t.equal(event.seq, answer.payload.seq)
  t.equal(a.frames.filter((f: any) => f.type === 'append').map((f: any) => f.text).join(''), 'You asked: <script>', 'echoed as text, inside JSON')
  const once = await s.app.rooms.stream('chat', 'answer', {}, { idempotencyKey: 'k1' })
  const again = await s.app.rooms.stream('chat', 'answer', {}, { idempotencyKey: 'k1' })
  t.equal(again, once, 'the same handle')
  await once.end()
  await t.rejects(s.app.rooms.stream('chat', 'answer', {}, { idempotencyKey: 'k1' }), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: /idempotencyKey started the stream at seq/ })
})

t.test('shutdown ends open streams aborted (shutdown) before the sockets close; the history budget counts a stream\'s text', async (t) => {
  const s = await server(t, { history: { maxEvents: 100, maxAgeMs: 60_000, maxBytes: 20_000 } })
  for (let i = 0; i < 5; i++) await s.app.rooms.broadcast('old', 'note', { i })
  const before = await s.app.rooms.position('old')
  const long = await s.app.rooms.stream('big', 'answer', {})
  long.append('y'.repeat(30_000))
  await turn()
  await long.end()
  const old = await s.app.rooms.history('old')
  t.same([old.events.length, old.epoch === before.epoch], [0, false], 'another room (nobody in it) made room for the stream\'s text: gone, with its epoch')
  const a = await connect(s, 'alice')
  await a.join('chat')
  const open = await s.app.rooms.stream('chat', 'answer', {})
  open.append('cut short')
  await turn()
  const closing = s.app.close()
  const end = await ended(a, open.id)
  t.same([end.state, end.reason], ['aborted', 'shutdown'])
  t.equal((await a.closed).code, 1001)
  await closing
})

// Streamed events (`fastify.rooms.stream`): one room event whose text grows, delivered to every member in
// order with no byte twice and none missing — checked on the wire, by raw clients that accept an append
// only at exactly the offset they stand at.
import t from 'tap'
import { Client, connect, startServer, type Frame, type TestServer } from './helpers/index.js'
import { streamScenario } from './helpers/stream-scenario.js'

/** A raw client's view of the streams of one room: strict (an append must start where the text ends). */
class WireStreams {
  readonly texts = new Map<string, string>()
  readonly states = new Map<string, string>()
  readonly errors: string[] = []

  constructor (readonly client: Client, readonly room: string) {}

  /** Reads every frame received so far (again from the start: idempotent). */
  read (): this {
    this.texts.clear()
    this.states.clear()
    this.errors.length = 0
    for (const frame of this.client.frames) this.apply(frame)
    return this
  }

  apply (frame: Frame): void {
    const f = frame as any
    if (f.room !== this.room) return
    if (f.stream !== undefined) return this.start(f.stream)
    if ((f.type === 'ack' || f.type === 'joined') && Array.isArray(f.payload?.streams)) for (const s of f.payload.streams) this.start(s.stream)
    if (f.type !== 'append') return
    const text = this.texts.get(f.id)
    if (text === undefined) {
      this.errors.push(`append for unknown stream ${f.id}`)
      return
    }
    if (this.states.get(f.id) !== 'streaming') {
      this.errors.push(`append after the end of ${f.id}`)
      return
    }
    if (f.offset !== text.length) {
      this.errors.push(`append at ${f.offset}, text is ${text.length} long`)
      return
    }
    this.texts.set(f.id, text + f.text)
    if (f.state !== undefined) this.states.set(f.id, f.state)
  }

  private start (stream: { id: string; text: string; state: string }): void {
    if (this.texts.has(stream.id)) {
      this.errors.push(`stream ${stream.id} given twice`)
      return
    }
    this.texts.set(stream.id, stream.text)
    this.states.set(stream.id, stream.state)
  }
}

async function ended (client: Client, id: string): Promise<Frame> {
  return client.next((f: any) => f.type === 'append' && f.id === id && f.state !== undefined, `end of ${id}`)
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
  const wire = new WireStreams(a, 'chat').read()
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
  t.ok(result.drops >= 5, `dropped ${result.drops} times`)
  t.equal(result.followers.length, 3)
  for (const follower of result.followers) {
    t.same(follower.errors, [], 'the wire: no seq twice or skipped, no append overlapping or leaving a gap')
    t.equal(follower.texts.get(result.streamId), result.source)
    t.equal(follower.states.get(result.streamId), 'done')
  }
  t.equal(result.client.text, result.source, 'the client\'s object')
  t.equal(result.client.deltas, result.source, 'its append deltas, concatenated')
  t.same(result.client.ends, ['done'])
  t.equal(result.client.emitted, 1, 'one object, through every reconnect')
  const history = await s.app.rooms.history('conversation')
  t.equal(history.events.length, 1, 'one history entry')
  t.equal(history.events[0]!.stream!.text, result.source)
})

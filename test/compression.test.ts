// Issue #14: room events compressed once per publish for the sockets that negotiated permessage-deflate
// (no server context takeover), plain for the others; every size boundary decodes, order kept.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { connect, startServer, tcpSocketOf, until } from './helpers/index.js'

// Lengths around the frame-length encodings (125/126, 65535/65536) and the threshold, and 1 MiB.
const sizes = [0, 100, 125, 126, 1023, 1024, 5000, 65_535, 65_536, 200_000, 1_048_576]
const text = (n: number, compressible: boolean) => compressible ? 'a'.repeat(n) : randomBytes(Math.ceil(n * 0.75)).toString('base64').slice(0, n)

t.test('#14 compressed and plain sockets in one room get every event intact and in order, at every size', async (t) => {
  const server = await startServer(t, { presence: false, compression: { threshold: 1024 }, maxPayload: 2_000_000, maxBufferedBytes: 64 * 1024 * 1024 })
  const deflating = await connect(server, 'deflating', { wsOptions: { perMessageDeflate: true, maxPayload: 4_000_000 } })
  const plain = await connect(server, 'plain', { wsOptions: { perMessageDeflate: false, maxPayload: 4_000_000 } })
  t.equal(deflating.ws.extensions, 'permessage-deflate', 'negotiated')
  // What framing.ts reads of ws's internals: the accepted parameters.
  const params = (deflating.ws as unknown as { _extensions: Record<string, { params: Record<string, unknown> }> })._extensions['permessage-deflate']!.params
  t.equal(params.server_no_context_takeover, true, 'each message on its own')
  t.equal(plain.ws.extensions, '')
  await deflating.join('r')
  await plain.join('r')
  const expected: string[] = []
  for (const compressible of [true, false]) {
    for (const size of sizes) {
      const body = text(size, compressible)
      expected.push(body)
      await server.app.rooms.broadcast('r', 'blob', { body })
    }
  }
  for (const client of [deflating, plain]) {
    await until(() => client.frames.filter((frame) => frame.type === 'blob').length === expected.length, 'every event')
    const got = client.frames.filter((frame) => frame.type === 'blob')
    t.same(got.map((frame) => frame.seq), expected.map((_, i) => i + 1), 'in order')
    t.ok(got.every((frame, i) => frame.payload.body === expected[i]), 'every payload intact')
  }
})

t.test('#14 a compressible event travels compressed to a deflate socket, and the server sends a direct frame after it in order', async (t) => {
  const server = await startServer(t, { presence: false, compression: { threshold: 1024 }, maxPayload: 2_000_000, maxBufferedBytes: 64 * 1024 * 1024 })
  const deflating = await connect(server, 'deflating', { wsOptions: { perMessageDeflate: true, maxPayload: 4_000_000 } })
  const plain = await connect(server, 'plain', { wsOptions: { perMessageDeflate: false, maxPayload: 4_000_000 } })
  await deflating.join('r')
  await plain.join('r')
  const socketOf = (client: typeof plain) => tcpSocketOf(client.ws)
  const before = [socketOf(deflating).bytesRead, socketOf(plain).bytesRead]
  await server.app.rooms.broadcast('r', 'big', { body: 'a'.repeat(500_000) })
  await server.app.rooms.sendToUser('deflating', 'after', {})
  await deflating.nextOfType('after')
  await plain.nextOfType('big')
  const read = [socketOf(deflating).bytesRead - before[0]!, socketOf(plain).bytesRead - before[1]!]
  t.ok(read[1]! > 500_000, `plain socket read ${read[1]} bytes`)
  t.ok(read[0]! < 10_000, `deflate socket read ${read[0]} bytes for the same event`)
  const order = deflating.frames.filter((frame) => frame.type === 'big' || frame.type === 'after').map((frame) => frame.type)
  t.same(order, ['big', 'after'])
  t.equal(deflating.frames.find((frame) => frame.type === 'big')?.payload.body.length, 500_000)
})

t.test('#14 a client that asks for a smaller server window gets plain frames (one compressed frame fits only the full window)', async (t) => {
  const server = await startServer(t, { presence: false, compression: { threshold: 1024 }, maxPayload: 2_000_000, maxBufferedBytes: 64 * 1024 * 1024 })
  const narrow = await connect(server, 'narrow', { wsOptions: { perMessageDeflate: { serverMaxWindowBits: 10 }, maxPayload: 4_000_000 } })
  t.equal(narrow.ws.extensions, 'permessage-deflate')
  await narrow.join('r')
  const socket = tcpSocketOf(narrow.ws)
  const before = socket.bytesRead
  await server.app.rooms.broadcast('r', 'big', { body: 'a'.repeat(100_000) })
  t.equal((await narrow.nextOfType('big')).payload.body.length, 100_000, 'decoded')
  t.ok(socket.bytesRead - before > 100_000, 'sent as is')
})

t.test('#14 compression is off by default: nothing is negotiated', async (t) => {
  const server = await startServer(t, { presence: false })
  const client = await connect(server, 'alice', { wsOptions: { perMessageDeflate: true } })
  t.equal(client.ws.extensions, '')
})

t.test('#14 a stalled deflate reader under coalesced, compressed fan-out is closed 1013 at maxBufferedBytes and resumes without a gap or a duplicate', async (t) => {
  const maxBufferedBytes = 256 * 1024
  const server = await startServer(t, { presence: false, compression: { threshold: 1024 }, maxBufferedBytes, rateLimit: false })
  const deflating = await connect(server, 'deflating', { wsOptions: { perMessageDeflate: true } })
  const plain = await connect(server, 'plain', { wsOptions: { perMessageDeflate: false } })
  const stalled = await connect(server, 'stalled', { wsOptions: { perMessageDeflate: true } })
  t.same([deflating, plain, stalled].map((client) => client.ws.extensions), ['permessage-deflate', '', 'permessage-deflate'])
  await deflating.join('feed')
  await plain.join('feed')
  const { payload: joined } = await stalled.join('feed')
  const raw = tcpSocketOf(stalled.ws)
  raw.pause()
  // Random text compresses to about three quarters: the compressed frames still fill the stalled socket.
  const body = () => randomBytes(12 * 1024).toString('base64')
  let published = 0
  let peak = 0
  // Eight publishes per turn, so each socket's events leave in one coalesced write; 2000 at most (~32 MB).
  while (published < 2000 && server.app.rooms.stats().slowConsumerCloses === 0) {
    await Promise.all(Array.from({ length: 8 }, () => server.app.rooms.broadcast('feed', 'blob', { body: body() })))
    published += 8
    // Read before the turn ends: what ws holds plus what waits in the coalescing queue.
    peak = Math.max(peak, server.app.rooms.stats().maxBufferedBytes)
    await new Promise((resolve) => setImmediate(resolve))
  }
  t.equal(server.app.rooms.stats().slowConsumerCloses, 1, `the stalled reader closed after ${published} publishes`)
  t.ok(peak > maxBufferedBytes / 2 && peak <= maxBufferedBytes, `no socket held more than maxBufferedBytes, queue included (peak ${peak})`)
  for (let i = 0; i < 8; i++) await server.app.rooms.broadcast('feed', 'blob', { body: body() })
  const total = published + 8
  raw.resume()
  t.same(await stalled.closed, { code: 1013, reason: 'slow consumer' })
  const seqs = (client: typeof plain) => client.frames.filter((frame) => frame.type === 'blob').map((frame) => frame.seq!)
  const all = Array.from({ length: total }, (_, i) => i + 1)
  for (const reader of [deflating, plain]) {
    await until(() => seqs(reader).length === total, 'the healthy readers get every event')
    t.same(seqs(reader), all, 'in order, once each')
  }
  const before = seqs(stalled)
  t.same(before, all.slice(0, before.length), 'what reached the stalled reader before the close is a gap-free prefix')
  const again = await connect(server, 'stalled', { wsOptions: { perMessageDeflate: true } })
  const position = { seq: before.at(-1) ?? joined.seq, epoch: joined.epoch }
  const ack = await again.request({ type: 'resume', payload: { rooms: { feed: position } } })
  t.equal(ack.payload.rooms.feed.result, 'replayed')
  await until(() => before.length + seqs(again).length >= total, 'the replay')
  t.same([...before, ...seqs(again)], all, 'every event exactly once across the close')
  const sameBodies = (a: typeof plain, b: typeof plain) => a.frames.filter((f) => f.type === 'blob').every((f, i) => f.payload.body === b.frames.filter((g) => g.type === 'blob')[i]?.payload.body)
  t.ok(sameBodies(deflating, plain), 'the compressed copy decodes to the plain one')
})

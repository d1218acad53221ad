// Issue #14: room events compressed once per publish for the sockets that negotiated permessage-deflate
// (no server context takeover), plain for the others; every size boundary decodes, order kept.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import { connect, startServer, until } from './helpers/index.js'

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
  const socketOf = (client: typeof plain) => (client.ws as unknown as { _socket: import('node:net').Socket })._socket
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
  const socket = (narrow.ws as unknown as { _socket: import('node:net').Socket })._socket
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

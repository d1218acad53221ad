// Issue #14: compress-once frames read by a strict, independent client (Python `websockets`, Debian's
// python3-websockets), with and without permessage-deflate, at every frame-length boundary of the bytes
// on the wire: 125/126 and 65535/65536, for plain and for compressed frames, and at 1 MiB.
import { spawn, spawnSync } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createInterface } from 'node:readline'
import { constants, deflateRawSync } from 'node:zlib'
import t from 'tap'
import { roomEventFrame } from '../lib/protocol/event-frames.js'
import { componentAvailable } from './helpers/components.js'
import { bounded, connect, ORIGIN, sign, startServer, until } from './helpers/index.js'

// Debian's interpreter, where apt puts python3-websockets (a python3 earlier in PATH may lack it).
const PYTHON = '/usr/bin/python3'
const SCRIPT = new URL('./fixtures/strict_client.py', import.meta.url).pathname

function pythonMissing (): string | undefined {
  const probe = spawnSync(PYTHON, ['-c', 'import websockets'], { encoding: 'utf8' })
  return probe.status === 0 ? undefined : `${PYTHON} cannot import websockets (apt-get install python3-websockets)`
}

// Hex digits: about half a byte of deflate output per character, so lengths can be steered to a boundary.
const HEX = randomBytes(600_000).toString('hex')
const TRACE = 'py'
const ROOM = 'r'
const compressedLength = (frame: string) => deflateRawSync(frame, { finishFlush: constants.Z_SYNC_FLUSH }).length - 4
const frameFor = (seq: number, body: string) => roomEventFrame({ type: 'blob', room: ROOM, payloadJson: JSON.stringify({ body }), traceId: TRACE }, seq, Date.now())

/** The body length whose compressed frame is about `target` bytes (compressed length grows with it). */
function bodyLengthForCompressed (target: number, seq: number): number {
  let low = 0
  let high = HEX.length
  while (low < high) {
    const middle = (low + high) >> 1
    if (compressedLength(frameFor(seq, HEX.slice(0, middle))) < target) low = middle + 1
    else high = middle
  }
  return low
}

interface Line { extensions?: string; joined?: string; seq?: number; length?: number; sha256?: string; closed?: number; error?: string; message?: string }

function strictClient (url: string, compression: 'deflate' | 'none', expected: number) {
  const child = spawn(PYTHON, [SCRIPT, url, sign(`py-${compression}`), ORIGIN, ROOM, String(expected), compression], { stdio: ['ignore', 'pipe', 'pipe'] })
  const lines: Line[] = []
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  createInterface({ input: child.stdout }).on('line', (line) => lines.push(JSON.parse(line)))
  // 'close', not 'exit': 'exit' can come before the last lines of stdout were read (CI saw the close line missing).
  const exited = new Promise<number | null>((resolve) => child.once('close', resolve))
  return { child, lines, exited, stderr: () => stderr }
}

if (componentAvailable(t, pythonMissing(), 'strict Python client')) {
  t.test('#14 Python websockets reads every plain and every compressed frame at each length boundary and at 1 MiB', async (t) => {
    const server = await startServer(t, { presence: false, compression: { threshold: 0 }, maxPayload: 2_000_000, maxBufferedBytes: 64 * 1024 * 1024 })
    const observer = await connect(server, 'observer', { wsOptions: { perMessageDeflate: false, maxPayload: 8_000_000 } })
    const wire: string[] = []
    observer.ws.on('message', (data) => wire.push(data.toString()))
    await observer.join(ROOM)

    // Seqs 1–9 first, so every measured frame has a two-digit seq and the same envelope length.
    const bodies: string[] = []
    const send = async (body: string) => {
      bodies.push(body)
      await server.app.rooms.broadcast(ROOM, 'blob', { body }, { traceId: TRACE })
    }
    const nextSeq = () => bodies.length + 1
    const plainBodies: number[] = []
    const envelope = Buffer.byteLength(frameFor(10, ''))
    for (const boundary of [125, 65_535]) {
      for (let total = boundary - 2; total <= boundary + 3; total++) plainBodies.push(total - envelope)
    }
    const compressedBodies: number[] = []
    for (const boundary of [126, 65_536]) {
      const centre = bodyLengthForCompressed(boundary, 50)
      for (let n = centre - 12; n <= centre + 12; n++) compressedBodies.push(n)
    }
    const expected = 9 + plainBodies.length + compressedBodies.length + 1
    t.ok(expected < 100, `${expected} events, all with seqs of at most two digits after the first nine`)

    const deflating = strictClient(server.url + '/ws', 'deflate', expected)
    const plain = strictClient(server.url + '/ws', 'none', expected)
    t.teardown(() => {
      deflating.child.kill('SIGKILL')
      plain.child.kill('SIGKILL')
    })
    await until(() => [deflating, plain].every((client) => client.lines.some((line) => line.joined !== undefined || line.error !== undefined)), 'both Python clients joined')
    t.same([deflating, plain].map((client) => client.lines.find((line) => line.error !== undefined)), [undefined, undefined], 'no client failed to join')
    t.match(deflating.lines[0]?.extensions, /^permessage-deflate; server_no_context_takeover; client_no_context_takeover/, 'deflate negotiated without server context takeover')
    t.equal(plain.lines[0]?.extensions, '', 'nothing negotiated')

    for (let i = 0; i < 9; i++) await send(HEX.slice(0, 10))
    for (const length of plainBodies) await send(HEX.slice(0, length))
    for (const length of compressedBodies) await send(HEX.slice(0, length))
    await send(HEX.slice(0, 1_048_576))
    t.equal(nextSeq(), expected + 1)

    const codes = await bounded(Promise.all([deflating.exited, plain.exited]), 'both Python clients finishing', 60_000)
    t.same(codes, [0, 0], `both exit cleanly ${deflating.stderr()}${plain.stderr()}`)
    for (const client of [deflating, plain]) {
      const events = client.lines.filter((line) => line.seq !== undefined)
      t.same(events.map((line) => line.seq), bodies.map((_, i) => i + 1), 'every event, in order')
      t.ok(events.every((line, i) => line.length === bodies[i]!.length && line.sha256 === createHash('sha256').update(bodies[i]!).digest('hex')), 'every body intact')
      t.same(client.lines.at(-1), { closed: 1000 })
    }

    // What was on the wire, from the exact text of each frame (the observer's copy): every boundary was crossed.
    await until(() => wire.filter((text) => text.includes('"type":"blob"')).length === expected, 'the observer has every event')
    const frames = wire.filter((text) => text.includes('"type":"blob"'))
    const plainLengths = new Set(frames.map((text) => Buffer.byteLength(text)))
    for (const length of [125, 126, 65_535, 65_536]) t.ok(plainLengths.has(length), `a plain frame of exactly ${length} bytes`)
    t.ok(frames.some((text) => Buffer.byteLength(text) > 1_048_576), 'a plain frame past 1 MiB')
    const compressed = frames.map(compressedLength)
    for (const [below, above] of [[125, 126], [65_535, 65_536]] as const) {
      t.ok(compressed.some((length) => length <= below && length > below - 6), `a compressed frame just under ${above} bytes (${below} or less)`)
      t.ok(compressed.some((length) => length >= above && length < above + 6), `a compressed frame of ${above} bytes or just over`)
    }
    t.ok(compressed.some((length) => length > 65_536 * 4), 'a compressed frame with a 64-bit length')
  })
}

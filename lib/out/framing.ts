// Framing a room event once per publish. ws frames every send() itself (a header per socket, and for a
// string a Buffer copy per socket); a broadcast instead frames once — header and payload in one Buffer —
// and writes the same bytes to every socket where that is safe.
import { constants, deflateRawSync } from 'node:zlib'
import * as ws from 'ws'
import type { WebSocket } from 'ws'

// ws's named export `Sender` (its ESM entry has it; @types/ws does not declare it). Not `WebSocket.Sender`
// off the default export: that exists only once ws's CommonJS entry ran from the same copy, which is not
// the case beside a host that has its own ws.
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } }

const TEXT_FRAME = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false }
const DEFLATED_TEXT_FRAME = { ...TEXT_FRAME, rsv1: true }
// RFC 7692 §7.2.1: a message compressed with a sync flush, its trailing 00 00 ff ff left off.
const SYNC_FLUSH_TAIL = 4

/** One room event, framed once: `framed` for direct writes, `payload` (a view into it) for ws's own send. */
export interface FramedEvent {
  framed: Buffer
  payload: Buffer
  /** The same message compressed (RSV1), made once per publish on first need; null when it would not be smaller. */
  deflated?: Buffer | null
}

export function frameText (text: string): FramedEvent {
  const payload = Buffer.from(text)
  const [header] = Sender.frame(payload, TEXT_FRAME)
  const framed = Buffer.allocUnsafe(header!.length + payload.length)
  header!.copy(framed, 0)
  payload.copy(framed, header!.length)
  return { framed, payload: framed.subarray(header!.length) }
}

// The ws internals the direct write relies on, checked before each use.
interface WebSocketInternals {
  _socket?: { write(chunk: Buffer): boolean; cork(): void; uncork(): void }
  /** The negotiated extensions; `params` of permessage-deflate are what the server accepted. */
  _extensions?: Record<string, { params?: Record<string, unknown> } | undefined>
  _sender?: { _state: number; _queue: unknown[] }
}
const SENDER_IDLE = 0

/**
 * Writes several pre-framed events in one go (corked: one writev, no copy), unless ws's sender is busy:
 * then false, and the caller sends each through ws, which keeps the order.
 */
export function writeFramedBatch (socket: WebSocket, frames: readonly Buffer[]): boolean {
  const internals = socket as unknown as WebSocketInternals
  const sender = internals._sender!
  if (sender._state !== SENDER_IDLE || sender._queue.length !== 0) return false
  const tcp = internals._socket!
  tcp.cork()
  for (const frame of frames) tcp.write(frame)
  tcp.uncork()
  return true
}

/**
 * The event compressed once, for every socket that negotiated permessage-deflate without server context
 * takeover (each message stands alone, so one compressed frame fits them all): made on first need.
 */
export function deflatedFrame (event: FramedEvent): Buffer | null {
  if (event.deflated !== undefined) return event.deflated
  const compressed = deflateRawSync(event.payload, { finishFlush: constants.Z_SYNC_FLUSH })
  const body = compressed.subarray(0, compressed.length - SYNC_FLUSH_TAIL)
  if (body.length >= event.payload.length) return (event.deflated = null)
  const [header] = Sender.frame(body, DEFLATED_TEXT_FRAME)
  return (event.deflated = Buffer.concat([header!, body]))
}

/**
 * How room events can be written to this socket: `plain` (no extension: pre-framed bytes), `deflate`
 * (permessage-deflate with server_no_context_takeover and the full window: pre-framed bytes, compressed or
 * not), or `ws` (anything else: ws's own send, which frames and compresses per socket).
 */
export function writeMode (socket: WebSocket): 'plain' | 'deflate' | 'ws' {
  const internals = socket as unknown as WebSocketInternals
  if (internals._sender === undefined || internals._socket === undefined) return 'ws'
  if (socket.extensions === '') return 'plain'
  // `extensions` names the extension only; its accepted parameters live in ws's `_extensions` (pinned by
  // test/compression.test.ts): one compressed frame fits every socket only without context takeover and
  // with the full window.
  const params = internals._extensions?.['permessage-deflate']?.params
  if (socket.extensions !== 'permessage-deflate' || params === undefined || params.server_no_context_takeover !== true) return 'ws'
  const bits = params.server_max_window_bits
  return bits === undefined || bits === 15 ? 'deflate' : 'ws'
}

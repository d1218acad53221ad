// Framing a room event once per publish. ws frames every send() itself (a header per socket, and for a
// string a Buffer copy per socket); a broadcast instead frames once — header and payload in one Buffer —
// and writes the same bytes to every socket where that is safe.
import * as ws from 'ws'
import type { WebSocket } from 'ws'

// ws's named export `Sender` (its ESM entry has it; @types/ws does not declare it). Not `WebSocket.Sender`
// off the default export: that exists only once ws's CommonJS entry ran from the same copy, which is not
// the case beside a host that has its own ws.
const { Sender } = ws as unknown as { Sender: { frame(data: Buffer, options: object): Buffer[] } }

const TEXT_FRAME = { fin: true, opcode: 1, mask: false, readOnly: false, rsv1: false }

/** One room event, framed once: `framed` for direct writes, `payload` (a view into it) for ws's own send. */
export interface FramedEvent {
  framed: Buffer
  payload: Buffer
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
  _sender?: { _state: number; _queue: unknown[] }
}
const SENDER_IDLE = 0

/** True when the socket negotiated no extension (no permessage-deflate): a framed text frame can be written as is. */
export function canWriteFramed (socket: WebSocket): boolean {
  const internals = socket as unknown as WebSocketInternals
  return socket.extensions === '' && internals._sender !== undefined && internals._socket !== undefined
}

/**
 * Writes several pre-framed events in one go (corked: one writev, no copy), unless ws's sender is busy:
 * then false, and the caller sends each through ws, which keeps the order.
 */
export function writeFramedBatch (socket: WebSocket, events: readonly FramedEvent[]): boolean {
  const internals = socket as unknown as WebSocketInternals
  const sender = internals._sender!
  if (sender._state !== SENDER_IDLE || sender._queue.length !== 0) return false
  const tcp = internals._socket!
  tcp.cork()
  for (const event of events) tcp.write(event.framed)
  tcp.uncork()
  return true
}

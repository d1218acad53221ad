// A TCP proxy in front of each server process: the campaign cuts every connection through it (a network
// drop), points it at a restarted process's new port, and — the checker's own test — can mangle one room
// event in N on its way to a raw client (drop, duplicate, or swap with the room's next event), the bugs the
// checker must catch. Mangling reads WebSocket frames, so it only applies to uncompressed connections.
import { startProxy, type TcpProxy } from '../test/helpers/proxy.js'

export type Mangling = 'drop' | 'duplicate' | 'reorder'

export interface MangleSettings {
  mode: Mangling
  /** One room event in `every` (counted per connection). */
  every: number
  /** Cleared to stop mangling (an event held for a swap still goes out after the room's next one). */
  active: boolean
}

export interface Mangled {
  mode: Mangling
  room: string
  seq: number
}

export interface ChaosProxy extends TcpProxy {
  /** Every event mangled so far. */
  readonly mangled: Mangled[]
}

/** test/helpers/proxy.ts's proxy, mangling what the server sends when `mangle` is given. */
export async function startChaosProxy (target: number, mangle?: MangleSettings): Promise<ChaosProxy> {
  const mangled: Mangled[] = []
  const proxy = await startProxy(target, mangle === undefined ? {} : { fromServer: (write) => frameMangler(mangle, mangled, write) })
  return Object.assign(proxy, { mangled })
}

/** Passes the HTTP answer through, then whole WebSocket frames, mangling one room event in `every`. */
function frameMangler (settings: MangleSettings, mangled: Mangled[], write: (chunk: Buffer) => void): (chunk: Buffer) => void {
  let buffered: Buffer = Buffer.alloc(0)
  let inHttp = true
  let upgraded = false
  let events = 0
  let held: { frame: Buffer; room: string } | undefined
  return (chunk) => {
    buffered = buffered.length === 0 ? chunk : Buffer.concat([buffered, chunk])
    if (inHttp) {
      const end = buffered.indexOf('\r\n\r\n')
      if (end === -1) return
      // Only WebSocket connections carry frames; an HTTP answer (a publish) passes as it is.
      upgraded = buffered.subarray(0, 12).toString() === 'HTTP/1.1 101'
      write(buffered.subarray(0, end + 4))
      buffered = buffered.subarray(end + 4)
      inHttp = false
    }
    if (!upgraded) {
      if (buffered.length > 0) write(buffered)
      buffered = Buffer.alloc(0)
      return
    }
    for (;;) {
      const frame = nextFrame(buffered)
      if (frame === undefined) return
      buffered = buffered.subarray(frame.length)
      const whole = frame.bytes
      const event = frame.text === undefined ? undefined : roomEvent(frame.text)
      if (event === undefined) {
        write(whole)
        continue
      }
      if (held !== undefined && held.room === event.room && !event.stream) {
        write(whole)
        write(held.frame)
        held = undefined
        continue
      }
      if (event.stream || !settings.active || ++events % settings.every !== 0 || held !== undefined) {
        write(whole)
        continue
      }
      mangled.push({ mode: settings.mode, room: event.room, seq: event.seq })
      if (settings.mode === 'duplicate') {
        write(whole)
        write(whole)
      } else if (settings.mode === 'reorder') {
        held = { frame: Buffer.from(whole), room: event.room }
      }
    }
  }
}

function nextFrame (buffer: Buffer): { length: number; bytes: Buffer; text?: string } | undefined {
  if (buffer.length < 2) return undefined
  let length = buffer[1]! & 0x7f
  let offset = 2
  if (length === 126) {
    if (buffer.length < 4) return undefined
    length = buffer.readUInt16BE(2)
    offset = 4
  } else if (length === 127) {
    if (buffer.length < 10) return undefined
    length = Number(buffer.readBigUInt64BE(2))
    offset = 10
  }
  if (buffer.length < offset + length) return undefined
  const bytes = buffer.subarray(0, offset + length)
  // A final, uncompressed text frame (server frames are never masked).
  const text = buffer[0] === 0x81 ? bytes.subarray(offset).toString() : undefined
  return text === undefined ? { length: bytes.length, bytes } : { length: bytes.length, bytes, text }
}

/** A room event (streamed ones are passed, never mangled: their appends would be mangled with them). */
function roomEvent (text: string): { room: string; seq: number; stream: boolean } | undefined {
  const frame = JSON.parse(text) as { type: string; room?: string; seq?: number; stream?: unknown }
  return frame.type !== 'append' && typeof frame.room === 'string' && typeof frame.seq === 'number' ? { room: frame.room, seq: frame.seq, stream: frame.stream !== undefined } : undefined
}

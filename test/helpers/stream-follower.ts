// A raw protocol client's view of one room across connections (the state a client keeps to resume): its
// position and the text of each streamed event. Strict, as the wire guarantee is: a seq is never seen
// twice or skipped (but after a reset), and an append is taken only where the text ends — no overlap, no gap.
import type { Frame } from './index.js'

export class StreamFollower {
  seq = 0
  epoch = ''
  readonly texts = new Map<string, string>()
  readonly states = new Map<string, string>()
  readonly reasons = new Map<string, string | undefined>()
  readonly errors: string[] = []
  /** Appends taken, and frames that started a stream (live, replayed, in an ack). */
  appends = 0

  constructor (readonly room: string) {}

  apply (frame: Frame): void {
    const f = frame as any
    // A join's ack names its room in its payload; a `joined` frame (a server-side join) on the frame.
    if ((f.type === 'ack' && f.payload?.room === this.room) || (f.type === 'joined' && f.room === this.room)) {
      if (typeof f.payload?.seq !== 'number') return
      this.seq = f.payload.seq
      this.epoch = f.payload.epoch
      for (const given of f.payload.streams ?? []) this.start(given.stream)
      return
    }
    if (f.room !== this.room) return
    if (f.type === 'reset') {
      this.seq = f.payload.seq
      this.epoch = f.payload.epoch
      return
    }
    if (f.type === 'append') return this.append(f)
    if (typeof f.seq !== 'number') return
    if (f.seq !== this.seq + 1) this.errors.push(`seq ${f.seq} after ${this.seq}`)
    this.seq = Math.max(this.seq, f.seq)
    if (f.stream !== undefined) this.start(f.stream)
  }

  /** The resume position of this room: its seq, epoch and the unfinished streams with their text lengths. */
  position (): { seq: number; epoch: string; streams?: Record<string, number> } {
    const streams: Record<string, number> = {}
    for (const [id, state] of this.states) if (state === 'streaming') streams[id] = this.texts.get(id)!.length
    return Object.keys(streams).length === 0 ? { seq: this.seq, epoch: this.epoch } : { seq: this.seq, epoch: this.epoch, streams }
  }

  private start (stream: { id: string; text: string; state: string; reason?: string }): void {
    if (this.texts.has(stream.id)) {
      this.errors.push(`stream ${stream.id} given twice`)
      return
    }
    this.texts.set(stream.id, stream.text)
    this.states.set(stream.id, stream.state)
    this.reasons.set(stream.id, stream.reason)
  }

  private append (f: { id: string; offset: number; text: string; state?: string; reason?: string }): void {
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
      this.errors.push(`append at ${f.offset} to a text ${text.length} long`)
      return
    }
    this.appends++
    this.texts.set(f.id, text + f.text)
    if (f.state !== undefined) {
      this.states.set(f.id, f.state)
      this.reasons.set(f.id, f.reason)
    }
  }
}

/** Feeds every frame a ws receives (from now) to the follower. */
export function follow (ws: { on(event: 'message', fn: (data: Buffer) => void): unknown }, follower: StreamFollower): void {
  ws.on('message', (data) => follower.apply(JSON.parse(data.toString()) as Frame))
}

/** 1, 2, … as deterministic text tokens (some multi-byte, some with a newline or a quote). */
export function tokens (count: number): string[] {
  return Array.from({ length: count }, (_, i) => `t${i}${i % 11 === 0 ? ' ✓"\n' : i % 13 === 0 ? ' 🙂' : ' '}`)
}

/** Seeded random numbers, so a failing schedule can be replayed: the seed is in the test's name. */
export function seeded (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let x = Math.imul(a ^ (a >>> 15), 1 | a)
    x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

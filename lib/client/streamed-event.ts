// A streamed event as the client holds it: the event (type, room, seq, payload) with the text so far. It
// is the same object through reconnects and resumes, on either transport: appends are taken only where
// they continue its text (an overlap is cut, nothing is applied twice), so `text` is always a prefix of
// the writer's text and ends equal to it.

export type StreamedState = 'streaming' | 'done' | 'aborted'

interface StreamFrame {
  type: string
  room: string
  seq: number
  payload: unknown
  traceId?: string
  time?: number
  stream: { id: string; state: StreamedState; text: string; reason?: string }
}

/** What an `append` frame carries. */
export interface AppendFrame {
  id: string
  offset: number
  text: string
  state?: 'done' | 'aborted'
  reason?: string
}

type StreamedListeners = { append: Set<(delta: string) => void>; end: Set<(state: StreamedState) => void> }

export class StreamedEvent<P = unknown> {
  readonly type: string
  readonly room: string
  readonly seq: number
  readonly payload: P
  readonly traceId: string | undefined
  readonly time: number | undefined
  readonly id: string
  text: string
  state: StreamedState
  /** Why it was aborted, when it was: the writer's reason, `idle`, `shutdown`, `lost` or `unknown stream`. */
  reason: string | undefined
  private readonly listeners: StreamedListeners = { append: new Set(), end: new Set() }

  constructor (frame: StreamFrame, private readonly report: (err: unknown, what: string) => void) {
    this.type = frame.type
    this.room = frame.room
    this.seq = frame.seq
    this.payload = frame.payload as P
    this.traceId = frame.traceId
    this.time = frame.time
    this.id = frame.stream.id
    this.text = frame.stream.text
    this.state = frame.stream.state
    this.reason = frame.stream.reason
  }

  /** `append`: each new piece of text, in order. `end`: once, with `done` or `aborted`. Returns a remover. */
  on (event: 'append', listener: (delta: string) => void): () => void
  on (event: 'end', listener: (state: StreamedState) => void): () => void
  on (event: 'append' | 'end', listener: (arg: any) => void): () => void {
    const set = this.listeners[event] as Set<(arg: any) => void>
    set.add(listener)
    return () => set.delete(listener)
  }

  /** Takes an append (or this stream's frame seen again, with its text so far); true once it has ended. */
  apply (append: AppendFrame): boolean {
    if (this.state !== 'streaming') return true
    const skip = this.text.length - append.offset
    if (skip < 0) return false // past the end of what this client has: never sent by the server
    const delta = append.text.slice(skip)
    if (delta !== '') {
      this.text += delta
      this.fire('append', delta)
    }
    if (append.state !== undefined) {
      this.state = append.state
      this.reason = append.reason
      this.fire('end', append.state)
      return true
    }
    return false
  }

  private fire (event: 'append' | 'end', arg: string): void {
    for (const listener of [...this.listeners[event]] as Array<(arg: string) => void>) {
      try {
        listener(arg)
      } catch (err) {
        this.report(err, event)
      }
    }
  }
}

/** Whether a frame is a streamed event (its `stream` object last). */
export function isStreamFrame (frame: { stream?: unknown; room?: unknown; seq?: unknown }): frame is StreamFrame {
  const stream = frame.stream as { id?: unknown; text?: unknown } | undefined
  return typeof stream === 'object' && stream !== null && typeof stream.id === 'string' && typeof stream.text === 'string' && typeof frame.room === 'string' && typeof frame.seq === 'number'
}

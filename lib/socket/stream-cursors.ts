// Per socket: where it stands in each open streamed event it was given, so every append reaches it once,
// in order, with no gap — whichever way it got the stream (live, a replay, a joiner's snapshot, a
// resumed tail) and however far ahead of this process's live appends that was. A socket that is behind
// on its writes gets a stream's appends merged into one larger delta instead of one frame per append.
import { appendFrame, type StreamAppend } from '../protocol/stream-frames.js'

interface Cursor {
  room: string
  seq: number
  /** UTF-16 code units of the stream's text this socket was sent (or holds in `pending`). */
  length: number
  /** Text held back while the socket is behind, sent as one append once it has caught up. */
  pending: string | undefined
  pendingBytes: number
  end: Pick<StreamAppend, 'state' | 'reason'> | undefined
}

/** What to write for an append: the shared frame, a frame made for this socket (trimmed), held, or nothing. */
export type AppendVerdict = { write: 'shared' } | { write: 'own'; frame: string } | { write: 'held'; bytes: number } | { write: 'none' }

export class StreamCursors {
  private cursors: Map<string, Cursor> | undefined
  /** Bytes of text held back across this socket's streams. */
  heldBytes = 0

  /** The socket was given the stream's text up to `length`. */
  open (id: string, room: string, seq: number, length: number): void {
    const cursors = (this.cursors ??= new Map())
    const cursor = cursors.get(id)
    if (cursor === undefined) cursors.set(id, { room, seq, length, pending: undefined, pendingBytes: 0, end: undefined })
    else if (length > cursor.length && cursor.pending === undefined) cursor.length = length
  }

  /** The room was left or reset: its streams are no longer followed here. */
  leave (room: string): void {
    if (this.cursors === undefined) return
    for (const [id, cursor] of this.cursors) if (cursor.room === room) this.drop(id, cursor)
  }

  /**
   * Decides what an append means for this socket. `behind`: the socket has more unsent bytes than it should
   * take more frames on; the append's text then waits, merged with the stream's other held text.
   */
  take (append: StreamAppend, behind: boolean): AppendVerdict {
    const cursor = this.cursors?.get(append.id)
    if (cursor === undefined) return { write: 'none' }
    const skip = cursor.length - append.offset
    // A gap cannot happen (every process fills its own from the store before it fans out): never write one.
    if (skip < 0 || (skip >= append.text.length && append.state === undefined)) return { write: 'none' }
    const text = skip === 0 ? append.text : append.text.slice(skip)
    if (behind || cursor.pending !== undefined) {
      const bytes = Buffer.byteLength(text)
      cursor.pending = (cursor.pending ?? '') + text
      cursor.pendingBytes += bytes
      this.heldBytes += bytes
      cursor.length += text.length
      if (append.state !== undefined) cursor.end = { state: append.state, reason: append.reason }
      return { write: 'held', bytes }
    }
    const offset = cursor.length
    cursor.length += text.length
    if (append.state !== undefined) this.cursors!.delete(append.id)
    return skip === 0 ? { write: 'shared' } : { write: 'own', frame: appendFrame({ ...append, offset, text }) }
  }

  /** The held text of each stream, as one append frame per stream (its end with it); the streams that ended go. */
  * release (): Generator<{ room: string; id: string; length: number; ended: boolean; frame: string }> {
    if (this.cursors === undefined) return
    for (const [id, cursor] of this.cursors) {
      if (cursor.pending === undefined) continue
      const text = cursor.pending
      cursor.pending = undefined
      this.heldBytes -= cursor.pendingBytes
      cursor.pendingBytes = 0
      const ended = cursor.end !== undefined
      const frame = appendFrame({ room: cursor.room, seq: cursor.seq, id, offset: cursor.length - text.length, text, ...cursor.end })
      if (ended) this.cursors.delete(id)
      yield { room: cursor.room, id, length: cursor.length, ended, frame }
    }
  }

  private drop (id: string, cursor: Cursor): void {
    this.heldBytes -= cursor.pendingBytes
    this.cursors!.delete(id)
  }
}

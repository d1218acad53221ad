// Streamed events on the wire: the `stream` object a streamed event's frame ends with, and the `append`
// frames that carry its text. Built by hand, like room events, with a fixed key order. The `stream`
// object comes last in its frame, so it can be found and replaced without parsing the payload (JSON
// escapes every quote inside a string, so `,"stream":{"id":` cannot occur in one).

export type StreamState = 'streaming' | 'done' | 'aborted'
/** A streamed event's text and state, as its event frame carries them. */
export interface StreamInfo {
  id: string
  state: StreamState
  text: string
  reason?: string
}
const STREAM_MARK = ',"stream":{"id":'

/** The stream object of a streamed event's frame; undefined for any other frame (one character looked at). */
export function streamOfFrame (frame: string): StreamInfo | undefined {
  if (frame.charCodeAt(frame.length - 2) !== 125) return undefined
  const at = frame.lastIndexOf(STREAM_MARK)
  return at === -1 ? undefined : JSON.parse(frame.slice(at + 10, -1)) as StreamInfo
}

/** A streamed event's frame carrying its current text and state (history, replay, a joiner's snapshot). */
export function withStream (frame: string, stream: StreamInfo): string {
  const at = frame.lastIndexOf(STREAM_MARK)
  const info = stream.reason === undefined ? { id: stream.id, state: stream.state, text: stream.text } : { id: stream.id, state: stream.state, text: stream.text, reason: stream.reason }
  return `${frame.slice(0, at)},"stream":${JSON.stringify(info)}}`
}

/** What a stream's writer sends for one batch of text (and, last, its final state): one frame per batch, serialized once. */
export interface StreamAppend {
  room: string
  /** The streamed event's seq. */
  seq: number
  id: string
  /** Where `text` starts in the stream's text, in UTF-16 code units. */
  offset: number
  text: string
  state?: 'done' | 'aborted'
  reason?: string
}

export function appendFrame (append: StreamAppend): string {
  const { room, seq, id, offset, text, state, reason } = append
  const end = state === undefined ? '' : reason === undefined ? `,"state":"${state}"` : `,"state":"${state}","reason":${JSON.stringify(reason)}`
  return `{"type":"append","room":${JSON.stringify(room)},"seq":${seq},"id":${JSON.stringify(id)},"offset":${offset},"text":${JSON.stringify(text)}${end}}`
}

/** An append frame as another process published it (Redis, PostgreSQL); throws on anything else. */
export function parseAppendFrame (frame: string): StreamAppend {
  const value = JSON.parse(frame) as Partial<StreamAppend> & { type?: unknown }
  if (value.type !== 'append' || typeof value.room !== 'string' || typeof value.id !== 'string' || typeof value.text !== 'string' ||
    !Number.isSafeInteger(value.seq) || !Number.isSafeInteger(value.offset) || (value.offset as number) < 0 ||
    (value.state !== undefined && value.state !== 'done' && value.state !== 'aborted')) throw new Error('malformed append frame')
  return value as StreamAppend
}

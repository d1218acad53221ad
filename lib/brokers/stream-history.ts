// History's streamed events as they are now, for the brokers that store a stream apart from its event
// (Redis, PostgreSQL): the event's frame carries the text and state read from the stream's own record.
import { streamOfFrame, withStream, type StreamInfo } from '../protocol/stream-frames.js'
import type { HistoryEvent, StoredStream } from './broker.js'

/**
 * Replaces each streamed event's frame with one that carries its stream as `read` finds it (one read for
 * all of them). A stream whose record is gone (expired, or lost with its backend) shows aborted, `lost`.
 */
export async function withCurrentStreams (events: HistoryEvent[], read: (ids: string[]) => Promise<StoredStream[]>): Promise<void> {
  const streamed = new Map<string, HistoryEvent>()
  for (const event of events) {
    const info = streamOfFrame(event.frame)
    if (info !== undefined) streamed.set(info.id, event)
  }
  if (streamed.size === 0) return
  const found = new Map((await read([...streamed.keys()])).map((stored) => [stored.info.id, stored]))
  for (const [id, event] of streamed) {
    const info: StreamInfo = found.get(id)?.info ?? { id, state: 'aborted', text: '', reason: 'lost' }
    event.frame = withStream(event.frame, info)
    event.stream = { id, length: info.text.length, open: info.state === 'streaming' }
  }
}

// The Redis broker's streamed events: each stream's state in a hash and its text in a string (APPEND per
// batch: no copy of the whole text per append), written and published by one script so that what is
// published is always stored first. History and the readers get the frame with the text as it is now.
import { StreamLimitError } from '../../config/errors.js'
import { withStream, type StreamAppend, type StreamInfo } from '../../protocol/stream-frames.js'
import { withCurrentStreams } from '../stream-history.js'
import type { HistoryEvent, StoredStream } from '../broker.js'
import type { RedisKeys } from './keys.js'
import { APPEND_STREAM, READ_STREAMS } from './scripts.js'
import type { Topology } from './topology.js'

/** An ended stream's keys stay at least this long after its last append (or as long as its room's history). */
const MIN_STREAM_TTL_MS = 600_000
/** Marks an append on a room's channel (room event messages start with a connection id or nothing). */
export const APPEND_MARK = '\u0001'

type Run = <T>(script: string, keys: string[], args: Array<string | number>) => Promise<T>
type StreamRow = [id: string, seq: string, frame: string, state: string, reason: string, at: string, text: string]

export class RedisStreams {
  constructor (
    private readonly keys: RedisKeys,
    private readonly topology: Topology,
    private readonly run: Run,
    private readonly historyFor: (room: string) => { maxEvents: number; maxAgeMs: number }
  ) {}

  ttl (room: string): number {
    return Math.max(MIN_STREAM_TTL_MS, this.historyFor(room).maxAgeMs) + 1000
  }

  /** The keys PUBLISH_STREAM takes after meta and history. */
  publishKeys (room: string, id: string): string[] {
    return [this.keys.room(room, 'streams'), this.streamKey(room, id), this.textKey(room, id)]
  }

  /** PUBLISH_STREAM's answer when the room has its limit of open streams. */
  refused (room: string, seq: number, maxOpen: number): void {
    if (seq === -1) throw new StreamLimitError(`room "${room}"`, maxOpen)
  }

  async append (append: StreamAppend, frame: string): Promise<'ok' | 'conflict' | 'gone'> {
    const { room, id } = append
    return this.run<'ok' | 'conflict' | 'gone'>(APPEND_STREAM, [this.streamKey(room, id), this.textKey(room, id), this.keys.room(room, 'streams'), this.keys.room(room, 'ended')], [
      append.offset, append.text, append.text.length, append.state ?? '', append.reason ?? '', this.topology.roomChannel(room), this.topology.publishCommand,
      APPEND_MARK + frame, this.ttl(room), id, Math.max(1, this.historyFor(room).maxEvents), this.keys.roomPrefix(room), Date.now(),
    ])
  }

  async read (room: string, id: string): Promise<StoredStream | undefined> {
    const [row] = await this.run<StreamRow[]>(READ_STREAMS, [this.keys.room(room, 'streams')], [this.keys.roomPrefix(room), id])
    return row === undefined ? undefined : stored(row)
  }

  async open (room: string): Promise<StoredStream[]> {
    const rows = await this.run<StreamRow[]>(READ_STREAMS, [this.keys.room(room, 'streams')], [this.keys.roomPrefix(room), ''])
    return rows.map(stored).filter((stream) => stream.info.state === 'streaming').sort((a, b) => a.seq - b.seq)
  }

  /** History's streamed events with their text and state as they are now (one read for all of them). */
  patch (room: string, events: HistoryEvent[]): Promise<void> {
    return withCurrentStreams(events, async (ids) => (await this.run<StreamRow[]>(READ_STREAMS, [this.keys.room(room, 'streams')], [this.keys.roomPrefix(room), ...ids])).map(stored))
  }

  private streamKey (room: string, id: string): string {
    return this.keys.stream(room, 'stream', id)
  }

  private textKey (room: string, id: string): string {
    return this.keys.stream(room, 'text', id)
  }
}

function stored ([id, seq, frame, state, reason, at, text]: StreamRow): StoredStream {
  const info: StreamInfo = reason === '' ? { id, state: state as StreamInfo['state'], text } : { id, state: state as StreamInfo['state'], text, reason }
  return { seq: Number(seq), frame: withStream(frame, info), info, updatedAt: Number(at) }
}

// The Postgres broker's streamed events: a row per stream (its state and length) and a row per append
// (its text), written with the announcement in one function call, so what is announced is always stored
// first. History and the readers get the frame with the text as it is now.
import { StreamLimitError } from '../../config/errors.js'
import { withStream, type StreamAppend, type StreamInfo } from '../../protocol/stream-frames.js'
import { withCurrentStreams } from '../stream-history.js'
import type { HistoryEvent, StoredStream } from '../broker.js'
import { eventChannel } from './notifications.js'

/** Marks an append among a shard's room event notifications (those start with a room name). */
export const APPEND_MARK = '\u0001'
/**
 * Text per append: its frame must fit a notification (MAX_NOTIFY_BYTES) whatever it holds — at worst six
 * bytes per code unit (JSON escapes), plus the room and the frame's keys.
 */
export const MAX_APPEND_UNITS = 1000

type Sql = <R>(text: string, values: unknown[]) => Promise<R[]>
interface StreamRow { id: string; seq: string; frame: string; state: string; reason: string | null; at: string; text: string }

export class PostgresStreams {
  constructor (
    private readonly schema: string,
    private readonly sql: Sql,
    private readonly table: (name: string) => string
  ) {}

  /** publish_stream's extra arguments after publish()'s. */
  publishArguments (stream: { id: string; maxOpen: number; idleMs: number }): unknown[] {
    return [stream.id, stream.maxOpen, 2 * stream.idleMs]
  }

  refused (room: string, seq: number, maxOpen: number): void {
    if (seq === -1) throw new StreamLimitError(`room "${room}"`, maxOpen)
  }

  async append (append: StreamAppend, frame: string): Promise<'ok' | 'conflict' | 'gone'> {
    const [row] = await this.sql<{ outcome: 'ok' | 'conflict' | 'gone' }>(`SELECT ${this.table('append_stream')}($1, $2, $3, $4, $5, $6, $7, $8, $9) AS outcome`, [
      append.room, append.id, append.offset, append.text, append.text.length, append.state ?? null, append.reason ?? null,
      eventChannel(this.schema, append.room), APPEND_MARK + frame,
    ])
    return row!.outcome
  }

  async read (room: string, id: string): Promise<StoredStream | undefined> {
    const [row] = await this.select(room, 's.id = $2', [id])
    return row === undefined ? undefined : stored(row)
  }

  async open (room: string): Promise<StoredStream[]> {
    return (await this.select(room, 's.state = \'streaming\'', [])).map(stored).sort((a, b) => a.seq - b.seq)
  }

  /** History's streamed events with their text and state as they are now (one statement for all of them). */
  patch (room: string, events: HistoryEvent[]): Promise<void> {
    return withCurrentStreams(events, async (ids) => (await this.select(room, 's.id = ANY($2::text[])', [ids])).map(stored))
  }

  /**
   * The cleaner's part: ended streams whose event left history go, with their text; so do open streams no
   * writer touched for a day, and streams of rooms that are gone. At most `batch` per statement.
   */
  async cleanup (batch: number): Promise<void> {
    await this.sql(`WITH gone AS (
        DELETE FROM ${this.table('streams')} WHERE (room, id) IN (
          SELECT s.room, s.id FROM ${this.table('streams')} s WHERE
            (s.state <> 'streaming' AND NOT EXISTS (SELECT 1 FROM ${this.table('events')} e WHERE e.room = s.room AND e.seq = s.seq))
            OR s.updated_at < clock_timestamp() - interval '1 day'
            OR NOT EXISTS (SELECT 1 FROM ${this.table('rooms')} r WHERE r.room = s.room)
          LIMIT ${batch})
        RETURNING room, id)
      DELETE FROM ${this.table('stream_chunks')} c USING gone WHERE c.room = gone.room AND c.id = gone.id`, [])
  }

  /** Rows and their text in one statement (one snapshot: the text and the state agree). */
  private select (room: string, where: string, values: unknown[]): Promise<StreamRow[]> {
    return this.sql<StreamRow>(`SELECT s.id, s.seq, s.frame, s.state, s.reason, (extract(epoch FROM s.updated_at) * 1000)::bigint AS at,
        coalesce((SELECT string_agg(c.text, '' ORDER BY c."offset") FROM ${this.table('stream_chunks')} c WHERE c.room = s.room AND c.id = s.id), '') AS text
      FROM ${this.table('streams')} s WHERE s.room = $1 AND ${where}`, [room, ...values])
  }
}

function stored (row: StreamRow): StoredStream {
  const state = row.state as StreamInfo['state']
  const info: StreamInfo = row.reason === null ? { id: row.id, state, text: row.text } : { id: row.id, state, text: row.text, reason: row.reason }
  return { seq: Number(row.seq), frame: withStream(row.frame, info), info, updatedAt: Number(row.at) }
}

// The outbox: `broadcast(…, { transaction })` on the memory or Redis broker writes the event into the host's
// PostgreSQL in the host's transaction, and one relay (whichever process holds the session lock) publishes
// committed rows through the broker, each room in commit order, each row once: its id (or the host's key)
// is the publish's idempotency key, so a relay killed between a publish and its bookkeeping publishes the
// row again as a no-op. `position` in a transaction is the seq the relay gave the last row that
// transaction sees.
import { BrokerTimeoutError, InvalidArgumentError, InvalidOptionError } from '../config/errors.js'
import type { EventBroker, PublishRequest, RoomPosition, SqlTransaction } from './broker.js'
import { backoff } from './ordered-streams.js'
import { outboxSql } from './postgres/outbox-schema.js'
import { SCHEMA_NAME } from './postgres/schema.js'
import { inTransaction, withDeadline } from './postgres/sql.js'

/** What the outbox needs of a `pg` Pool (no import of pg here: the host brings its own). */
export interface OutboxPool {
  query(config: { text: string; values?: unknown[] }): Promise<{ rows: any[] }>
  connect(): Promise<OutboxClient>
}

export interface OutboxClient extends SqlTransaction {
  release(destroy?: boolean | Error): void
  on(event: 'notification', listener: (message: { channel: string }) => void): unknown
  on(event: 'error' | 'end', listener: (err?: Error) => void): unknown
}

export interface OutboxOptions {
  /** The host's `pg` Pool on the database its transactions run on. The relay holds one of its clients. */
  pool: OutboxPool
  /** The schema of the outbox tables (default `fastify_rooms`). */
  schema?: string
  /** Relayed rows are kept this long, for `position` in a transaction that began before they were relayed (default 600000). */
  retainMs?: number
}

interface PendingRow { id: string; room: string; type: string; payload: string; trace_id: string; except_id: string | null; idempotency_key: string | null }

const BATCH = 500

export class Outbox {
  private readonly schema: string
  private readonly retainMs: number
  private relayClient: OutboxClient | undefined
  private leading = false
  private running: Promise<void> | undefined
  private again = false
  private closed = false
  private readonly timers: NodeJS.Timeout[] = []

  constructor (
    private readonly options: OutboxOptions,
    private readonly broker: Pick<EventBroker, 'publish' | 'position'>,
    private readonly log: { warn(obj: object, msg: string): void; info(msg: string): void },
    private readonly timing: { commandTimeoutMs: number; checkIntervalMs: number } = { commandTimeoutMs: 2000, checkIntervalMs: 1000 }
  ) {
    this.schema = options.schema ?? 'fastify_rooms'
    this.retainMs = options.retainMs ?? 600_000
  }

  private table (name: string): string {
    return `"${this.schema}".${name}`
  }

  private get channel (): string {
    return `${this.schema}_outbox`
  }

  async start (): Promise<void> {
    const client = await withDeadline(this.options.pool.connect(), 5000, 'connecting to the outbox\'s database')
    try {
      await client.query({ text: 'BEGIN' })
      await client.query({ text: 'SELECT pg_advisory_xact_lock(hashtext($1))', values: [`fastify-rooms:${this.schema}`] })
      await client.query({ text: outboxSql(this.schema) })
      await client.query({ text: 'COMMIT' })
      client.release()
    } catch (err) {
      client.release(true)
      throw err
    }
    await this.hold()
    const tick = setInterval(() => this.wake(), this.timing.checkIntervalMs)
    tick.unref()
    const sweep = setInterval(() => { this.sweep().catch((err: unknown) => this.log.warn({ err }, 'fastify-rooms: outbox cleanup failed; it runs again')) }, Math.min(60_000, this.retainMs))
    sweep.unref()
    this.timers.push(tick, sweep)
    this.wake()
  }

  /**
   * A client of the pool kept for the relay: LISTEN for wake-ups, and the session lock that makes its
   * process the one relay (released by PostgreSQL when that process or its connection dies).
   */
  private async hold (): Promise<void> {
    const client = await this.options.pool.connect()
    const lost = () => {
      if (this.relayClient !== client) return
      this.relayClient = undefined
      this.leading = false
      try { client.release(true) } catch { /* released already */ }
    }
    client.on('error', lost)
    client.on('end', lost)
    client.on('notification', (message) => { if (message.channel === this.channel) this.wake() })
    try {
      await client.query({ text: `LISTEN "${this.channel}"` })
    } catch (err) {
      client.release(true)
      throw err
    }
    this.relayClient = client
  }

  /** Writes the event in the caller's transaction; the relay publishes it after COMMIT. */
  async write (transaction: SqlTransaction, request: PublishRequest): Promise<{ id: string }> {
    const rows = await inTransaction(transaction, {
      text: `SELECT * FROM ${this.table('outbox_write')}($1, $2, $3, $4, $5, $6, $7, $8)`,
      values: [request.room, request.type, request.payloadJson, request.traceId, request.except ?? null, request.idempotencyKey ?? null, this.channel, this.timing.commandTimeoutMs],
    }, this.schema)
    return { id: String((rows[0] as { id: string }).id) }
  }

  /**
   * The broker position of the last outbox event of `room` the caller's REPEATABLE READ transaction sees,
   * once the relay has published it (bounded by the command timeout); seq 0 of the room's epoch when it
   * sees none.
   */
  async positionIn (transaction: SqlTransaction, room: string): Promise<RoomPosition> {
    const [row] = await inTransaction(transaction, { text: `SELECT pos FROM ${this.table('outbox_rooms')} WHERE room = $1`, values: [room] }, this.schema, true) as Array<{ pos: string }>
    if (row === undefined) return { seq: 0, epoch: (await this.broker.position(room)).epoch }
    const deadline = Date.now() + this.timing.commandTimeoutMs
    for (let attempt = 0; ; attempt++) {
      const { rows } = await this.options.pool.query({ text: `SELECT seq, epoch FROM ${this.table('outbox')} WHERE room = $1 AND pos = $2`, values: [room, row.pos] })
      const relayed = rows[0] as { seq: string | null; epoch: string | null } | undefined
      if (relayed === undefined) throw new InvalidArgumentError('transaction', `began before the outbox's retained rows (retainMs ${this.retainMs}): start a new one`)
      if (relayed.seq !== null) return { seq: Number(relayed.seq), epoch: relayed.epoch! }
      if (Date.now() > deadline) throw new BrokerTimeoutError(`the outbox relay has not published "${room}"'s committed events yet`)
      this.wake()
      await backoff(Math.min(attempt, 2))
    }
  }

  /** Runs the relay now (or once more after the run in progress). */
  wake (): void {
    if (this.closed) return
    if (this.running !== undefined) {
      this.again = true
      return
    }
    this.running = (async () => {
      do {
        this.again = false
        try {
          if (await this.lead()) this.again = (await this.relay()) || this.again
        } catch (err) {
          this.log.warn({ err }, 'fastify-rooms: the outbox relay failed; it tries again')
        }
      } while (this.again && !this.closed)
    })().finally(() => { this.running = undefined })
  }

  /** Whether this process is the relay: it holds the session lock, or takes it now. */
  private async lead (): Promise<boolean> {
    if (this.relayClient === undefined) await this.hold()
    if (this.leading) return true
    const { rows } = await this.relayClient!.query({ text: 'SELECT pg_try_advisory_lock(hashtext($1)) AS taken', values: [`fastify-rooms-outbox:${this.schema}`] })
    this.leading = (rows[0] as { taken: boolean }).taken
    if (this.leading) this.log.info('fastify-rooms: this process relays the outbox')
    return this.leading
  }

  /** One batch: each room's rows in order, rooms side by side. True when there may be more. */
  private async relay (): Promise<boolean> {
    const { rows } = await this.options.pool.query({
      text: `SELECT id, room, type, payload, trace_id, except_id, idempotency_key FROM ${this.table('outbox')} WHERE relayed_at IS NULL ORDER BY id LIMIT ${BATCH}`,
    })
    const byRoom = new Map<string, PendingRow[]>()
    for (const row of rows as PendingRow[]) {
      const list = byRoom.get(row.room)
      if (list === undefined) byRoom.set(row.room, [row])
      else list.push(row)
    }
    await Promise.all([...byRoom.values()].map((list) => this.relayRoom(list)))
    return rows.length === BATCH
  }

  /** Stops at the first failure: the room's next rows must not overtake it. */
  private async relayRoom (rows: PendingRow[]): Promise<void> {
    for (const row of rows) {
      if (this.closed || !this.leading) return
      const position = await this.broker.publish({
        room: row.room,
        type: row.type,
        payloadJson: row.payload,
        traceId: row.trace_id,
        except: row.except_id ?? undefined,
        idempotencyKey: row.idempotency_key ?? `outbox:${row.id}`,
      })
      await this.options.pool.query({ text: `UPDATE ${this.table('outbox')} SET relayed_at = clock_timestamp(), seq = $2, epoch = $3 WHERE id = $1`, values: [row.id, position.seq, position.epoch] })
    }
  }

  /** Relayed rows past retainMs, in batches; a room's counter once it has no rows left for a day. */
  private async sweep (): Promise<void> {
    await this.options.pool.query({
      text: `DELETE FROM ${this.table('outbox')} WHERE id IN (SELECT id FROM ${this.table('outbox')} WHERE relayed_at < clock_timestamp() - $1 * interval '1 millisecond' LIMIT 1000)`,
      values: [this.retainMs],
    })
    await this.options.pool.query({
      text: `DELETE FROM ${this.table('outbox_rooms')} r WHERE r.room IN (SELECT x.room FROM ${this.table('outbox_rooms')} x
        WHERE x.updated_at < clock_timestamp() - interval '1 day' AND NOT EXISTS (SELECT 1 FROM ${this.table('outbox')} o WHERE o.room = x.room) LIMIT 1000)`,
    })
  }

  async close (): Promise<void> {
    this.closed = true
    for (const timer of this.timers) clearInterval(timer)
    await this.running?.catch(() => {})
    const client = this.relayClient
    this.relayClient = undefined
    // Releasing destroys the session: its lock goes with it, and another process takes over the relay.
    try { client?.release(true) } catch { /* released already */ }
  }
}

/** Checks the `outbox` option at register. */
export function checkOutboxOptions (outbox: unknown): OutboxOptions | undefined {
  if (outbox === undefined) return undefined
  const value = outbox as Partial<OutboxOptions> | null
  if (typeof value !== 'object' || value === null || typeof value.pool?.query !== 'function' || typeof value.pool.connect !== 'function') {
    throw new InvalidOptionError('outbox', 'must be { pool } with a pg Pool')
  }
  if (value.schema !== undefined && (typeof value.schema !== 'string' || !SCHEMA_NAME.test(value.schema))) throw new InvalidOptionError('outbox.schema', 'must be 1 to 40 of [a-z0-9_], not starting with a digit')
  if (value.retainMs !== undefined && (!Number.isInteger(value.retainMs) || value.retainMs < 1000)) throw new InvalidOptionError('outbox.retainMs', 'must be an integer >= 1000')
  return value as OutboxOptions
}

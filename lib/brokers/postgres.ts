// The Postgres broker: many processes share rooms through one PostgreSQL (>= 13) and nothing else. A
// publish is one function call that can run inside the host's own transaction (postgres/schema.ts); a
// notification wakes the processes whose rooms it concerns, and they go by seq: a lost notification or a
// dropped listener connection is caught up from the events table (a periodic position check, a catch-up
// after every reconnect), never lost. Presence entries belong to a process whose heartbeat row expires
// when it dies, and survivors remove them.
// Past 300 lines: the connections and their recovery, the SQL callers, presence and its reaping, and the
// cleaner stay together here, as in the Redis broker; the SQL is postgres/schema.ts, what travels on the
// channels postgres/notifications.ts.
import { randomUUID } from 'node:crypto'
import pg from 'pg'
import { BrokerError, InvalidOptionError } from '../config/errors.js'
import { preciseNow } from '../observability/metrics.js'
import { roomEventFrameParts } from '../protocol/event-frames.js'
import { parseAppendFrame, type StreamAppend } from '../protocol/stream-frames.js'
import type { Broker, BrokerDelivery, BrokerSettings, HistorySlice, MembershipChange, PresenceSample, PublishRequest, RoomPosition, SqlTransaction, StoredStream } from './broker.js'
import { backoff, OrderedStreams, type LiveEvent } from './ordered-streams.js'
import { deliverUserMessage, encodeUserMessage, type UserMessage } from './user-messages.js'
import { eventChannel, parseEventNotification, roomShard, storedMessageId, usersChannel } from './postgres/notifications.js'
import { DELIVERY_WINDOW, MAX_NOTIFY_BYTES, SCHEMA_NAME, schemaSql } from './postgres/schema.js'
import { APPEND_MARK, MAX_APPEND_UNITS, PostgresStreams } from './postgres/streams.js'
import { inTransaction, withDeadline, wrap } from './postgres/sql.js'
import { PublishLanes, type PublishArguments } from './postgres/publish-lanes.js'

export interface PostgresBrokerOptions {
  /** `postgres://user:password@host:port/database`; or pass `pool`. */
  connectionString?: string
  /**
   * A `pg` Pool of yours: the broker runs its statements on it and holds one of its clients for LISTEN
   * (never ending the pool). Its `connectionTimeoutMillis` bounds the wait for a free client.
   */
  pool?: pg.Pool
  /**
   * Where LISTEN connects, when the pool goes through PgBouncer in transaction mode (which cannot carry
   * LISTEN): PostgreSQL itself. Default: the pool's own server.
   */
  listenConnectionString?: string
  /** The schema of the broker's tables and functions, made at start if missing (default `fastify_rooms`). */
  schema?: string
  /** Connections of the broker's own pool (default 10; not with `pool`). */
  poolSize?: number
  /** A process that stops refreshing its heartbeat for this long is dead; survivors remove its members (default 15000). */
  processTtlMs?: number
  /** A room's seq and epoch go this long after its last event, once it carried a host event (default 24 h). */
  roomTtlMs?: number
  /** A room that only ever carried presence (or was only read) goes this long after its last event (default 120000). */
  idleRoomTtlMs?: number
  /** How long `register` waits for PostgreSQL at start (default 5000). */
  connectTimeoutMs?: number
  /**
   * A statement PostgreSQL has not answered by then fails (default 2000): frames answer `unavailable`,
   * `broadcast` rejects with FST_ROOMS_BROKER_TIMEOUT. It also bounds how long a publish waits for a room
   * another transaction holds.
   */
  commandTimeoutMs?: number
  /** How often each process compares its rooms' positions with the database, for a lost notification (default 1000). */
  checkIntervalMs?: number
  /** How often each process deletes expired rows, in small batches (default 10000). */
  cleanupIntervalMs?: number
}

interface PositionRow { seq: string; epoch: string }

class PostgresBroker implements Broker {
  readonly name = 'postgres'
  private readonly schema: string
  private readonly table: (name: string) => string
  /** Streamed events' rows and text (postgres/streams.ts). */
  private readonly roomStreams: PostgresStreams
  private readonly processId = randomUUID()
  private readonly processTtlMs: number
  private readonly roomTtlMs: number
  private readonly idleRoomTtlMs: number
  private readonly commandTimeoutMs: number
  private idempotencyWindowMs = 300_000
  private pool!: pg.Pool
  private ownsPool = false
  private listener: pg.Client | pg.PoolClient | undefined
  private reconnecting = false
  private delivery: BrokerDelivery | undefined
  private historyLimits: BrokerSettings['history'] = { maxEvents: 1000, maxAgeMs: 300_000, maxBytes: Infinity }
  private historyFor: (room: string) => { maxEvents: number; maxAgeMs: number } = () => this.historyLimits
  private readonly streams: OrderedStreams
  private readonly lanes: PublishLanes
  /** Rooms subscribed per event shard, and the LISTEN of each shard with rooms. */
  private readonly shards = new Map<number, { rooms: number; listening: Promise<void> }>()
  /** This process's presence entries, to restore them after the database lost them or survivors removed them. room → connectionId → entry */
  private readonly localPresence = new Map<string, Map<string, { userId: string; info: string | null }>>()
  /** Notifications handled one at a time while one needs a read (a large frame or user message): order is kept. */
  private notificationChain: Promise<void> | undefined
  private listenerChain: Promise<unknown> = Promise.resolve()
  private readonly timers: NodeJS.Timeout[] = []
  private closed = false
  private everReady = false
  private down = false
  private roomsKeptAt = 0
  private log: BrokerSettings['log']

  constructor (private readonly options: PostgresBrokerOptions) {
    if (options.connectionString === undefined && options.pool === undefined) throw new TypeError('postgresBroker: pass { connectionString } or { pool }')
    this.schema = options.schema ?? 'fastify_rooms'
    if (!SCHEMA_NAME.test(this.schema)) throw new InvalidOptionError('schema', 'must be 1 to 40 of [a-z0-9_], not starting with a digit')
    this.table = (name) => `"${this.schema}".${name}`
    this.roomStreams = new PostgresStreams(this.schema, (text, values) => this.sql(text, values), this.table)
    this.processTtlMs = options.processTtlMs ?? 15_000
    this.roomTtlMs = options.roomTtlMs ?? 86_400_000
    this.idleRoomTtlMs = Math.min(options.idleRoomTtlMs ?? 120_000, this.roomTtlMs)
    this.commandTimeoutMs = options.commandTimeoutMs ?? 2000
    // Lanes leave a connection of the pool to everything else (reads, presence, the cleaner).
    this.lanes = new PublishLanes(Math.min(4, Math.max(1, (options.poolSize ?? 10) - 2)), (batch) => this.runPublishes(batch))
    this.streams = new OrderedStreams((room, after) => this.read(room, after, true), () => this.delivery, () => this.closed, (room, epoch) => this.renewEpoch(room, epoch))
  }

  async start (delivery: BrokerDelivery, settings: BrokerSettings): Promise<void> {
    this.delivery = delivery
    this.historyLimits = settings.history
    if (settings.historyFor !== undefined) this.historyFor = settings.historyFor
    this.idempotencyWindowMs = settings.idempotencyWindowMs
    this.log = settings.log
    const connectTimeoutMs = this.options.connectTimeoutMs ?? 5000
    if (this.options.pool !== undefined) {
      this.pool = this.options.pool
    } else {
      this.ownsPool = true
      this.pool = new pg.Pool({
        connectionString: this.options.connectionString,
        max: this.options.poolSize ?? 10,
        connectionTimeoutMillis: Math.max(connectTimeoutMs, this.commandTimeoutMs),
        application_name: 'fastify-rooms',
        // A publish waits this long at most for a room another transaction holds (set once per connection).
        lock_timeout: this.commandTimeoutMs,
      })
    }
    // An idle pooled client that loses its connection emits 'error' on the pool: unhandled, it would end the process.
    this.pool.on('error', (err) => this.onConnectionError(err))
    try {
      await withDeadline(this.installSchema(), connectTimeoutMs, 'installing the schema')
      await withDeadline(this.connectListener(), connectTimeoutMs, 'connecting the listener')
      await withDeadline(this.probeNotifications(), 2 * connectTimeoutMs, 'a test notification')
    } catch (err) {
      await this.disconnect()
      const where = this.options.connectionString !== undefined ? ` at ${redactUrl(this.options.connectionString)}` : ''
      throw new BrokerError(`cannot use PostgreSQL${where}: ${(err as Error).message}`)
    }
    this.everReady = true
    await this.beat()
    this.every(Math.max(50, Math.floor(this.processTtlMs / 3)), () => this.beat())
    this.every(this.options.checkIntervalMs ?? 1000, () => this.checkPositions())
    this.every(this.options.cleanupIntervalMs ?? 10_000, () => this.cleanup())
  }

  private every (ms: number, task: () => Promise<void>): void {
    // A throw inside a timer callback is uncaught: each task reports its own failures.
    const timer = setInterval(() => { task().catch((err: unknown) => this.log?.warn({ err }, 'fastify-rooms: a Postgres broker task failed; it runs again')) }, ms)
    timer.unref()
    this.timers.push(timer)
  }

  /** Tables and functions, made once by whichever process gets the lock first (DDL racing itself fails). */
  private async installSchema (): Promise<void> {
    const client = await this.pool.connect()
    try {
      await client.query('BEGIN')
      await client.query('SELECT pg_advisory_xact_lock(hashtext($1))', [`fastify-rooms:${this.schema}`])
      await client.query(schemaSql(this.schema))
      await client.query('COMMIT')
      client.release()
    } catch (err) {
      client.release(true)
      throw err
    }
  }

  private async connectListener (): Promise<void> {
    let client: pg.Client | pg.PoolClient
    if (this.options.listenConnectionString !== undefined || this.options.pool === undefined) {
      client = new pg.Client({ connectionString: this.options.listenConnectionString ?? this.options.connectionString, application_name: 'fastify-rooms listener' })
      client.on('error', (err) => this.onListenerLost(client, err))
      await client.connect()
    } else {
      client = await this.pool.connect()
      client.on('error', (err) => this.onListenerLost(client, err))
    }
    client.on('end', () => this.onListenerLost(client, new Error('connection ended')))
    client.on('notification', (message) => {
      if (client !== this.listener) return
      // A throw inside a pg listener is uncaught (the process would exit): a bad notification is logged and dropped.
      try {
        this.onNotification(message.channel, message.payload ?? '')
      } catch (err) {
        this.log?.warn({ err, channel: message.channel }, 'fastify-rooms: dropped a Postgres notification that could not be handled')
      }
    })
    try {
      await client.query(`LISTEN "${usersChannel(this.schema)}"`)
      for (const shard of this.shards.keys()) await client.query(`LISTEN "${this.shardChannel(shard)}"`)
    } catch (err) {
      dropClient(client)
      throw err
    }
    this.listener = client
  }

  /** LISTEN does not work through PgBouncer in transaction mode: a notification that never comes refuses the start. */
  private async probeNotifications (): Promise<void> {
    const channel = `${this.schema}_probe_${this.processId.replaceAll('-', '')}`
    const listener = this.listener!
    const heard = new Promise<void>((resolve) => {
      const onNotification = (message: pg.Notification) => {
        if (message.channel !== channel) return
        listener.off('notification', onNotification)
        resolve()
      }
      listener.on('notification', onNotification)
    })
    await listener.query(`LISTEN "${channel}"`)
    await this.pool.query('SELECT pg_notify($1, $2)', [channel, 'probe'])
    await withDeadline(heard, this.options.connectTimeoutMs ?? 5000, 'the listener connection did not receive a notification (PgBouncer in transaction mode? pass listenConnectionString pointing at PostgreSQL itself)')
    await listener.query(`UNLISTEN "${channel}"`)
  }

  private shardChannel (shard: number): string {
    return `${this.schema}_ev_${shard}`
  }

  async publish (request: PublishRequest): Promise<RoomPosition> {
    const { stream } = request
    if (stream === undefined) return toPosition(await this.lanes.publish(request.room, this.publishValues(request, this.ownsPool ? null : this.commandTimeoutMs)))
    const values = [...this.publishValues(request, this.ownsPool ? null : this.commandTimeoutMs), ...this.roomStreams.publishArguments(stream)]
    const [row] = await this.sql<PositionRow>(`SELECT * FROM ${this.table('publish_stream')}(${PUBLISH_PARAMETERS}, $16, $17, $18)`, values)
    this.roomStreams.refused(request.room, Number(row!.seq), stream.maxOpen)
    return toPosition(row!)
  }

  /** A stream's appends are announced in notifications: each carries at most this much text. */
  readonly maxAppendUnits = MAX_APPEND_UNITS

  appendStream (append: StreamAppend, frame: string): Promise<'ok' | 'conflict' | 'gone'> {
    return this.roomStreams.append(append, frame)
  }

  stream (room: string, id: string): Promise<StoredStream | undefined> {
    return this.roomStreams.read(room, id)
  }

  openStreams (room: string): Promise<StoredStream[]> {
    return this.roomStreams.open(room)
  }

  /** One publish as it is, several as one `publish_batch` (arrays by column; the shared values once). */
  private async runPublishes (batch: PublishArguments[]): Promise<PositionRow[]> {
    if (batch.length === 1) return this.sql<PositionRow>(`SELECT * FROM ${this.table('publish')}(${PUBLISH_PARAMETERS})`, [...batch[0]!])
    const column = (index: number) => batch.map((args) => args[index])
    return this.sql<PositionRow>(`SELECT * FROM ${this.table('publish_batch')}($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`, [
      column(0), column(1), column(2), column(3), column(4), column(5), column(6), column(7), batch[0]![8], batch[0]![9],
      column(10), column(11), batch[0]![12], column(13), batch[0]![14],
    ])
  }

  async publishIn (transaction: SqlTransaction, request: PublishRequest): Promise<RoomPosition> {
    const rows = await inTransaction(transaction, { text: `SELECT * FROM ${this.table('publish')}(${PUBLISH_PARAMETERS})`, values: this.publishValues(request, this.commandTimeoutMs) }, this.schema)
    return toPosition(rows[0] as PositionRow)
  }

  private publishValues (request: PublishRequest, lockTimeoutMs: number | null): unknown[] {
    const publishedAt = preciseNow()
    const [head, tail] = roomEventFrameParts(request, Math.floor(publishedAt), request.stream?.id)
    const limits = this.historyFor(request.room)
    return [
      request.room, randomUUID(), head, tail, request.type, request.except ?? '', limits.maxEvents, limits.maxAgeMs,
      this.roomTtlMs, this.idleRoomTtlMs, String(publishedAt), request.idempotencyKey ?? null, this.idempotencyWindowMs,
      eventChannel(this.schema, request.room), lockTimeoutMs,
    ]
  }

  async position (room: string): Promise<RoomPosition> {
    const [row] = await this.sql<PositionRow>(`SELECT * FROM ${this.table('position')}($1, $2, $3)`, [room, randomUUID(), this.idleRoomTtlMs])
    return toPosition(row!)
  }

  /**
   * In the caller's REPEATABLE READ (or SERIALIZABLE) snapshot. A room the snapshot does not know had no
   * event then: every event of its current epoch came later, so the position is seq 0 of that epoch.
   */
  async positionIn (transaction: SqlTransaction, room: string): Promise<RoomPosition> {
    const [row] = await inTransaction(transaction, { text: `SELECT seq, epoch FROM ${this.table('rooms')} WHERE room = $1`, values: [room] }, this.schema, true) as PositionRow[]
    if (row !== undefined) return toPosition(row)
    return { seq: 0, epoch: (await this.position(room)).epoch }
  }

  async peekPosition (room: string): Promise<RoomPosition | undefined> {
    const [row] = await this.sql<PositionRow>(`SELECT seq, epoch FROM ${this.table('rooms')} WHERE room = $1`, [room])
    return row === undefined ? undefined : toPosition(row)
  }

  async history (room: string, after: number): Promise<HistorySlice> {
    return this.read(room, after, false)
  }

  /**
   * The room's events after `after` and its position, in one statement (one snapshot). `delivery`: this
   * process's own catch-up, which may read a little past the room's history limits (DELIVERY_WINDOW).
   */
  private async read (room: string, after: number, delivery: boolean): Promise<HistorySlice> {
    const limits = this.historyFor(room)
    const maxEvents = delivery ? Math.max(limits.maxEvents, DELIVERY_WINDOW.events) : limits.maxEvents
    const maxAgeMs = delivery ? Math.max(limits.maxAgeMs, DELIVERY_WINDOW.ageMs) : limits.maxAgeMs
    const from = Math.max(0, Math.floor(after))
    let rows = await this.sql<{ seq: string; epoch: string; event_seq: string | null; frame: string | null }>(`
      SELECT r.seq, r.epoch, e.seq AS event_seq, e.frame FROM ${this.table('rooms')} r
      LEFT JOIN LATERAL (
        SELECT x.seq, x.frame FROM ${this.table('events')} x
        WHERE x.room = r.room AND x.seq > $2 AND x.seq > r.seq - $3 AND x.created_at > clock_timestamp() - $4 * interval '1 millisecond'
        ORDER BY x.seq
      ) e ON true
      WHERE r.room = $1 ORDER BY e.seq`, [room, from, maxEvents, maxAgeMs])
    if (rows.length === 0) {
      const position = await this.position(room)
      rows = [{ seq: String(position.seq), epoch: position.epoch, event_seq: null, frame: null }]
    }
    const seq = Number(rows[0]!.seq)
    const events: HistorySlice['events'] = []
    for (const row of rows) if (row.event_seq !== null) events.push({ seq: Number(row.event_seq), frame: row.frame! })
    await this.roomStreams.patch(room, events)
    return { position: { seq, epoch: rows[0]!.epoch }, events, complete: from >= seq || events[0]?.seq === from + 1 }
  }

  private async renewEpoch (room: string, epoch: string): Promise<RoomPosition> {
    const [row] = await this.sql<PositionRow>(`SELECT * FROM ${this.table('renew_epoch')}($1, $2, $3)`, [room, epoch, randomUUID()])
    if (row === undefined) return this.position(room)
    this.log?.warn({ room, epoch, renewed: row.epoch }, 'fastify-rooms: a room\'s events went back in PostgreSQL (a restore, or commits lost in a crash?); the room has a new epoch and its members are reset')
    return toPosition(row)
  }

  async subscribe (room: string): Promise<void> {
    this.streams.open(room)
    try {
      await this.listen(roomShard(room))
      // Events up to this position happened before the first local member joined; the rest are live.
      this.streams.start(room, await this.position(room))
    } catch (err) {
      this.streams.close(room)
      this.unlisten(roomShard(room))
      throw err
    }
  }

  async unsubscribe (room: string): Promise<void> {
    this.streams.close(room)
    this.unlisten(roomShard(room))
  }

  private async listen (shard: number): Promise<void> {
    let state = this.shards.get(shard)
    if (state === undefined) {
      const listener = this.listener
      const listening = listener === undefined
        ? Promise.reject(new BrokerError('PostgreSQL unavailable: the listener connection is down'))
        : wrap(this.onListener(listener, `LISTEN "${this.shardChannel(shard)}"`))
      state = { rooms: 0, listening }
      this.shards.set(shard, state)
      listening.catch(() => { if (this.shards.get(shard) === state && state!.rooms === 0) this.shards.delete(shard) })
    }
    state.rooms++
    await state.listening
  }

  /** The listener's statements one at a time (a pg client runs one query at a time; queueing more is deprecated). */
  private onListener (listener: pg.Client | pg.PoolClient, text: string): Promise<void> {
    const run = this.listenerChain.then(() => withDeadline(listener.query({ text, query_timeout: this.commandTimeoutMs } as pg.QueryConfig), this.commandTimeoutMs + 250, 'the statement timed out'))
    this.listenerChain = run.catch(() => {})
    return run.then(() => {})
  }

  private unlisten (shard: number): void {
    const state = this.shards.get(shard)
    if (state === undefined) return
    if (--state.rooms > 0) return
    this.shards.delete(shard)
    if (this.listener !== undefined) this.onListener(this.listener, `UNLISTEN "${this.shardChannel(shard)}"`).catch(() => {})
  }

  async claimAnswer (userId: string, answerId: string, fingerprint: string, limits: { windowMs: number; maxIdsPerUser: number }): Promise<{ state: 'new' } | { state: 'pending' } | { state: 'done'; outcome: string }> {
    const [row] = await this.sql<{ state: string; outcome: string | null }>(`SELECT * FROM ${this.table('claim_answer')}($1, $2, $3, $4, $5)`, [userId, answerId, fingerprint, limits.windowMs, limits.maxIdsPerUser])
    if (row?.state === 'done') return { state: 'done', outcome: row.outcome! }
    return { state: row?.state === 'pending' ? 'pending' : 'new' }
  }

  async storeAnswer (userId: string, answerId: string, fingerprint: string, outcome: string, ttlMs: number): Promise<void> {
    await this.sql(`UPDATE ${this.table('answers')} SET outcome = $4, expires_at = clock_timestamp() + $5 * interval '1 millisecond'
      WHERE user_id = $1 AND answer_id = $2 AND fingerprint = $3`, [userId, answerId, fingerprint, outcome, ttlMs])
  }

  async presenceJoin (room: string, userId: string, connectionId: string, info = ''): Promise<boolean> {
    let local = this.localPresence.get(room)
    if (local === undefined) {
      local = new Map()
      this.localPresence.set(room, local)
    }
    const data = info === '' ? null : info
    local.set(connectionId, { userId, info: data })
    const [row] = await this.sql<{ first: boolean }>(`SELECT ${this.table('presence_join')}($1, $2, $3, $4, $5) AS first`, [room, userId, connectionId, this.processId, data])
    return row!.first
  }

  async presenceLeave (room: string, _userId: string, connectionId: string): Promise<boolean> {
    const local = this.localPresence.get(room)
    local?.delete(connectionId)
    if (local?.size === 0) this.localPresence.delete(room)
    const [row] = await this.sql<{ last: string | null }>(`SELECT ${this.table('presence_leave')}($1, $2) AS last`, [room, connectionId])
    return row!.last !== null
  }

  async presence (room: string): Promise<string[]> {
    return (await this.sql<{ user_id: string }>(`SELECT user_id FROM ${this.table('presence_users')} WHERE room = $1`, [room])).map((row) => row.user_id)
  }

  async presenceInfo (room: string): Promise<Record<string, string>> {
    const rows = await this.sql<{ user_id: string; info: string }>(`SELECT user_id, info FROM ${this.table('presence_users')} WHERE room = $1 AND info IS NOT NULL`, [room])
    return Object.fromEntries(rows.map((row) => [row.user_id, row.info]))
  }

  async presenceCount (room: string): Promise<number> {
    const [row] = await this.sql<{ count: string }>(`SELECT count(*) AS count FROM ${this.table('presence_users')} WHERE room = $1`, [room])
    return Number(row!.count)
  }

  async isPresent (room: string, userId: string): Promise<boolean> {
    return (await this.sql(`SELECT 1 FROM ${this.table('presence_users')} WHERE room = $1 AND user_id = $2`, [room, userId])).length === 1
  }

  async presenceSample (room: string, limit: number): Promise<PresenceSample> {
    const total = await this.presenceCount(room)
    if (total === 0 || limit === 0) return { total, ids: [], info: {} }
    const rows = await this.sql<{ user_id: string; info: string | null }>(`SELECT user_id, info FROM ${this.table('presence_users')} WHERE room = $1 LIMIT $2`, [room, limit])
    const info: Record<string, string> = {}
    for (const row of rows) if (row.info !== null) info[row.user_id] = row.info
    return { total, ids: rows.map((row) => row.user_id), info }
  }

  async rooms (): Promise<string[]> {
    return (await this.sql<{ room: string }>(`SELECT DISTINCT room FROM ${this.table('presence_users')}`, [])).map((row) => row.room)
  }

  async sendToUser (userId: string, frame: string): Promise<void> {
    await this.notifyUsers(['m', userId, frame])
  }

  async disconnectUser (userId: string, code: number, reason: string): Promise<void> {
    await this.notifyUsers(['d', userId, code, reason])
  }

  async changeMembership (change: MembershipChange): Promise<void> {
    const kind = change.action === 'join' ? 'j' : 'l'
    await this.notifyUsers('userId' in change.target ? [kind, change.target.userId, change.room] : [`${kind}c`, change.target.connectionId, change.room])
  }

  async sendToSession (userId: string, sessionId: string, frame: string): Promise<void> {
    await this.notifyUsers(['s', userId, sessionId, frame])
  }

  /** One channel for every process; a message too large for a notification goes through S.messages. */
  private async notifyUsers (message: UserMessage): Promise<void> {
    const body = encodeUserMessage(message)
    if (Buffer.byteLength(body) <= MAX_NOTIFY_BYTES) {
      await this.sql('SELECT pg_notify($1, $2)', [usersChannel(this.schema), body])
      return
    }
    await this.sql(`WITH stored AS (INSERT INTO ${this.table('messages')} (body) VALUES ($2) RETURNING id) SELECT pg_notify($1, '@' || id) FROM stored`, [usersChannel(this.schema), body])
  }

  /** Throws on a malformed notification; the listener logs and drops it. */
  private onNotification (channel: string, payload: string): void {
    if (channel === usersChannel(this.schema)) {
      const stored = storedMessageId(payload)
      if (stored === undefined && this.notificationChain === undefined) return deliverUserMessage(payload, this.delivery)
      return this.inOrder(async () => {
        const body = stored === undefined ? payload : (await this.sql<{ body: string }>(`SELECT body FROM ${this.table('messages')} WHERE id = $1`, [stored]))[0]?.body
        if (body !== undefined) deliverUserMessage(body, this.delivery)
      })
    }
    // Only the users channel and the event shards are this handler's (the start's probe has its own).
    if (!channel.startsWith(`${this.schema}_ev_`)) return
    if (payload.startsWith(APPEND_MARK)) {
      const frame = payload.slice(APPEND_MARK.length)
      const append = parseAppendFrame(frame)
      if (this.notificationChain === undefined) return this.delivery?.streamAppend?.(append, frame)
      return this.inOrder(async () => this.delivery?.streamAppend?.(append, frame))
    }
    const { room, event } = parseEventNotification(payload)
    if (event.frame !== '' && this.notificationChain === undefined) return this.streams.receive(room, event)
    this.inOrder(async () => {
      if (event.frame === '') {
        const [row] = await this.sql<{ frame: string }>(`SELECT frame FROM ${this.table('events')} WHERE room = $1 AND seq = $2`, [room, event.seq])
        // Gone already (trimmed): the next event or check shows the gap, and history (or a reset) fills it.
        if (row === undefined) return
        event.frame = row.frame
      }
      this.streams.receive(room, event as LiveEvent)
    })
  }

  /** Runs after the notifications before it; a failed read is logged, and the position check catches up. */
  private inOrder (task: () => Promise<void>): void {
    const chain: Promise<void> = (this.notificationChain ?? Promise.resolve())
      .then(task)
      .catch((err: unknown) => this.log?.warn({ err }, 'fastify-rooms: reading a Postgres notification\'s content failed'))
      .finally(() => { if (this.notificationChain === chain) this.notificationChain = undefined })
    this.notificationChain = chain
  }

  /** A lost notification shows up here within checkIntervalMs: the room's seq is ahead of what was delivered. */
  private async checkPositions (): Promise<void> {
    if (this.closed || this.listener === undefined) return
    const rooms = [...this.streams.rooms()]
    for (let start = 0; start < rooms.length; start += 1000) {
      const rows = await this.sql<{ room: string; seq: string; epoch: string }>(`SELECT room, seq, epoch FROM ${this.table('rooms')} WHERE room = ANY($1::text[])`, [rooms.slice(start, start + 1000)])
      for (const row of rows) this.streams.check(row.room, toPosition(row))
    }
  }

  private onListenerLost (client: pg.Client | pg.PoolClient, err: Error): void {
    if (client !== this.listener) return
    this.listener = undefined
    dropClient(client)
    this.onConnectionError(err)
    if (this.closed) return
    void this.reconnectListener()
  }

  /** Listening again, then this process's presence back and every room caught up from the events table. */
  private async reconnectListener (): Promise<void> {
    if (this.reconnecting) return
    this.reconnecting = true
    // Held from now on, so that a room is caught up once and its replay comes first.
    this.streams.holdAll()
    try {
      for (let attempt = 0; !this.closed; attempt++) {
        try {
          await withDeadline(this.connectListener(), this.options.connectTimeoutMs ?? 5000, 'reconnecting the listener')
          await this.restorePresence()
          break
        } catch {
          if (this.listener !== undefined) dropClient(this.listener)
          this.listener = undefined
          await backoff(attempt)
        }
      }
    } finally {
      this.reconnecting = false
    }
    if (this.closed) return
    if (this.down) {
      this.down = false
      this.log?.info('fastify-rooms: PostgreSQL connection restored')
    }
    await this.streams.catchUpAll()
  }

  private onConnectionError (err: Error): void {
    if (this.down || this.closed || !this.everReady) return
    this.down = true
    this.log?.error({ err }, 'fastify-rooms: PostgreSQL connection lost; broadcasts fail until it is back, sockets stay open')
  }

  private async restorePresence (): Promise<void> {
    for (const [room, entries] of this.localPresence) {
      for (const [connectionId, { userId, info }] of entries) {
        const [row] = await this.sql<{ first: boolean }>(`SELECT ${this.table('presence_join')}($1, $2, $3, $4, $5) AS first`, [room, userId, connectionId, this.processId, info])
        if (row!.first) this.delivery?.presenceChanged(room, userId, 'join')
      }
    }
  }

  /** Refreshes this process's heartbeat; removes the members of processes whose heartbeat expired. */
  private async beat (): Promise<void> {
    if (this.closed) return
    const [row] = await this.sql<{ inserted: boolean }>(`INSERT INTO ${this.table('processes')} (process_id, expires_at) VALUES ($1, clock_timestamp() + $2 * interval '1 millisecond')
      ON CONFLICT (process_id) DO UPDATE SET expires_at = EXCLUDED.expires_at RETURNING (xmax = 0) AS inserted`, [this.processId, this.processTtlMs])
    // Our heartbeat had lapsed (a pause): survivors may have removed our members.
    if (row!.inserted && this.timers.length > 0 && this.localPresence.size > 0) await this.restorePresence()
    const dead = await this.sql<{ process_id: string }>(`DELETE FROM ${this.table('processes')} WHERE expires_at < clock_timestamp() RETURNING process_id`, [])
    for (const { process_id: processId } of dead) await this.reap(processId)
    await this.keepOccupiedRooms()
  }

  private async reap (processId: string): Promise<void> {
    const entries = await this.sql<{ room: string; connection_id: string; user_id: string }>(`SELECT room, connection_id, user_id FROM ${this.table('presence')} WHERE process_id = $1`, [processId])
    for (const entry of entries) {
      const [row] = await this.sql<{ last: string | null }>(`SELECT ${this.table('presence_leave')}($1, $2) AS last`, [entry.room, entry.connection_id])
      if (row!.last !== null) this.delivery?.presenceChanged(entry.room, entry.user_id, 'leave')
    }
  }

  /** A room whose members sit here keeps its position (else its next event would start a new epoch and reset them). */
  private async keepOccupiedRooms (): Promise<void> {
    const now = Date.now()
    if (now - this.roomsKeptAt < this.idleRoomTtlMs / 4) return
    this.roomsKeptAt = now
    const rooms = [...this.streams.rooms()]
    if (rooms.length === 0) return
    await this.sql(`UPDATE ${this.table('rooms')} SET expires_at = greatest(expires_at, clock_timestamp() + $2 * interval '1 millisecond') WHERE room = ANY($1::text[])`, [rooms, this.idleRoomTtlMs])
  }

  /**
   * Expired rows go in batches of at most 1000 per statement, each its own short transaction: rooms
   * (with their events), events past their age, idempotency keys, answers, stored messages, and presence
   * entries of processes that died without being reaped.
   */
  private async cleanup (): Promise<void> {
    if (this.closed) return
    const batch = 1000
    await this.sql(`WITH gone AS (
        DELETE FROM ${this.table('rooms')} WHERE room IN (
          SELECT r.room FROM ${this.table('rooms')} r WHERE r.expires_at < clock_timestamp()
          AND NOT EXISTS (SELECT 1 FROM ${this.table('presence_users')} u WHERE u.room = r.room) LIMIT ${batch})
        RETURNING room)
      DELETE FROM ${this.table('events')} WHERE room IN (SELECT room FROM gone)`, [])
    await this.sql(`DELETE FROM ${this.table('events')} WHERE (room, seq) IN (
        SELECT e.room, e.seq FROM ${this.table('events')} e JOIN ${this.table('rooms')} r ON r.room = e.room
        WHERE e.created_at < clock_timestamp() - $1 * interval '1 millisecond'
        AND e.created_at < clock_timestamp() - greatest(r.max_age_ms, $1) * interval '1 millisecond' LIMIT ${batch})`, [DELIVERY_WINDOW.ageMs])
    for (const name of ['idempotency', 'answers']) {
      await this.sql(`DELETE FROM ${this.table(name)} WHERE ctid = ANY (ARRAY(SELECT ctid FROM ${this.table(name)} WHERE expires_at < clock_timestamp() LIMIT ${batch}))`, [])
    }
    await this.roomStreams.cleanup(batch)
    await this.sql(`DELETE FROM ${this.table('messages')} WHERE id IN (SELECT id FROM ${this.table('messages')} WHERE created_at < clock_timestamp() - interval '1 minute' LIMIT ${batch})`, [])
    const orphans = await this.sql<{ process_id: string }>(`SELECT DISTINCT p.process_id FROM ${this.table('presence')} p
      WHERE NOT EXISTS (SELECT 1 FROM ${this.table('processes')} x WHERE x.process_id = p.process_id) LIMIT 10`, [])
    for (const { process_id: processId } of orphans) if (processId !== this.processId) await this.reap(processId)
  }

  async close (options: { lingerMs?: number } = {}): Promise<void> {
    this.closed = true
    for (const timer of this.timers) clearInterval(timer)
    if (this.everReady) {
      if (options.lingerMs !== undefined && options.lingerMs > 0 && this.localPresence.size > 0) {
        // Presence leaves in their grace: survivors reap this process once its heartbeat row expires.
        await this.sql(`UPDATE ${this.table('processes')} SET expires_at = clock_timestamp() + $2 * interval '1 millisecond' WHERE process_id = $1`, [this.processId, options.lingerMs]).catch(() => {})
      } else {
        await this.sql(`DELETE FROM ${this.table('presence')} WHERE process_id = $1`, [this.processId]).catch(() => {})
        await this.sql(`DELETE FROM ${this.table('processes')} WHERE process_id = $1`, [this.processId]).catch(() => {})
      }
    }
    await this.disconnect()
    this.delivery = undefined
  }

  private async disconnect (): Promise<void> {
    const listener = this.listener
    this.listener = undefined
    if (listener !== undefined) dropClient(listener)
    if (this.ownsPool) await this.pool?.end().catch(() => {})
  }

  /**
   * Bounded twice: pg's query_timeout, and a deadline of ours a little later, because pg up to 8.1x never
   * answers a query on a connection whose server stopped answering (a SIGSTOPped database; pinned by the
   * dependency matrix's oldest pg and test/postgres.test.ts's paused database).
   */
  private async sql<R = Record<string, unknown>>(text: string, values: unknown[]): Promise<R[]> {
    const result = await wrap(withDeadline(this.pool.query({ text, values, query_timeout: this.commandTimeoutMs } as pg.QueryConfig), this.commandTimeoutMs + 250, 'the statement timed out'))
    return result.rows as R[]
  }
}

const PUBLISH_PARAMETERS = '$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15'

function toPosition (row: PositionRow): RoomPosition {
  return { seq: Number(row.seq), epoch: row.epoch }
}

/** Ends a client without waiting for a server that may not answer. */
function dropClient (client: pg.Client | pg.PoolClient): void {
  if ('release' in client && typeof client.release === 'function') {
    try { client.release(true) } catch { /* released already */ }
    return
  }
  client.end().catch(() => {})
}

function redactUrl (url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@')
}

/** A broker for many processes sharing one PostgreSQL, with publishes inside the host's transactions. */
export function postgresBroker (options: PostgresBrokerOptions): Broker {
  return new PostgresBroker(options)
}

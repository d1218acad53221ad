// The Redis broker: many processes share rooms through one Redis (>= 6.2) or a Redis Cluster (>= 7).
// Publishing is one Lua script (seq + history + fan-out); each process subscribes only to the rooms it has
// local members in; presence entries belong to a process whose heartbeat key expires when it dies, and
// survivors remove them. On a cluster every key and channel of a room lives in the room's slot (sharded
// pub/sub), a user's messages travel on the user's own shard channel, and a dead process's presence is
// found by SCAN instead of a per-process index (which a join would have to write in another slot).
// Past 300 lines: the connections and their recovery, the scripts' callers, presence and its reaping
// stay together here; what differs between one Redis and a cluster is redis/topology.ts, key names
// redis/keys.ts, message formats redis/messages.ts, the Lua redis/scripts.ts and ordered delivery
// ordered-streams.ts.
import { createHash, randomUUID } from 'node:crypto'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import { BrokerError, BrokerTimeoutError } from '../config/errors.js'
import { preciseNow } from '../observability/metrics.js'
import { roomEventFrameParts } from '../protocol/event-frames.js'
import { parseAppendFrame, type StreamAppend } from '../protocol/stream-frames.js'
import type { Broker, BrokerDelivery, BrokerSettings, HistorySlice, PublishRequest, RoomPosition, MembershipChange, PresenceSample, StoredStream } from './broker.js'
import { RedisKeys } from './redis/keys.js'
import { parseLiveEvents } from './redis/messages.js'
import { PublishBatches } from './redis/publish-batches.js'
import { deliverUserMessage, encodeUserMessage, type UserMessage } from './user-messages.js'
import { clusterTopology, singleTopology, type Topology } from './redis/topology.js'
import { backoff, OrderedStreams } from './ordered-streams.js'
import { CLAIM_ANSWER, HISTORY, POSITION, PRESENCE_JOIN, PRESENCE_LEAVE, PUBLISH_STREAM, RENEW_EPOCH, STORE_ANSWER } from './redis/scripts.js'
import { APPEND_MARK, RedisStreams } from './redis/streams.js'

export interface RedisBrokerOptions {
  /** `redis://host:port/db`; or pass `cluster` or `client`. */
  url?: string
  /** A Redis Cluster's startup nodes (any of them; the rest are discovered): runs on sharded pub/sub. */
  cluster?: Array<{ host: string; port: number }>
  /** ioredis options for the cluster clients (e.g. `redisOptions: { password }`, `natMap`, `dnsLookup`). */
  clusterOptions?: ClusterOptions
  /**
   * An ioredis client of yours (a `Cluster` selects the cluster mode); the broker duplicates it for its
   * subscriber and never quits it.
   */
  client?: Redis | Cluster
  /** Prefix of every key and channel (default `rooms:`). */
  keyPrefix?: string
  /** A process that stops refreshing its heartbeat for this long is dead; survivors remove its members (default 15000). */
  processTtlMs?: number
  /** A room's seq and epoch expire after this long without events (default 24 h), once it carried a host event. */
  roomTtlMs?: number
  /** A room that only ever carried presence (or was only read) expires after this long without events (default 120000). */
  idleRoomTtlMs?: number
  /** How long `register` waits for Redis at start (default 5000). */
  connectTimeoutMs?: number
  /**
   * A command Redis has not answered by then fails (default 2000): frames answer `unavailable`,
   * `broadcast` rejects with FST_ROOMS_BROKER_TIMEOUT, and nothing piles up while Redis hangs.
   */
  commandTimeoutMs?: number
}

type HistoryReply = [seq: string, epoch: string, entries: Array<[id: string, fields: string[]]>]

class RedisBroker implements Broker {
  readonly name = 'redis'
  private readonly keys: RedisKeys
  private readonly topology: Topology
  private readonly processId = randomUUID()
  private readonly processTtlMs: number
  private readonly roomTtlMs: number
  private readonly idleRoomTtlMs: number
  private idempotencyWindowMs = 300_000
  private command!: Redis | Cluster
  private subscriber!: Redis | Cluster
  private ownsCommand = false
  private delivery: BrokerDelivery | undefined
  private historyLimits: BrokerSettings['history'] = { maxEvents: 1000, maxAgeMs: 300_000, maxBytes: Infinity }
  private historyFor: (room: string) => { maxEvents: number; maxAgeMs: number } = () => this.historyLimits
  private readonly streams: OrderedStreams
  /** Streamed events' state and text (redis/streams.ts). */
  private readonly roomStreams: RedisStreams
  /** This process's presence entries, to restore them after Redis lost them. room → connectionId → userId */
  private readonly localPresence = new Map<string, Map<string, { userId: string; info: string }>>()
  private heartbeatTimer: NodeJS.Timeout | undefined
  private closed = false
  private roomsKeptAt = 0
  private everReady = false
  private down = false
  private log: BrokerSettings['log']
  private readonly scriptHashes = new Map<string, string>()
  /** Room events of one turn, sent as one script call per group. */
  private readonly batches: PublishBatches

  constructor (private readonly options: RedisBrokerOptions) {
    if (options.url === undefined && options.client === undefined && options.cluster === undefined) throw new TypeError('redisBroker: pass { url }, { cluster } or { client }')
    if (options.cluster !== undefined && (!Array.isArray(options.cluster) || options.cluster.length === 0)) throw new TypeError('redisBroker: cluster must list at least one { host, port }')
    this.keys = new RedisKeys(options.keyPrefix ?? 'rooms:')
    this.topology = options.cluster !== undefined || options.client instanceof Cluster ? clusterTopology(this.keys) : singleTopology(this.keys)
    if (this.topology.routesUsers) {
      this.userConnected = async (userId) => { await this.wrap(this.topology.subscribeUser(this.subscriber, userId)) }
      this.userDisconnected = (userId) => { this.wrap(this.topology.unsubscribeUser(this.subscriber, userId)).catch(() => {}) }
    }
    this.processTtlMs = options.processTtlMs ?? 15_000
    this.roomTtlMs = options.roomTtlMs ?? 86_400_000
    this.idleRoomTtlMs = Math.min(options.idleRoomTtlMs ?? 120_000, this.roomTtlMs)
    this.roomStreams = new RedisStreams(this.keys, this.topology, (script, keys, args) => this.run(script, keys, args), (room) => this.historyFor(room))
    const { keys, topology } = this
    this.batches = new PublishBatches({
      roomKeys: (room) => [keys.room(room, 'meta'), keys.room(room, 'history')],
      channel: (room) => topology.roomChannel(room),
      group: (room) => topology.scriptGroup(room),
      history: (room) => this.historyFor(room),
      publishCommand: topology.publishCommand,
      roomTtlMs: this.roomTtlMs,
      idleRoomTtlMs: this.idleRoomTtlMs,
      idempotencyWindowMs: () => this.idempotencyWindowMs,
      run: (script, scriptKeys, args) => this.run(script, scriptKeys, args),
    })
    this.streams = new OrderedStreams((room, after) => this.history(room, after), () => this.delivery, () => this.closed, (room, epoch) => this.renewEpoch(room, epoch))
  }

  async start (delivery: BrokerDelivery, settings: BrokerSettings): Promise<void> {
    this.delivery = delivery
    this.historyLimits = settings.history
    if (settings.historyFor !== undefined) this.historyFor = settings.historyFor
    this.idempotencyWindowMs = settings.idempotencyWindowMs
    this.log = settings.log
    // No offline queue: while Redis is away, commands fail at once (broadcast rejects, HTTP can answer 503)
    // instead of piling up and hanging their callers. A command timeout does the same while Redis hangs.
    const connection: RedisOptions = {
      lazyConnect: true,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: this.options.connectTimeoutMs ?? 5000,
      commandTimeout: this.options.commandTimeoutMs ?? 2000,
    }
    // On a cluster the same limits apply per node; sharded subscriptions need ioredis's subscriber group.
    const { lazyConnect: _lazy, enableOfflineQueue: _queue, ...perNode } = connection
    // ioredis learns of a failover only from a redirection or a slot refresh, and a dead master sends no
    // redirection: without a periodic refresh every command for its slots would fail until a restart.
    const cluster: ClusterOptions = {
      slotsRefreshInterval: 1000,
      ...this.options.clusterOptions,
      lazyConnect: true,
      enableOfflineQueue: false,
      redisOptions: { ...this.options.clusterOptions?.redisOptions, ...perNode },
    }
    const client = this.options.client
    if (client instanceof Cluster) {
      this.command = client
      this.subscriber = client.duplicate([], { ...cluster, shardedSubscribers: true })
    } else if (client !== undefined) {
      this.command = client
      this.subscriber = client.duplicate(connection)
    } else if (this.options.cluster !== undefined) {
      this.ownsCommand = true
      this.command = new Cluster(this.options.cluster, cluster)
      this.subscriber = new Cluster(this.options.cluster, { ...cluster, shardedSubscribers: true })
    } else {
      this.ownsCommand = true
      this.command = new Redis(this.options.url!, connection)
      this.subscriber = new Redis(this.options.url!, connection)
    }
    // ioredis reports every failed reconnect attempt; log the transitions only.
    for (const redis of [this.command, this.subscriber]) {
      redis.on('error', (err: Error) => this.onConnectionError(err))
      redis.on('ready', () => this.onConnectionReady())
    }
    try {
      if (this.ownsCommand) await this.command.connect()
      await this.subscriber.connect()
      await this.command.ping()
    } catch (err) {
      this.disconnect()
      const where = this.options.url !== undefined ? ` at ${redactUrl(this.options.url)}` : this.options.cluster !== undefined ? ` (cluster ${this.options.cluster.map((node) => `${node.host}:${node.port}`).join(',')})` : ''
      throw new BrokerError(`cannot reach Redis${where}: ${(err as Error).message}`)
    }
    this.everReady = true
    // A throw inside an ioredis listener is uncaught (the process would exit): a bad message is logged and dropped.
    const onMessage = (channel: string, message: string) => {
      try {
        this.onMessage(channel, message)
      } catch (err) {
        this.log?.warn({ err, channel }, 'fastify-rooms: dropped a Redis message that could not be handled')
      }
    }
    this.subscriber.on('message', onMessage)
    this.subscriber.on('smessage', onMessage)
    // ioredis re-subscribes by itself after a reconnect (on a cluster, after the subscriber group followed
    // a failover to the new masters); what was published meanwhile is caught up here.
    const catchUp = () => {
      this.afterReconnect().catch((err: unknown) => this.log?.error({ err }, 'fastify-rooms: catching up after a Redis reconnect failed'))
    }
    this.subscriber.on('ready', catchUp)
    if (this.topology.routesUsers) this.subscriber.on('subscribersReady', catchUp)
    await this.subscriber.subscribe(this.keys.global('users'))
    await this.beat()
    this.heartbeatTimer = setInterval(() => { void this.beat() }, Math.max(50, Math.floor(this.processTtlMs / 3)))
    this.heartbeatTimer.unref()
  }

  async publish (request: PublishRequest): Promise<RoomPosition> {
    const publishedAt = preciseNow()
    const time = Math.floor(publishedAt)
    const { stream } = request
    const [head, tail] = roomEventFrameParts(request, time, stream?.id)
    const idempotencyKey = request.idempotencyKey === undefined ? undefined : `${this.keys.room(request.room, 'idem')}:${request.idempotencyKey}`
    if (stream === undefined) {
      return this.batches.publish({ room: request.room, head, tail, type: request.type, except: request.except ?? '', publishedAt, idempotencyKey })
    }
    // A streamed event is published at once: what waits in the batches was published before it.
    this.batches.flush()
    const keys = [this.keys.room(request.room, 'meta'), this.keys.room(request.room, 'history'), ...this.roomStreams.publishKeys(request.room, stream.id)]
    if (idempotencyKey !== undefined) keys.push(idempotencyKey)
    // maxEvents 0 (a namespace without history): no history entries at all.
    const limits = this.historyFor(request.room)
    const args: Array<string | number> = [
      randomUUID(), head, tail, request.type, request.except ?? '', limits.maxEvents, limits.maxAgeMs,
      this.topology.roomChannel(request.room), this.roomTtlMs, publishedAt, this.idleRoomTtlMs, this.idempotencyWindowMs,
      this.topology.publishCommand, stream.id, stream.maxOpen, 2 * stream.idleMs, this.roomStreams.ttl(request.room),
    ]
    const [seq, epoch] = await this.run<[number, string]>(PUBLISH_STREAM, keys, args)
    this.roomStreams.refused(request.room, Number(seq), stream.maxOpen)
    return { seq: Number(seq), epoch }
  }

  appendStream (append: StreamAppend, frame: string): Promise<'ok' | 'conflict' | 'gone'> {
    return this.roomStreams.append(append, frame)
  }

  stream (room: string, id: string): Promise<StoredStream | undefined> {
    return this.roomStreams.read(room, id)
  }

  openStreams (room: string): Promise<StoredStream[]> {
    return this.roomStreams.open(room)
  }

  async position (room: string): Promise<RoomPosition> {
    const [seq, epoch] = await this.run<[string, string]>(POSITION, [this.keys.room(room, 'meta')], [randomUUID(), this.idleRoomTtlMs])
    return { seq: Number(seq), epoch }
  }

  async peekPosition (room: string): Promise<RoomPosition | undefined> {
    const [seq, epoch] = await this.wrap(this.command.hmget(this.keys.room(room, 'meta'), 'seq', 'epoch'))
    return epoch === null || epoch === undefined ? undefined : { seq: Number(seq ?? 0), epoch }
  }

  async history (room: string, after: number): Promise<HistorySlice> {
    const limits = this.historyFor(room)
    const [seqText, epoch, entries] = await this.run<HistoryReply>(HISTORY, [this.keys.room(room, 'meta'), this.keys.room(room, 'history')], [
      randomUUID(), this.idleRoomTtlMs, limits.maxAgeMs, Math.max(0, Math.floor(after)), limits.maxEvents,
    ])
    const seq = Number(seqText)
    const events: HistorySlice['events'] = []
    // Entries are written as [s, seq, h, frame head, t, frame tail] (before: [s, seq, f, frame]), and read
    // newest first.
    const oldest = entries.length > 0 ? Number(entries[entries.length - 1]![1][1]) : seq + 1
    for (let index = entries.length - 1; index >= 0; index--) {
      const fields = entries[index]![1]
      const eventSeq = Number(fields[1])
      if (eventSeq > after) events.push({ seq: eventSeq, frame: fields[2] === 'h' ? fields[3]! + fields[1]! + fields[5]! : fields[3]! })
    }
    await this.roomStreams.patch(room, events)
    return { position: { seq, epoch }, events, complete: after >= seq || oldest <= after + 1 }
  }

  private async renewEpoch (room: string, epoch: string): Promise<RoomPosition> {
    const [seq, renewed] = await this.run<[string, string]>(RENEW_EPOCH, [this.keys.room(room, 'meta'), this.keys.room(room, 'history')], [epoch, randomUUID(), this.idleRoomTtlMs])
    this.log?.warn({ room, epoch, renewed }, 'fastify-rooms: a room\'s Redis lost events this process had delivered (a failover or a restore?); the room has a new epoch and its members are reset')
    return { seq: Number(seq), epoch: renewed }
  }

  async subscribe (room: string): Promise<void> {
    this.streams.open(room)
    try {
      await this.wrap(this.topology.subscribeRoom(this.subscriber, room))
      // Events up to this position happened before the first local member joined; the rest are live.
      this.streams.start(room, await this.position(room))
    } catch (err) {
      this.streams.close(room)
      throw err
    }
  }

  async unsubscribe (room: string): Promise<void> {
    this.streams.close(room)
    await this.wrap(this.topology.unsubscribeRoom(this.subscriber, room)).catch(() => {})
  }

  async claimAnswer (userId: string, answerId: string, fingerprint: string, limits: { windowMs: number; maxIdsPerUser: number }): Promise<{ state: 'new' } | { state: 'pending' } | { state: 'done'; outcome: string }> {
    const prefix = this.keys.answers(userId)
    const key = answerKey(answerId)
    const [state, outcome] = await this.run<[string, string?]>(CLAIM_ANSWER, [prefix + key, prefix + 'ids'], [
      fingerprint, limits.windowMs, limits.maxIdsPerUser, key, prefix,
    ])
    if (state === 'done') return { state, outcome: outcome! }
    return { state: state === 'pending' ? 'pending' : 'new' }
  }

  async storeAnswer (userId: string, answerId: string, fingerprint: string, outcome: string, ttlMs: number): Promise<void> {
    await this.run(STORE_ANSWER, [this.keys.answers(userId) + answerKey(answerId)], [fingerprint, outcome, ttlMs])
  }

  async presenceJoin (room: string, userId: string, connectionId: string, info = ''): Promise<boolean> {
    let local = this.localPresence.get(room)
    if (local === undefined) {
      local = new Map()
      this.localPresence.set(room, local)
    }
    local.set(connectionId, { userId, info })
    return (await this.run<number>(PRESENCE_JOIN, this.topology.presenceKeys(room, this.processId), this.topology.joinArgs(room, connectionId, userId, info))) === 1
  }

  async presenceLeave (room: string, _userId: string, connectionId: string): Promise<boolean> {
    const local = this.localPresence.get(room)
    local?.delete(connectionId)
    if (local?.size === 0) this.localPresence.delete(room)
    return (await this.run<string | null>(PRESENCE_LEAVE, this.topology.presenceKeys(room, this.processId), this.topology.leaveArgs(room, connectionId))) !== null
  }

  async presence (room: string): Promise<string[]> {
    return this.wrap(this.command.hkeys(this.keys.room(room, 'users')))
  }

  async presenceInfo (room: string): Promise<Record<string, string>> {
    return this.wrap(this.command.hgetall(this.keys.room(room, 'info')))
  }

  async presenceCount (room: string): Promise<number> {
    return this.wrap(this.command.hlen(this.keys.room(room, 'users')))
  }

  async isPresent (room: string, userId: string): Promise<boolean> {
    return (await this.wrap(this.command.hexists(this.keys.room(room, 'users'), userId))) === 1
  }

  /** O(limit): HLEN, then HRANDFIELD (any `limit` users; all of them when there are fewer) and their data. */
  async presenceSample (room: string, limit: number): Promise<PresenceSample> {
    const total = await this.presenceCount(room)
    if (total === 0 || limit === 0) return { total, ids: [], info: {} }
    const users = this.keys.room(room, 'users')
    const ids = total <= limit ? await this.wrap(this.command.hkeys(users)) : await this.wrap(this.command.hrandfield(users, limit)) as string[]
    const values = ids.length === 0 ? [] : await this.wrap(this.command.hmget(this.keys.room(room, 'info'), ...ids))
    const info: Record<string, string> = {}
    ids.forEach((id, index) => {
      const value = values[index]
      if (typeof value === 'string') info[id] = value
    })
    return { total, ids, info }
  }

  async rooms (): Promise<string[]> {
    return this.wrap(this.topology.rooms(this.command))
  }

  async sendToUser (userId: string, frame: string): Promise<void> {
    await this.publishToUser(userId, ['m', userId, frame])
  }

  async disconnectUser (userId: string, code: number, reason: string): Promise<void> {
    await this.publishToUser(userId, ['d', userId, code, reason])
  }

  async changeMembership (change: MembershipChange): Promise<void> {
    if ('userId' in change.target) return this.publishToUser(change.target.userId, [change.action === 'join' ? 'j' : 'l', change.target.userId, change.room])
    // Which process holds a connection is known to that process only: this one goes to every process.
    await this.wrap(this.command.publish(this.keys.global('users'), encodeUserMessage([change.action === 'join' ? 'jc' : 'lc', change.target.connectionId, change.room])))
  }

  // On a cluster this travels on the user's shard channel: only processes with her sockets hear it.
  async sendToSession (userId: string, sessionId: string, frame: string): Promise<void> {
    await this.publishToUser(userId, ['s', userId, sessionId, frame])
  }

  /** Cluster: this process has a socket of the user now (called before its first frame is processed). */
  userConnected?: (userId: string) => Promise<void>
  /** Cluster: this process's last socket of the user closed. */
  userDisconnected?: (userId: string) => void

  private async publishToUser (userId: string, message: UserMessage): Promise<void> {
    await this.wrap(this.topology.publishToUser(this.command, userId, encodeUserMessage(message)))
  }

  async close (options: { lingerMs?: number } = {}): Promise<void> {
    this.closed = true
    this.batches.flush()
    clearInterval(this.heartbeatTimer)
    if (this.everReady && options.lingerMs !== undefined && options.lingerMs > 0 && this.localPresence.size > 0) {
      // Presence leaves in their grace: survivors remove this process's entries once its heartbeat key
      // expires, and publish the leaves of users who did not rejoin elsewhere (a restart does not flap).
      await Promise.allSettled([this.command.pexpire(this.keys.global(`proc:${this.processId}`), options.lingerMs)])
    } else if (this.everReady) {
      // Members were removed as their sockets closed; what remains of this process goes now (one key per
      // DEL: on a cluster they live in different slots).
      await Promise.allSettled([
        this.command.del(this.keys.global(`proc:${this.processId}`)),
        ...this.topology.processIndexKeys(this.processId).map((key) => this.command.del(key)),
        this.command.srem(this.keys.global('procs'), this.processId),
      ])
    }
    this.disconnect()
    this.delivery = undefined
  }

  private disconnect (): void {
    this.subscriber?.disconnect()
    if (this.ownsCommand) this.command?.disconnect()
  }

  /** Runs a script by its hash (the text goes over the wire only when Redis does not know it yet). */
  private async run<T>(script: string, keys: string[], args: Array<string | number>): Promise<T> {
    let sha = this.scriptHashes.get(script)
    if (sha === undefined) {
      sha = createHash('sha1').update(script).digest('hex')
      this.scriptHashes.set(script, sha)
    }
    try {
      return await this.wrap(this.command.evalsha(sha, keys.length, ...keys, ...args) as Promise<T>)
    } catch (err) {
      if (!String((err as Error).message).includes('NOSCRIPT')) throw err
      return this.wrap(this.command.eval(script, keys.length, ...keys, ...args) as Promise<T>)
    }
  }

  private onConnectionError (err: Error): void {
    if (this.down || this.closed || !this.everReady) return
    this.down = true
    this.log?.error({ err }, 'fastify-rooms: Redis connection lost; broadcasts fail until it is back, sockets stay open')
  }

  private onConnectionReady (): void {
    if (!this.down || this.closed) return
    this.down = false
    this.log?.info('fastify-rooms: Redis connection restored')
  }

  private async wrap<T>(promise: Promise<T>): Promise<T> {
    try {
      return await promise
    } catch (err) {
      const message = String((err as Error).message)
      // ioredis's commandTimeout rejects with "Command timed out".
      if (/timed out/i.test(message)) throw new BrokerTimeoutError(`Redis did not answer in time: ${message}`)
      throw new BrokerError(`Redis unavailable: ${message}`)
    }
  }

  /** Throws on a malformed message; the listener logs and drops it. */
  private onMessage (channel: string, message: string): void {
    const whose = this.topology.channelOf(channel)
    if (whose === 'user') return deliverUserMessage(message, this.delivery)
    if (message.startsWith(APPEND_MARK)) {
      const frame = message.slice(APPEND_MARK.length)
      this.delivery?.streamAppend?.(parseAppendFrame(frame), frame)
      return
    }
    for (const event of parseLiveEvents(message)) this.streams.receive(whose.room, event)
  }

  /**
   * After the subscriber reconnects: this process's presence back in Redis, then every room caught up
   * from history (or reset). Retried until both connections answer.
   */
  private async afterReconnect (): Promise<void> {
    if (this.closed || !this.everReady) return
    // Hold live messages from now on, so a room is reset at most once and replays come first.
    this.streams.holdAll()
    // ioredis emits 'ready' before it writes its re-subscriptions: let it write them first.
    await new Promise((resolve) => setImmediate(resolve))
    for (let attempt = 0; !this.closed; attempt++) {
      try {
        // Commands on one connection run in order: once this answers, the re-subscriptions are active.
        await this.subscriber.ping()
        await this.restorePresence()
        break
      } catch {
        await backoff(attempt)
      }
    }
    await this.streams.catchUpAll()
  }

  /** Re-adds this process's presence entries (Redis may have lost them, or survivors removed them). */
  private async restorePresence (): Promise<void> {
    for (const [room, entries] of this.localPresence) {
      for (const [connectionId, { userId, info }] of entries) {
        const first = await this.run<number>(PRESENCE_JOIN, this.topology.presenceKeys(room, this.processId), this.topology.joinArgs(room, connectionId, userId, info))
        if (first === 1) this.delivery?.presenceChanged(room, userId, 'join')
      }
    }
  }

  /** Refreshes this process's heartbeat and removes the members of processes whose heartbeat expired. */
  private async beat (): Promise<void> {
    if (this.closed) return
    try {
      const alive = await this.command.set(this.keys.global(`proc:${this.processId}`), '1', 'PX', this.processTtlMs, 'GET')
      await this.command.sadd(this.keys.global('procs'), this.processId)
      if (alive === null && this.localPresence.size > 0 && this.heartbeatTimer !== undefined) {
        // Our heartbeat had lapsed: survivors may have removed our members.
        await this.restorePresence()
      }
      for (const processId of await this.command.smembers(this.keys.global('procs'))) {
        if (processId !== this.processId) await this.reapIfDead(processId)
      }
      await this.keepOccupiedRooms()
    } catch {
      // Redis is away; the next beat tries again.
    }
  }

  /**
   * A room that only carries presence expires `idleRoomTtlMs` after its last event; while members sit in it
   * here its position must stay, or the next join would find a new epoch and reset them all. Its keys'
   * expiry is pushed out (never shortened: GT) a few times per idleRoomTtlMs.
   */
  private async keepOccupiedRooms (): Promise<void> {
    const now = Date.now()
    if (now - this.roomsKeptAt < this.idleRoomTtlMs / 4) return
    this.roomsKeptAt = now
    await Promise.all([...this.localPresence.keys()].flatMap((room) => [
      this.command.pexpire(this.keys.room(room, 'meta'), this.idleRoomTtlMs, 'GT'),
      this.command.pexpire(this.keys.room(room, 'history'), this.idleRoomTtlMs, 'GT'),
    ]))
  }

  private async reapIfDead (processId: string): Promise<void> {
    if ((await this.command.exists(this.keys.global(`proc:${processId}`))) === 1) return
    // One survivor reaps a dead process.
    const lock = this.keys.global(`reap:${processId}`)
    if ((await this.command.set(lock, this.processId, 'PX', this.processTtlMs, 'NX')) === null) return
    const malformed = (entry: string) => this.log?.warn({ entry }, 'fastify-rooms: dropped a malformed presence entry of a dead process')
    for (const { room, connectionId, userId } of await this.topology.deadEntries(this.command, processId, malformed)) {
      const last = await this.run<string | null>(PRESENCE_LEAVE, this.topology.presenceKeys(room, processId), this.topology.leaveArgs(room, connectionId))
      if (last !== null) this.delivery?.presenceChanged(room, userId, 'leave')
    }
    await this.command.del(...this.topology.processIndexKeys(processId), lock)
    await this.command.srem(this.keys.global('procs'), processId)
  }
}

function redactUrl (url: string): string {
  return url.replace(/\/\/[^@/]*@/, '//***@')
}

/** A broker for many processes sharing one Redis (>= 6.2) or a Redis Cluster (>= 7, sharded pub/sub). */
export function redisBroker (options: RedisBrokerOptions): Broker {
  return new RedisBroker(options)
}

/**
 * A client's frame id, spelled so that no id can make a key that looks like another kind (a cluster's
 * `rooms()` finds rooms by their `}:users` suffix) or like the user's id index.
 */
function answerKey (answerId: string): string {
  return 'a.' + Buffer.from(answerId).toString('base64url')
}

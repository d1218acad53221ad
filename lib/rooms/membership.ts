// Membership and a connection's lifecycle: which sockets are open, who each one is, which rooms each is
// in (or joining), and the broker subscription of every room with local members. This module is the only
// writer of all of it: join, resume (all of it, in one place), leave, re-authorization after a token
// refresh, and a socket's close. Presence announcements go through presence.ts; fan-out (rooms.ts) only
// reads the local members kept here.
// Past 300 lines on purpose: client joins, server joins (and hooks that make them), leave with its grace
// and close all share admit/attach and the undo on failure; split apart, the single writer of membership
// would become several. What could leave did: resume.ts orchestrates resumes, presence.ts announcements.
import type { FastifyBaseLogger } from 'fastify'
import type { Broker, RoomPosition, StoredStream } from '../brokers/broker.js'
import type { StreamRelay } from './stream-relay.js'
import type { Connection } from '../socket/connection.js'
import type { Stats } from '../observability/metrics.js'
import { HookTimeout, runHook } from './hooks.js'
import type { Presence } from './presence.js'
import { CloseCode, directRoomFrame, ErrorCode, FrameError } from '../protocol/protocol.js'
import type { RoomPolicy } from '../config/namespaces.js'
import type { ConnectContext, JoinPosition, RoomMember, RoomsApi, RoomsUser } from '../types.js'

export interface MembershipOptions {
  leaveGraceMs: number
  maxRoomsPerConnection: number
  roomPolicy: (room: string) => RoomPolicy
  onConnect: ((ctx: ConnectContext) => void | Promise<void>) | undefined
  onDisconnect: ((ctx: ConnectContext, close: { code: number; reason: string }) => void | Promise<void>) | undefined
  hookTimeoutMs: number
  maxBufferedBytes: number
}

export interface JoinAck extends RoomPosition {
  room: string
  members?: RoomMember[]
  /** Presence 'count' rooms: how many users are in the room. */
  count?: number
  /** Set when `members` is not everyone (a big room): how many users are in the room. */
  memberCount?: number
}

/** A join's answer names at most this many members, in at most this many bytes (and a quarter of maxBufferedBytes). */
const MAX_ACK_MEMBERS = 100
const MAX_ACK_MEMBER_BYTES = 65_536
/** A presence leave the broker refused is tried this many times in all. */
const PRESENCE_LEAVE_TRIES = 8

interface MemberState {
  user: RoomsUser
  rooms: Set<string> | undefined
  /** Rooms whose join is being authorized; they count toward maxRoomsPerConnection. */
  pendingJoins: Set<string> | undefined
  /** Rooms the server put this socket into, with the seq of the `joined` frame: a resume replays into them. */
  serverJoined: Map<string, number> | undefined
  /** Server-side joins under way: a client's join or resume of the room waits for them to settle. */
  serverJoining: Map<string, Promise<unknown>> | undefined
}
const NO_ROOMS: ReadonlySet<string> = new Set()
// The writable side of each Member: only this module holds it.
const states = new WeakMap<Member, MemberState>()

/** Who one socket is and which rooms it is in, as everyone but this module sees it: read-only. */
export class Member {
  constructor (user: RoomsUser) {
    // The sets are made on first use: most sockets are in few rooms, and many never join one from the server.
    states.set(this, { user, rooms: undefined, pendingJoins: undefined, serverJoined: undefined, serverJoining: undefined })
  }

  get user (): RoomsUser {
    return states.get(this)!.user
  }

  get rooms (): ReadonlySet<string> {
    return states.get(this)!.rooms ?? NO_ROOMS
  }
}

function stateOf (connection: Connection): MemberState {
  return states.get(connection.member)!
}

/** A client's join: its ack, the open streams it gives, and what to send once the ack is out. */
export interface JoinResult {
  ack: JoinAck
  streams?: StoredStream[]
  announced?: (() => void) | undefined
  /** Sends the latest event (latestOnJoin), then the live events and appends held since the join began. */
  release?: () => void
  /** The latest event's type, when it is sent (counted as sent). */
  latestType?: string
}

export class Membership {
  readonly connections = new Set<Connection>()
  private readonly byId = new Map<string, Connection>()
  private readonly byUser = new Map<string, Set<Connection>>()
  private readonly localRooms = new Map<string, Set<Connection>>()
  /** The broker subscription of each local room, settled or in flight. */
  private readonly subscriptions = new Map<string, Promise<void>>()
  private whenEmpty: (() => void) | undefined
  private readonly leaving = new Set<Promise<void>>()
  /** Presence leaves of closed sockets waiting out leaveGraceMs, and presence leaves to try again. */
  private readonly graces = new Set<NodeJS.Timeout>()
  constructor (
    private readonly options: MembershipOptions,
    private readonly broker: Broker,
    private readonly presence: Presence,
    private readonly stats: Pick<Stats, 'resume' | 'messageOut'>,
    private readonly log: FastifyBaseLogger,
    /** The API handed to hooks: the registry's, made after this module (it reads membership, not the other way round). */
    private readonly api: () => RoomsApi,
    /** Told of the open streams a joiner is given, so their appends reach it. */
    private readonly streams?: Pick<StreamRelay, 'seen'>
  ) {}

  /** The room's open streams, read for a joiner (after it became a member, so no append falls between). */
  async openStreams (room: string): Promise<StoredStream[]> {
    const open = await this.broker.openStreams?.(room) ?? []
    for (const stored of open) this.streams?.seen(room, stored.seq, stored.info)
    return open
  }

  member (user: RoomsUser): Member {
    return new Member(user)
  }

  connectionsOf (userId: string): number {
    return this.byUser.get(userId)?.size ?? 0
  }

  /** This process's sockets of a user (for sendToUser and disconnectUser). */
  ownConnections (userId: string): ReadonlySet<Connection> | undefined {
    return this.byUser.get(userId)
  }

  /** This process's socket with that connection id, if it has it. */
  connection (connectionId: string): Connection | undefined {
    return this.byId.get(connectionId)
  }

  /** This process's sockets in a room (for fan-out). */
  localMembers (room: string): ReadonlySet<Connection> | undefined {
    return this.localRooms.get(room)
  }

  roomCount (): number {
    return this.localRooms.size
  }

  memberCount (): number {
    let members = 0
    for (const local of this.localRooms.values()) members += local.size
    return members
  }

  add (connection: Connection): void {
    this.connections.add(connection)
    this.byId.set(connection.id, connection)
    let own = this.byUser.get(connection.user.id)
    if (own === undefined) {
      own = new Set()
      this.byUser.set(connection.user.id, own)
    }
    own.add(connection)
  }

  /**
   * An admitted socket's life starts: onConnect runs before its first frame (frames wait, in order). A
   * FrameError from it closes the socket 1008 with its message; another throw, or no end within
   * hookTimeoutMs, closes it 1011. Either way nothing escapes to the process or to other sockets.
   */
  open (connection: Connection): void {
    const onConnect = this.options.onConnect
    // A broker that routes a user's messages to where the user is (Redis Cluster) learns of the user's first
    // socket here; its frames wait until that holds, so nothing sent to the user after them is missed.
    const userReady = this.byUser.get(connection.user.id)?.size === 1 ? this.broker.userConnected?.(connection.user.id) : undefined
    if (onConnect === undefined && userReady === undefined) return
    connection.runFirst(async () => {
      if (userReady !== undefined) {
        try {
          await userReady
        } catch (err) {
          connection.log.warn({ err }, 'fastify-rooms: the broker could not route this user\'s messages here; closing')
          return connection.close(CloseCode.tryAgainLater, 'broker unavailable')
        }
      }
      if (onConnect === undefined) return
      try {
        await runHook(async () => onConnect(this.context(connection)), this.options.hookTimeoutMs)
      } catch (err) {
        if (err instanceof FrameError) return connection.close(CloseCode.policyViolation, err.message)
        if (err instanceof HookTimeout) connection.log.warn({ timeoutMs: this.options.hookTimeoutMs }, 'fastify-rooms: onConnect did not finish in time; closing')
        else connection.log.error({ err }, 'fastify-rooms: onConnect failed; closing')
        connection.close(CloseCode.internalError, 'internal error')
      }
    })
  }

  private context (connection: Connection): ConnectContext {
    return {
      connection,
      user: connection.user,
      log: connection.log,
      rooms: this.api(),
      join: (room) => this.serverJoin(connection, room),
      leave: (room) => this.serverLeave(connection, room),
    }
  }

  /** Puts the local sockets a server-side join or leave is for into the room, or out of it; failures are logged. */
  applyChange (action: 'join' | 'leave', room: string, target: { userId: string } | { connectionId: string }): void {
    const targets = 'userId' in target
      ? [...this.byUser.get(target.userId) ?? []]
      : [this.byId.get(target.connectionId)].filter((connection) => connection !== undefined)
    for (const connection of targets) {
      const change = action === 'join' ? this.serverJoin(connection, room) : this.serverLeave(connection, room)
      change.catch((err: unknown) => connection.log.warn({ err, room, action }, 'fastify-rooms: server-side membership change failed'))
    }
  }

  /**
   * A join decided by the server (authorizeJoin is not consulted; maxRoomsPerConnection still applies): the
   * socket gets a `joined` frame with the room's position, so its client resumes the room after a reconnect.
   */
  async serverJoin (connection: Connection, room: string): Promise<JoinPosition> {
    if (connection.rooms.has(room)) return this.joinAck(room)
    const state = stateOf(connection)
    const joining = this.joinFromServer(connection, room)
    ;(state.serverJoining ??= new Map()).set(room, joining)
    try {
      return await joining
    } finally {
      state.serverJoining?.delete(room)
      if (state.serverJoining?.size === 0) state.serverJoining = undefined
    }
  }

  /**
   * Resolves once a server-side join of the room under way on this socket has succeeded or failed. A
   * client's join or resume waits for it: until then the socket looks joined without its `joined` frame,
   * and a resume would be refused as "already joined" (the fault campaign found it on PostgreSQL).
   */
  async serverJoinSettled (connection: Connection, room: string): Promise<void> {
    const joining = stateOf(connection).serverJoining?.get(room)
    if (joining !== undefined) await joining.catch(() => {})
  }

  private async joinFromServer (connection: Connection, room: string): Promise<JoinPosition> {
    await this.admit(connection, room, { authorized: true, capped: false })
    // The client learns of the room from the `joined` frame: live events wait until it is out.
    connection.holdLive(room)
    let announced: (() => void) | undefined
    try {
      announced = await this.attach(connection, room)
      const ack = await this.joinAck(room)
      const streams = await this.openStreams(room)
      const { room: _room, ...position } = ack
      connection.notePosition(room, ack.seq, ack.epoch)
      const payload = streams.length === 0 ? position : { ...position, streams: streams.map((stored) => JSON.parse(stored.frame) as unknown) }
      if (connection.sendFrame(directRoomFrame('joined', room, payload))) this.stats.messageOut('joined')
      connection.finishReplay(room, [], ack, [], streams)
      const state = stateOf(connection)
      ;(state.serverJoined ??= new Map()).set(room, ack.seq)
      return ack
    } catch (err) {
      connection.cancelReplay(room)
      await this.leave(connection, room).catch(() => {})
      throw err
    } finally {
      announced?.()
    }
  }

  async serverLeave (connection: Connection, room: string): Promise<void> {
    if (!connection.rooms.has(room)) return
    if (connection.sendFrame(directRoomFrame('left', room, { reason: 'server' }))) this.stats.messageOut('left')
    await this.leave(connection, room)
  }

  /** A socket closed: it leaves every room (presence `leave` for its user's last socket there), then onDisconnect runs. */
  remove (connection: Connection, code: number, reason: string): void {
    if (!this.connections.delete(connection)) return
    this.byId.delete(connection.id)
    const own = this.byUser.get(connection.user.id)
    own?.delete(connection)
    if (own?.size === 0) {
      this.byUser.delete(connection.user.id)
      this.broker.userDisconnected?.(connection.user.id)
    }
    for (const room of connection.rooms) {
      const leaving = this.leave(connection, room, this.options.leaveGraceMs).catch((err: unknown) => this.log.error({ err, room }, 'fastify-rooms: leaving a room on close failed'))
      this.track(leaving)
    }
    const onDisconnect = this.options.onDisconnect
    if (onDisconnect !== undefined) {
      this.track(runHook(async () => onDisconnect(this.context(connection), { code, reason }), this.options.hookTimeoutMs).catch((err: unknown) => {
        if (err instanceof HookTimeout) connection.log.warn({ timeoutMs: this.options.hookTimeoutMs }, 'fastify-rooms: onDisconnect did not finish in time')
        else connection.log.error({ err }, 'fastify-rooms: onDisconnect failed')
      }))
    }
    if (this.connections.size === 0) this.whenEmpty?.()
  }

  /** Shutdown waits for these (leaves, onDisconnect), so the broker is not closed under them. */
  private track (work: Promise<void>): void {
    this.leaving.add(work)
    void work.finally(() => this.leaving.delete(work))
  }

  /**
   * Joins a room. Local membership starts before the position is read, so every event with
   * seq > ack.seq reaches this socket. Presence is announced by the caller after the ack is sent.
   */
  async join (connection: Connection, room: string): Promise<JoinResult> {
    await this.serverJoinSettled(connection, room)
    if (connection.rooms.has(room)) return { ack: await this.joinAck(room) }
    await this.admit(connection, room, { authorized: false, capped: true })
    // Live events and appends wait until the ack is out (the caller calls `release`): the ack may give
    // the room's open streams, whose appends must follow it.
    connection.holdLive(room)
    let announced: (() => void) | undefined
    try {
      announced = await this.attach(connection, room)
      const ack = await this.joinAck(room)
      const streams = await this.openStreams(room)
      if (this.options.roomPolicy(room).latestOnJoin && ack.seq > 0) {
        // The ack then says "every event after seq - 1", and the latest event follows it.
        const latest = (await this.broker.history(room, ack.seq - 1)).events.find((event) => event.seq === ack.seq)
        if (latest !== undefined) {
          connection.notePosition(room, ack.seq - 1, ack.epoch)
          const type = (JSON.parse(latest.frame) as { type: string }).type
          return { ack: { ...ack, seq: ack.seq - 1 }, streams, announced, release: () => connection.finishReplay(room, [latest], { seq: ack.seq - 1, epoch: ack.epoch }, [], streams), latestType: type }
        }
      }
      connection.notePosition(room, ack.seq, ack.epoch)
      return { ack, streams, announced, release: () => connection.finishReplay(room, [], ack, [], streams) }
    } catch (err) {
      announced?.()
      connection.cancelReplay(room)
      await this.leave(connection, room).catch(() => {})
      throw err
    }
  }

  get maxRoomsPerConnection (): number {
    return this.options.maxRoomsPerConnection
  }

  /** For resume.ts: the seq of the `joined` frame of a room the server put this socket into, used up by this call. */
  takeServerJoin (connection: Connection, room: string): number | undefined {
    const state = stateOf(connection)
    const joinedAt = state.serverJoined?.get(room)
    state.serverJoined?.delete(room)
    return joinedAt
  }

  isServerJoined (connection: Connection, room: string): boolean {
    return stateOf(connection).serverJoined?.has(room) === true
  }

  /** The room's authorizeJoin (its namespace's, or the top-level one); throws `forbidden` when it does not answer true. */
  async authorize (connection: Connection, room: string): Promise<void> {
    const { authorizeJoin } = this.options.roomPolicy(room)
    const allowed = authorizeJoin === undefined || (await authorizeJoin(connection.user, room)) === true
    if (!allowed) throw new FrameError(ErrorCode.forbidden, `not allowed to join "${room}"`)
  }

  /**
   * Limits, and authorizeJoin unless the caller already ran it; throws the FrameError to answer with.
   * `capped`: the room's maxMembers applies (client joins and resumes; the server's own joins are not capped).
   */
  async admit (connection: Connection, room: string, { authorized, capped }: { authorized: boolean; capped: boolean }): Promise<void> {
    const state = stateOf(connection)
    if (state.pendingJoins?.has(room) === true) throw new FrameError(ErrorCode.invalidMessage, `a join of "${room}" is already in progress`)
    if ((state.rooms?.size ?? 0) + (state.pendingJoins?.size ?? 0) >= this.options.maxRoomsPerConnection) {
      throw new FrameError(ErrorCode.tooManyRooms, `a connection may join at most ${this.options.maxRoomsPerConnection} rooms`)
    }
    ;(state.pendingJoins ??= new Set()).add(room)
    try {
      if (!authorized) await this.authorize(connection, room)
      const { maxMembers } = this.options.roomPolicy(room)
      if (capped && maxMembers !== Infinity) {
        // Counted across processes; two joins racing for the last place may both get in.
        if (await this.presence.count(room) >= maxMembers && !(await this.presence.isPresent(room, connection.user.id))) {
          throw new FrameError(ErrorCode.roomFull, `"${room}" is full (${maxMembers} members)`)
        }
      }
    } finally {
      state.pendingJoins?.delete(room)
      if (state.pendingJoins?.size === 0) state.pendingJoins = undefined
    }
    if (!connection.isOpen) throw closedDuringJoin()
  }

  /**
   * Local membership, the broker subscription and presence. When this is the user's first connection in
   * the room, its presence `join` is queued now (so it stays ahead of any later `leave`) and published
   * once the caller calls the returned function, after its ack.
   */
  async attach (connection: Connection, room: string): Promise<(() => void) | undefined> {
    const state = stateOf(connection)
    ;(state.rooms ??= new Set()).add(room)
    try {
      let local = this.localRooms.get(room)
      if (local === undefined) {
        local = new Set()
        this.localRooms.set(room, local)
        this.subscriptions.set(room, this.broker.subscribe(room))
      }
      local.add(connection)
      // Every joiner waits for the subscription, not only the first: events must flow before the position is read.
      await this.subscriptions.get(room)
      // Left (the socket closed) meanwhile: recording presence now would leave a ghost nobody removes.
      if (!connection.rooms.has(room)) throw closedDuringJoin()
      // A leave that starts from here on reaches the broker after this join, and is queued after it.
      const info = this.presence.infoOf(connection)
      const first = await this.broker.presenceJoin(room, connection.user.id, connection.id, info)
      if (!first) return undefined
      const { presence } = this.options.roomPolicy(room)
      if (presence === 'count') this.presence.countChanged(room)
      if (presence !== true) return undefined
      let release!: () => void
      const acked = new Promise<void>((resolve) => (release = resolve))
      void this.presence.announce(room, connection.user.id, 'join', acked, info)
      return release
    } catch (err) {
      // Undo what was done, so a failed join leaves no half-member behind.
      await this.leave(connection, room).catch(() => {})
      throw err
    }
  }

  /**
   * After an `auth` refresh: the socket is the token's user now (the same id, maybe new claims) and expires
   * with it; every joined room is authorized again for the new claims, and the rooms now refused are left,
   * each named in a `left` frame (`payload.reason: 'forbidden'`).
   */
  async reauthenticate (connection: Connection, user: RoomsUser, exp: number | undefined): Promise<void> {
    stateOf(connection).user = user
    connection.expireAt(exp)
    for (const room of [...connection.rooms]) {
      if (this.options.roomPolicy(room).authorizeJoin === undefined) continue
      try {
        await this.authorize(connection, room)
        continue
      } catch (err) {
        // A throwing authorizeJoin fails closed: the room is left, like a refusal.
        if (!(err instanceof FrameError)) connection.log.error({ err, room }, 'fastify-rooms: authorizeJoin failed during a token refresh; leaving the room')
      }
      if (!connection.rooms.has(room)) continue
      if (connection.sendFrame(directRoomFrame('left', room, { reason: 'forbidden' }))) this.stats.messageOut('left')
      await this.leave(connection, room)
    }
  }

  /**
   * Leaves a room; presence `leave` is published when it was this user's last connection there. With a
   * grace (a closed socket), the presence entry stays for `graceMs` first: a socket of the same user that
   * joins or resumes meanwhile, on any process, finds the user present (no `join`), and the late removal
   * then finds it still there (no `leave`).
   */
  async leave (connection: Connection, room: string, graceMs = 0): Promise<void> {
    stateOf(connection).serverJoined?.delete(room)
    if (stateOf(connection).rooms?.delete(room) !== true) return
    connection.clearFence(room)
    connection.noteLeft(room)
    // From here the socket is out of the room, whatever the broker answers next: a leave is never answered
    // with an error after it took effect (the fault campaign found `unavailable` for a leave that had).
    const local = this.localRooms.get(room)
    if (local !== undefined) {
      local.delete(connection)
      if (local.size === 0) {
        this.localRooms.delete(room)
        this.subscriptions.delete(room)
        // A subscription the broker could not drop now only brings events nobody here receives.
        await this.broker.unsubscribe(room).catch((err: unknown) => this.log.warn({ err, room }, 'fastify-rooms: unsubscribing from an empty room failed'))
      }
    }
    const removal = { room, userId: connection.user.id, connection }
    if (graceMs === 0) return this.removePresence(removal, 0)
    this.later(() => this.track(this.removePresence(removal, 0)), graceMs)
  }

  /**
   * Removes a left socket's presence entry, announcing the user's `leave` when it was her last socket there.
   * A broker away now is tried again with a growing delay (up to about a minute over 8 tries): an entry
   * left behind would show a member who is gone to every process.
   */
  private async removePresence (removal: { room: string; userId: string; connection: Connection }, attempt: number): Promise<void> {
    // Back in the room since (a join after the leave): the entry is its own again, not one to remove.
    if (attempt > 0 && removal.connection.rooms.has(removal.room)) return
    try {
      const last = await this.broker.presenceLeave(removal.room, removal.userId, removal.connection.id)
      if (last) this.presence.changed(removal.room, removal.userId, 'leave')
    } catch (err) {
      if (attempt + 1 >= PRESENCE_LEAVE_TRIES) {
        this.log.error({ err, room: removal.room }, 'fastify-rooms: a presence leave failed; giving up (the entry goes when this process does)')
        return
      }
      this.log.warn({ err, room: removal.room, attempt }, 'fastify-rooms: a presence leave failed; trying again')
      this.later(() => this.track(this.removePresence(removal, attempt + 1)), Math.min(30_000, 250 * 2 ** attempt))
    }
  }

  /** Runs `task` after `delayMs` unless the plugin closes first (dropGraces). */
  private later (task: () => void, delayMs: number): void {
    const timer = setTimeout(() => {
      this.graces.delete(timer)
      task()
    }, delayMs)
    timer.unref()
    this.graces.add(timer)
  }

  /**
   * At shutdown: the presence leaves still in their grace are not published from here. Returns whether
   * there were any: the broker then lets this process's entries linger for the grace (Redis: survivors
   * remove them and publish the leaves of users who did not come back elsewhere).
   */
  dropGraces (): boolean {
    const any = this.graces.size > 0
    for (const timer of this.graces) clearTimeout(timer)
    this.graces.clear()
    return any
  }

  async joinAck (room: string): Promise<JoinAck> {
    const position = await this.broker.position(room)
    const { presence } = this.options.roomPolicy(room)
    if (presence === false) return { room, ...position }
    if (presence === 'count') return { room, ...position, count: await this.presence.count(room) }
    // A big room's whole member list would not fit a joiner's send buffer: some members and the total.
    const { members, total } = await this.presence.sample(room, MAX_ACK_MEMBERS, Math.min(MAX_ACK_MEMBER_BYTES, this.options.maxBufferedBytes / 4))
    return total > members.length ? { room, ...position, members, memberCount: total } : { room, ...position, members }
  }

  members (room: string): Promise<RoomMember[]> {
    return this.presence.members(room)
  }

  /** Closes every socket with 1001 and resolves once all have closed and left; stragglers are cut after timeoutMs. */
  async shutdown (timeoutMs: number): Promise<void> {
    await this.closeAll(timeoutMs)
    await Promise.allSettled(this.leaving)
  }

  private async closeAll (timeoutMs: number): Promise<void> {
    if (this.connections.size === 0) return
    const empty = new Promise<void>((resolve) => {
      this.whenEmpty = resolve
    })
    for (const connection of this.connections) connection.close(CloseCode.goingAway, 'server shutting down')
    const cutoff = setTimeout(() => {
      for (const connection of this.connections) connection.terminate()
    }, timeoutMs)
    cutoff.unref()
    await empty
    clearTimeout(cutoff)
  }
}

function closedDuringJoin (): FrameError {
  return new FrameError(ErrorCode.invalidMessage, 'connection closed during join')
}

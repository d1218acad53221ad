// Resume: a reconnecting client's rooms, each re-joined with what it missed since its last seq — the
// retained events, then the live ones that arrived meanwhile, each once and in order — or a `reset`. All
// of it lives here; the membership writes it needs (admit, attach, leave) are membership.ts's.
import type { EventBroker, RoomPosition } from '../brokers/broker.js'
import type { Connection } from '../socket/connection.js'
import type { Membership } from './membership.js'
import type { Stats } from '../observability/metrics.js'
import { directRoomFrame, ErrorCode, FrameError, isRoomName, type ErrorDetail } from '../protocol/protocol.js'

export type ResumeOutcome =
  | { result: 'replayed'; seq: number; epoch: string; replayed: number }
  | { result: 'reset'; seq: number; epoch: string }
  | { result: 'error'; code: string; message: string }

/**
 * Re-joins rooms after a reconnect, replaying what was missed. Each room is authorized before anything
 * about it is read, so a refused room reveals nothing. Positions ahead of an authorized room make the
 * whole frame invalid (a client bug, better loud than a silent hang); a room that cannot be resumed
 * (forbidden, too many rooms) is reported in its outcome and does not stop the others. The caller
 * sends the ack, then calls `announce` (presence joins follow the ack).
 */
export class Resumer {
  constructor (
    private readonly membership: Membership,
    private readonly broker: EventBroker,
    private readonly stats: Pick<Stats, 'resume'>
  ) {}

  resume (connection: Connection, rooms: Record<string, RoomPosition>): Promise<{ outcomes: Record<string, ResumeOutcome>; announce: () => void }> {
    return resumeRooms(this.membership, this.broker, this.stats, connection, rooms)
  }
}

async function resumeRooms (membership: Membership, broker: EventBroker, stats: Pick<Stats, 'resume'>, connection: Connection, rooms: Record<string, RoomPosition>): Promise<{ outcomes: Record<string, ResumeOutcome>; announce: () => void }> {
  const entries = Object.entries(rooms)
  if (entries.length > membership.maxRoomsPerConnection) {
    throw new FrameError(ErrorCode.tooManyRooms, `a connection may join at most ${membership.maxRoomsPerConnection} rooms`)
  }
  const errors: ErrorDetail[] = []
  for (const [room] of entries) {
    if (!isRoomName(room)) errors.push({ path: resumePath(room), message: 'is not a room name (1 to 128 characters of well-formed text without control characters)' })
  }
  if (errors.length > 0) throw new FrameError(ErrorCode.invalidMessage, 'resume positions are not valid', { errors })

  const outcomes: Record<string, ResumeOutcome> = {}
  const authorized: typeof entries = []
  for (const [room, from] of entries) {
    if (membership.isServerJoined(connection, room)) {
      // Joined by the server on this connection (onConnect): the client's position says what it lacks.
      outcomes[room] = await catchUp(membership, broker, stats, connection, room, from)
      continue
    }
    if (connection.rooms.has(room)) {
      outcomes[room] = { result: 'error', code: ErrorCode.invalidMessage, message: 'already joined on this connection' }
      continue
    }
    try {
      await membership.authorize(connection, room)
      authorized.push([room, from])
    } catch (err) {
      if (!(err instanceof FrameError)) throw err
      outcomes[room] = { result: 'error', code: err.code, message: err.message }
    }
  }
  for (const [room, from] of authorized) {
    const current = await broker.peekPosition(room)
    if (current !== undefined && current.epoch === from.epoch && from.seq > current.seq) errors.push({ path: `${resumePath(room)}/seq`, message: `is ahead of the room (its seq is ${current.seq})` })
  }
  if (errors.length > 0) throw new FrameError(ErrorCode.invalidMessage, 'resume positions are not valid', { errors })

  const announced: Array<() => void> = []
  const announce = () => {
    for (const release of announced) release()
  }
  for (const [room, from] of authorized) {
    try {
      const resumed = await resumeRoom(membership, broker, stats, connection, room, from)
      outcomes[room] = resumed.outcome
      if (resumed.announced !== undefined) announced.push(resumed.announced)
    } catch (err) {
      if (!(err instanceof FrameError)) {
        announce()
        throw err
      }
      outcomes[room] = { result: 'error', code: err.code, message: err.message }
    }
  }
  return { outcomes, announce }
}

/**
 * Joins a room and sends what the socket missed since `from`: the retained events after from.seq, then
 * the live events that arrived meanwhile, each once and in order; or a `reset` when the epoch changed or
 * history no longer reaches back to from.seq + 1.
 */
async function resumeRoom (membership: Membership, broker: EventBroker, stats: Pick<Stats, 'resume'>, connection: Connection, room: string, from: RoomPosition): Promise<{ outcome: ResumeOutcome; announced?: (() => void) | undefined }> {
  // The caller authorized the room before reading anything about it.
  await membership.admit(connection, room, { authorized: true, capped: true })
  // Hold live events back from before membership starts until the replay is out.
  connection.holdLive(room)
  let announced: (() => void) | undefined
  try {
    announced = await membership.attach(connection, room)
    return { outcome: await replayOrReset(broker, stats, connection, room, from), announced }
  } catch (err) {
    announced?.()
    connection.cancelReplay(room)
    await membership.leave(connection, room).catch(() => {})
    throw err
  }
}

/**
 * A resume of a room the server already put this socket into. While no live event has gone out since
 * the join (its fence stands), the events after the client's position are replayed exactly; once one
 * has, a replay would arrive out of order, so the client gets a `reset` instead.
 */
async function catchUp (membership: Membership, broker: EventBroker, stats: Pick<Stats, 'resume'>, connection: Connection, room: string, from: RoomPosition): Promise<ResumeOutcome> {
  const joinedAt = membership.takeServerJoin(connection, room)
  if (joinedAt !== undefined && connection.fenceOf(room) === joinedAt) {
    connection.holdLive(room)
    try {
      return await replayOrReset(broker, stats, connection, room, from)
    } catch (err) {
      connection.finishReplay(room, [], from.seq)
      throw err
    }
  }
  const position = await broker.position(room)
  connection.notePosition(room, position.seq, position.epoch)
  connection.sendFrame(directRoomFrame('reset', room, position))
  stats.resume('reset')
  return { result: 'reset', ...position }
}

function resumePath (room: string): string {
  return `/payload/rooms/${room.replaceAll('~', '~0').replaceAll('/', '~1')}`
}

/**
 * Replays the room's events after the client's position when history still holds them in its epoch
 * (each once, then the live ones held meanwhile); otherwise a `reset` to the room's position.
 */
async function replayOrReset (broker: EventBroker, stats: Pick<Stats, 'resume'>, connection: Connection, room: string, from: RoomPosition): Promise<ResumeOutcome> {
  const slice = await broker.history(room, from.seq)
  const { seq, epoch } = slice.position
  if (epoch === from.epoch && slice.complete) {
    connection.notePosition(room, from.seq, epoch)
    const replayed = connection.finishReplay(room, slice.events, from.seq)
    stats.resume('replayed')
    return { result: 'replayed', seq, epoch, replayed }
  }
  connection.notePosition(room, seq, epoch)
  connection.sendFrame(directRoomFrame('reset', room, slice.position))
  connection.finishReplay(room, [], seq)
  stats.resume('reset')
  return { result: 'reset', seq, epoch }
}

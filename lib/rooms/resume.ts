// Resume: a reconnecting client's rooms, each re-joined with what it missed since its last seq — the
// retained events, then the live ones that arrived meanwhile, each once and in order — or a `reset`. All
// of it lives here; the membership writes it needs (admit, attach, leave) are membership.ts's.
import type { Broker, RoomPosition, StoredStream } from '../brokers/broker.js'
import type { Connection, StreamTail } from '../socket/connection.js'
import type { StreamRelay } from './stream-relay.js'
import type { Membership } from './membership.js'
import type { Stats } from '../observability/metrics.js'
import { directRoomFrame, ErrorCode, FrameError, isRoomName, type ErrorDetail } from '../protocol/protocol.js'
import { streamOfFrame } from '../protocol/stream-frames.js'

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
    private readonly broker: Broker,
    private readonly stats: Pick<Stats, 'resume'>,
    /** Told of the streams a resumer follows again, so their appends reach it. */
    private readonly streams?: Pick<StreamRelay, 'seen'>
  ) {}

  resume (connection: Connection, rooms: Record<string, ResumePosition>): Promise<{ outcomes: Record<string, ResumeOutcome>; announce: () => void }> {
    return resumeRooms({ membership: this.membership, broker: this.broker, stats: this.stats, streams: this.streams }, connection, rooms)
  }
}

/** Where a client stands in a room: its position, and the unfinished streams it holds (id → text length). */
export interface ResumePosition extends RoomPosition {
  streams?: Record<string, number>
}

interface Parts {
  membership: Membership
  broker: Broker
  stats: Pick<Stats, 'resume'>
  streams: Pick<StreamRelay, 'seen'> | undefined
}

async function resumeRooms (parts: Parts, connection: Connection, rooms: Record<string, ResumePosition>): Promise<{ outcomes: Record<string, ResumeOutcome>; announce: () => void }> {
  const { membership, broker } = parts
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
    await membership.serverJoinSettled(connection, room)
    if (membership.isServerJoined(connection, room)) {
      // Joined by the server on this connection (onConnect): the client's position says what it lacks.
      outcomes[room] = await catchUp(parts, connection, room, from)
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
      const resumed = await resumeRoom(parts, connection, room, from)
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
async function resumeRoom (parts: Parts, connection: Connection, room: string, from: ResumePosition): Promise<{ outcome: ResumeOutcome; announced?: (() => void) | undefined }> {
  const { membership } = parts
  // The caller authorized the room before reading anything about it.
  await membership.admit(connection, room, { authorized: true, capped: true })
  // Hold live events back from before membership starts until the replay is out.
  connection.holdLive(room)
  let announced: (() => void) | undefined
  try {
    announced = await membership.attach(connection, room)
    return { outcome: await replayOrReset(parts, connection, room, from), announced }
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
async function catchUp (parts: Parts, connection: Connection, room: string, from: ResumePosition): Promise<ResumeOutcome> {
  const { membership, broker, stats } = parts
  const joinedAt = membership.takeServerJoin(connection, room)
  connection.holdLive(room)
  try {
    if (joinedAt !== undefined && connection.fenceOf(room) === joinedAt) return await replayOrReset(parts, connection, room, from)
    const position = await broker.position(room)
    const tails = await streamTails(parts, room, from)
    connection.notePosition(room, position.seq, position.epoch)
    connection.sendFrame(directRoomFrame('reset', room, position))
    connection.finishReplay(room, [], position, tails)
    stats.resume('reset')
    return { result: 'reset', ...position }
  } catch (err) {
    connection.finishReplay(room, [], from)
    throw err
  }
}

/**
 * The rest of each stream the client holds unfinished (read after its live appends began to be held). A
 * stream the room does not have (gone with its history, or never one of it), or shorter than the client
 * claims, is answered aborted: the client stops waiting for it.
 */
async function streamTails (parts: Parts, room: string, from: ResumePosition): Promise<StreamTail[]> {
  const tails: StreamTail[] = []
  for (const [id, offset] of Object.entries(from.streams ?? {})) {
    const stored = await parts.broker.stream?.(room, id)
    if (stored !== undefined && offset <= stored.info.text.length) {
      parts.streams?.seen(room, stored.seq, stored.info)
      tails.push({ stored, offset })
    } else {
      tails.push({ stored: unknownStream(id), offset })
    }
  }
  return tails
}

function unknownStream (id: string): StoredStream {
  return { seq: 0, frame: '', info: { id, state: 'aborted', text: '', reason: 'unknown stream' }, updatedAt: 0 }
}

/** A replayed open stream is followed on this process from where the replay leaves it. */
function followReplayed (parts: Parts, room: string, seq: number, frame: string): void {
  const info = streamOfFrame(frame)
  if (info !== undefined) parts.streams?.seen(room, seq, info)
}

function resumePath (room: string): string {
  return `/payload/rooms/${room.replaceAll('~', '~0').replaceAll('/', '~1')}`
}

/**
 * Replays the room's events after the client's position when history still holds them in its epoch
 * (each once, then the live ones held meanwhile); otherwise a `reset` to the room's position.
 */
async function replayOrReset (parts: Parts, connection: Connection, room: string, from: ResumePosition): Promise<ResumeOutcome> {
  const { broker, stats } = parts
  const slice = await broker.history(room, from.seq)
  const tails = await streamTails(parts, room, from)
  const { seq, epoch } = slice.position
  if (epoch === from.epoch && slice.complete) {
    for (const event of slice.events) if (event.stream?.open === true) followReplayed(parts, room, event.seq, event.frame)
    connection.notePosition(room, from.seq, epoch)
    const replayed = connection.finishReplay(room, slice.events, { seq: from.seq, epoch }, tails)
    stats.resume('replayed')
    return { result: 'replayed', seq, epoch, replayed }
  }
  connection.notePosition(room, seq, epoch)
  connection.sendFrame(directRoomFrame('reset', room, slice.position))
  connection.finishReplay(room, [], slice.position, tails)
  stats.resume('reset')
  return { result: 'reset', seq, epoch }
}

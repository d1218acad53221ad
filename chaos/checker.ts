// Past 300 lines: the checker is one reading of a campaign's history, each guarantee a pass over the same
// per-subscriber state; split, the passes would share that state through exports instead of locals.
//
// The checker: it reads a campaign's history (what every subscriber received, what every publisher was
// told, what the hosts ran) and reports every broken guarantee, each with the smallest window of records
// that shows it. It knows nothing of the processes; a history replayed through it gives the same verdict.
import { ErrorCode } from '../lib/index.js'
import type { CampaignHistory, Publish, Seen, SubscriberHistory } from './history.js'
import { streamTokens } from './protocol.js'

export type ViolationKind =
  | 'gap' | 'duplicate' | 'reorder' | 'divergence' | 'misplaced' | 'published-twice' | 'lost' | 'phantom'
  | 'stale' | 'ran-twice' | 'unanswered' | 'answered-twice' | 'stream-offset' | 'stream-text' | 'presence'
  | 'crash' | 'memory' | 'outside-room' | 'stuck' | 'undocumented-error'

export interface Violation {
  kind: ViolationKind
  /** Who saw it: a subscriber and room, a process, a request. */
  subject: string
  message: string
  /** The fewest records that show it. */
  window: unknown[]
}

export interface Verdict {
  violations: Violation[]
  /** Events received and checked (every room event of every subscriber). */
  eventsChecked: number
  publishesChecked: number
  requestsChecked: number
}

/** The error codes of the protocol reference: any other answer is a violation. */
const DOCUMENTED_CODES = new Set<string>(Object.values(ErrorCode))

/** Heap a host may hold after quiescence: every default budget of the campaign's load is far below it. */
export const MAX_HEAP_AFTER_QUIESCENCE = 256 * 1024 * 1024

interface RoomState {
  /** Next seq expected; undefined while not a member. */
  expected?: number
  epoch?: string
  seen: Set<number>
  /** When it was last (re)joined from a position, and when a reset or rejoin last moved it. */
  memberSince?: number
  coveredAfter: number[]
  gaps: Set<string>
}

export function check (history: CampaignHistory): Verdict {
  const violations: Violation[] = []
  const report = (kind: ViolationKind, subject: string, message: string, window: unknown[]) => violations.push({ kind, subject, message, window })
  // (room, epoch, seq) → the first pid seen there and by whom.
  const positions = new Map<string, { pid: string | undefined; by: string; record: Seen }>()
  // pid → every (epoch, seq) it was seen at.
  const pidSeen = new Map<string, Set<string>>()
  let eventsChecked = 0
  const states = new Map<SubscriberHistory, Map<string, RoomState>>()

  for (const subscriber of history.subscribers) {
    const rooms = new Map<string, RoomState>()
    states.set(subscriber, rooms)
    const room = (name: string) => {
      let state = rooms.get(name)
      if (state === undefined) rooms.set(name, state = { seen: new Set(), coveredAfter: [], gaps: new Set() })
      return state
    }
    const texts = new Map<string, { room: string; text: string; state: string; count: number }>()
    // A reset or a fresh join hands streams over again: texts held for that room start over.
    const forgetTexts = (room: string) => { for (const [id, text] of texts) if (text.room === room) texts.delete(id) }
    const seen = subscriber.seen
    for (let index = 0; index < seen.length; index++) {
      const record = seen[index]!
      const subject = `${subscriber.name} ${'room' in record ? record.room : ''}`.trim()
      const windowAround = () => windowOf(seen, index, 'room' in record ? record.room : undefined)
      switch (record.k) {
        case 'joined': {
          const state = room(record.room)
          moveTo(state, record.seq, record.epoch, record.at)
          state.memberSince = record.at
          forgetTexts(record.room)
          break
        }
        case 'reset': {
          const state = room(record.room)
          moveTo(state, record.seq, record.epoch, record.at)
          state.memberSince ??= record.at
          forgetTexts(record.room)
          break
        }
        case 'resumed': {
          const state = room(record.room)
          if (record.result === 'error') {
            state.expected = undefined
            state.memberSince = undefined
          } else if (record.result === 'replayed') {
            // A reset sent before this answer (the room renumbered during the replay) supersedes it.
            if (state.epoch !== undefined && record.epoch !== undefined && record.epoch !== state.epoch && state.expected !== undefined) break
            // The outcome's seq is where history was read; live events held meanwhile may have followed it.
            if (state.expected !== undefined && record.seq !== undefined && record.seq > state.expected - 1) {
              report('gap', subject, `a replay reached seq ${record.seq} while ${state.expected - 1} was the last event received`, windowAround())
            }
            if (record.epoch !== undefined) state.epoch = record.epoch
          }
          break
        }
        case 'left': {
          const state = room(record.room)
          state.expected = undefined
          state.memberSince = undefined
          break
        }
        case 'event': {
          const state = room(record.room)
          if (record.snapshot === true) {
            if (record.stream !== undefined) texts.set(record.stream.id, { room: record.room, text: record.stream.text, state: record.stream.state, count: record.stream.count })
            break
          }
          eventsChecked++
          if (state.expected === undefined) {
            if (record.type !== 'presence') report('outside-room', subject, `event seq ${record.seq} for a room it was not in`, windowAround())
            break
          }
          const key = `${record.room}|${state.epoch}|${record.seq}`
          const first = positions.get(key)
          if (first === undefined) positions.set(key, { pid: record.pid, by: subscriber.name, record })
          else if (first.pid !== record.pid) report('divergence', subject, `seq ${record.seq} of epoch ${state.epoch} is ${record.pid ?? record.type} here but ${first.pid ?? '(no pid)'} for ${first.by}`, [first.record, record])
          if (record.pid !== undefined) {
            let at = pidSeen.get(record.pid)
            if (at === undefined) pidSeen.set(record.pid, at = new Set())
            at.add(`${state.epoch}|${record.seq}`)
          }
          if (record.seq === state.expected) {
            state.expected++
          } else if (state.seen.has(record.seq)) {
            report('duplicate', subject, `seq ${record.seq} received again`, windowAround())
          } else if (record.seq < state.expected) {
            report('reorder', subject, `seq ${record.seq} arrived after seq ${state.expected - 1}`, windowAround())
          } else {
            const missing = missingLater(seen, index, record.room, state.expected, record.seq)
            if (missing.length > 0) {
              for (const seq of missing) state.gaps.add(`${state.epoch}|${seq}`)
              report('gap', subject, `seq ${missing.join(', ')} never arrived before seq ${record.seq}, and no reset`, windowAround())
            }
            state.expected = record.seq + 1
          }
          state.seen.add(record.seq)
          if (record.stream !== undefined) texts.set(record.stream.id, { room: record.room, text: record.stream.text, state: record.stream.state, count: record.stream.count })
          break
        }
        case 'append': {
          const stream = texts.get(record.id)
          if (stream === undefined) break
          if (record.offset !== stream.text.length) {
            report('stream-offset', subject, `append at offset ${record.offset} to a text of ${stream.text.length} characters`, windowAround())
          } else {
            stream.text += record.text
          }
          if (record.state !== undefined) stream.state = record.state
          break
        }
        default:
          break
      }
    }
    for (const [id, stream] of texts) {
      const expected = streamTokens(stream.count).join('')
      if (stream.state === 'done' && stream.text !== expected) report('stream-text', `${subscriber.name} stream ${id}`, 'a finished text differs from what was streamed', [{ got: stream.text.slice(-80), expected: expected.slice(-80), lengths: [stream.text.length, expected.length] }])
      if (stream.state === 'aborted' && !expected.startsWith(stream.text)) report('stream-text', `${subscriber.name} stream ${id}`, 'an aborted text is not a prefix of what was streamed', [{ got: stream.text.slice(-80) }])
    }
    checkRequests(subscriber, history, report)
  }

  checkPublishes(history.publishes, history, states, pidSeen, report)
  checkFinal(history, states, report)
  return {
    violations,
    eventsChecked,
    publishesChecked: history.publishes.length,
    requestsChecked: history.subscribers.reduce((sum, subscriber) => sum + subscriber.requests.length, 0),
  }
}

function moveTo (state: RoomState, seq: number, epoch: string, at: number): void {
  state.expected = seq + 1
  state.epoch = epoch
  state.seen = new Set()
  state.coveredAfter.push(at)
}

/** The seqs in [from, to) that never arrive for `room` after `index`, before the room is reset or rejoined. */
function missingLater (seen: Seen[], index: number, room: string, from: number, to: number): number[] {
  const later = new Set<number>()
  for (let i = index + 1; i < seen.length; i++) {
    const record = seen[i]!
    if (!('room' in record) || record.room !== room) continue
    if (record.k === 'reset' || record.k === 'joined' || record.k === 'left') break
    if (record.k === 'event') later.add(record.seq)
  }
  const missing: number[] = []
  for (let seq = from; seq < to; seq++) if (!later.has(seq)) missing.push(seq)
  return missing
}

/** The records of one room around `index`: the three before it, it, and the next one. */
function windowOf (seen: Seen[], index: number, room: string | undefined): Seen[] {
  const inRoom = (record: Seen) => room === undefined || !('room' in record) || record.room === room
  const before: Seen[] = []
  for (let i = index - 1; i >= 0 && before.length < 3; i--) if (inRoom(seen[i]!)) before.unshift(seen[i]!)
  const after: Seen[] = []
  for (let i = index + 1; i < seen.length && after.length < 1; i++) if (inRoom(seen[i]!)) after.push(seen[i]!)
  return [...before, seen[index]!, ...after]
}

type Report = (kind: ViolationKind, subject: string, message: string, window: unknown[]) => void

function checkRequests (subscriber: SubscriberHistory, history: CampaignHistory, report: Report): void {
  const answers = new Map<string, Seen[]>()
  for (const record of subscriber.seen) {
    if (record.k !== 'answer') continue
    const key = `${record.conn}|${record.id}`
    const list = answers.get(key) ?? []
    list.push(record)
    answers.set(key, list)
    if (list.length === 2) report('answered-twice', `${subscriber.name} request ${record.id}`, `two answers on connection ${record.conn}`, list)
  }
  for (const record of subscriber.seen) {
    if (record.k === 'answer' && !record.ok && record.code !== undefined && !DOCUMENTED_CODES.has(record.code)) {
      report('undocumented-error', `${subscriber.name} request ${record.id}`, `answered with the code ${record.code}, which the protocol does not document`, [record])
    }
  }
  const answered = new Set(subscriber.seen.flatMap((record) => record.k === 'answer' ? [record.id] : []))
  for (const request of subscriber.requests) {
    if (!answered.has(request.id) && subscriber.connected) report('unanswered', `${subscriber.name} request ${request.id}`, 'a request sent with an id got no ack or error', [request])
    const runs = runsOf(history).get(`${subscriber.user}|${request.id}`) ?? []
    if (runs.length < 2) continue
    if (!answersMayBeLost(history, runs)) report('ran-twice', `${subscriber.name} request ${request.id}`, `its handler ran ${runs.length} times`, runs)
  }
  // The package's client keeps its wire ids to itself: its user's runs are read by the id the host saw.
  if (subscriber.kind === 'client-ws' || subscriber.kind === 'client-sse') {
    for (const [key, runs] of runsOf(history)) {
      if (runs.length < 2 || runs[0]!.user !== subscriber.user) continue
      if (!answersMayBeLost(history, runs)) report('ran-twice', `${subscriber.name} request ${key.slice(subscriber.user.length + 1)}`, `its handler ran ${runs.length} times`, runs)
    }
  }
}

/** A broker fault's effect outlasts its heal: clients reconnect, a cluster's clients refresh their slots. */
const SETTLE_MS = 5000

/**
 * Whether a fault that loses stored answers or cuts a process off from them (docs/scaling.md: a retry is
 * then answered by running the handler again) was under way, or settling, while these runs happened.
 */
function answersMayBeLost (history: CampaignHistory, runs: CampaignHistory['handlerRuns']): boolean {
  const first = runs[0]!.at - 1000
  const last = runs[runs.length - 1]!.at
  return history.faults.some((fault) => fault.losesState && fault.at <= last && (fault.end ?? fault.at) + SETTLE_MS >= first)
}

const runsByRequest = new WeakMap<CampaignHistory, Map<string, CampaignHistory['handlerRuns']>>()

/** The hosts' handler runs by user and request id, indexed once per history. */
function runsOf (history: CampaignHistory): Map<string, CampaignHistory['handlerRuns']> {
  let index = runsByRequest.get(history)
  if (index === undefined) {
    index = new Map()
    for (const run of history.handlerRuns) {
      const key = `${run.user}|${run.id}`
      const list = index.get(key)
      if (list === undefined) index.set(key, [run])
      else list.push(run)
    }
    runsByRequest.set(history, index)
  }
  return index
}

/** What the publish pass asks of each subscriber, indexed once: a long run has millions of records. */
interface SubscriberIndex {
  pids: Set<string>
  /** room → when it entered (joined, reset) or left (left, a failed resume) the room, in order. */
  membership: Map<string, Array<{ at: number; inside: boolean }>>
  /** `room|seq` of every gap already reported. */
  gaps: Set<string>
}

function indexOf (subscriber: SubscriberHistory, rooms: Map<string, RoomState>): SubscriberIndex {
  const index: SubscriberIndex = { pids: new Set(), membership: new Map(), gaps: new Set() }
  for (const record of subscriber.seen) {
    if (record.k === 'event' && record.pid !== undefined) index.pids.add(record.pid)
    const inside = record.k === 'joined' || record.k === 'reset' ? true : record.k === 'left' || (record.k === 'resumed' && record.result === 'error') ? false : undefined
    if (inside === undefined || !('room' in record)) continue
    let moves = index.membership.get(record.room)
    if (moves === undefined) index.membership.set(record.room, moves = [])
    moves.push({ at: record.at, inside })
  }
  for (const [room, state] of rooms) for (const gap of state.gaps) index.gaps.add(`${room}|${gap.slice(gap.lastIndexOf('|') + 1)}`)
  return index
}

function checkPublishes (publishes: Publish[], history: CampaignHistory, states: Map<SubscriberHistory, Map<string, RoomState>>, pidSeen: Map<string, Set<string>>, report: Report): void {
  const indexes = new Map(history.subscribers.map((subscriber) => [subscriber, indexOf(subscriber, states.get(subscriber)!)]))
  for (const publish of publishes) {
    const at = pidSeen.get(publish.pid)
    if (publish.outcome === 'rolledback') {
      if (at !== undefined) report('phantom', `publish ${publish.pid}`, `an event of a rolled-back transaction was received at ${[...at].join(', ')}`, [publish])
      continue
    }
    if (at !== undefined) {
      const epochs = new Set([...at].map((position) => position.split('|')[0]))
      if (at.size > epochs.size) report('published-twice', `publish ${publish.pid}`, `one publish received at ${[...at].join(', ')}`, [publish])
      if (publish.outcome === 'acked' && publish.seq !== undefined && publish.seq !== 0 && ![...at].some((position) => position.endsWith(`|${publish.seq}`))) {
        report('misplaced', `publish ${publish.pid}`, `acked as seq ${publish.seq} but received at ${[...at].join(', ')}`, [publish])
      }
    }
    if (publish.outcome !== 'acked') continue
    for (const subscriber of history.subscribers) {
      const index = indexes.get(subscriber)!
      if (index.pids.has(publish.pid)) continue
      const state = states.get(subscriber)!.get(publish.room)
      if (state?.memberSince === undefined || state.memberSince >= publish.sentAt) continue
      if (!stayedJoined(index.membership.get(publish.room) ?? [], publish.sentAt)) continue
      if (state.coveredAfter.length > 0 && state.coveredAfter[state.coveredAfter.length - 1]! >= publish.sentAt) continue
      if (publish.seq !== undefined && index.gaps.has(`${publish.room}|${publish.seq}`)) continue
      report('lost', `${subscriber.name} ${publish.room}`, `acked publish ${publish.pid} (seq ${publish.seq}) never reached a member that stayed joined, with no reset after it`, [publish, ...lastRecords(subscriber, publish.room, 3)])
    }
  }
}

/** Inside the room when the publish was sent, and never out of it (left, a failed resume) after. */
function stayedJoined (moves: Array<{ at: number; inside: boolean }>, sentAt: number): boolean {
  let inside = false
  for (const move of moves) {
    if (move.at < sentAt) inside = move.inside
    else if (!move.inside) return false
  }
  return inside
}

function lastRecords (subscriber: SubscriberHistory, room: string, count: number): Seen[] {
  return subscriber.seen.filter((record) => 'room' in record && record.room === room).slice(-count)
}

function checkFinal (history: CampaignHistory, states: Map<SubscriberHistory, Map<string, RoomState>>, report: Report): void {
  for (const subscriber of history.subscribers) {
    if (!subscriber.connected) continue
    for (const room of subscriber.finalRooms) {
      const state = states.get(subscriber)!.get(room)
      const final = history.final.positions[room]
      if (final === undefined || state?.expected === undefined) continue
      if (state.expected - 1 !== final.seq || state.epoch !== final.epoch) {
        report('stale', `${subscriber.name} ${room}`, `ended at seq ${state.expected - 1} of ${state.epoch} while the room is at ${final.seq} of ${final.epoch}`, lastRecords(subscriber, room, 3))
      }
    }
  }
  for (const { process, room, users } of history.final.members) {
    const expected = [...new Set(history.subscribers.filter((subscriber) => subscriber.connected && subscriber.finalRooms.includes(room)).map((subscriber) => subscriber.user))].sort()
    if (JSON.stringify(users) !== JSON.stringify(expected)) {
      report('presence', `${process} ${room}`, 'members after quiescence differ from the connected members', [{ got: users, expected }])
    }
  }
  for (const name of history.stuck) report('stuck', name, 'not connected with its rooms joined and its requests answered once every fault had healed', [])
  for (const exit of history.unexpectedExits) report('crash', exit.process, `exited (code ${exit.code}, signal ${exit.signal}) without a fault causing it`, [exit])
  for (const { process, heapUsed } of history.final.memory) {
    if (heapUsed > MAX_HEAP_AFTER_QUIESCENCE) report('memory', process, `heap ${Math.round(heapUsed / 1048576)} MiB after quiescence`, [{ heapUsed }])
  }
}

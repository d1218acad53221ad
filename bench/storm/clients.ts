// One process's share of the reconnect storm's clients: our own client (fastify-rooms/client), each in one
// room joined on connect and resumed after every reconnect, each from its own loopback source address. It
// records, per client, when it was open again after the fault, every event's seq and every reset, and
// reports them when asked (IPC).
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import { createClient, type RoomsClient } from '../../lib/client/index.js'
import { BENCH_ORIGIN, BENCH_SECRET } from '../servers/common.js'
import { openInBatches } from './setup.js'

export interface StartCommand { cmd: 'start'; port: number; clients: Array<[user: number, room: string]> }
export type Command = StartCommand | { cmd: 'mark' } | { cmd: 'report' } | { cmd: 'close' }

export interface ClientReport {
  room: string
  /** The seq the client stood at when the fault began (events after it must all arrive, or a reset cover them). */
  markedSeq: number
  /** Seqs received after the mark, in arrival order. */
  seqs: number[]
  resets: number[]
  /** ms from the mark to open again (-1: not open again). */
  reopenedMs: number
  /** Open when it reported (a client may have been cut again while it resumed). */
  openNow: boolean
}

export interface Report { clients: ClientReport[]; refusals: Record<string, number> }

const sign = createSigner({ key: BENCH_SECRET, expiresIn: 3_600_000 })

interface Tracked { client: RoomsClient; room: string; lastSeq: number; markedSeq: number; seqs: number[]; resets: number[]; reopenedAt: number; wasClosed: boolean }
const tracked: Tracked[] = []
const refusals: Record<string, number> = {}
let markedAt = 0
let marked = false

function send (message: unknown): void {
  process.send!(message)
}

function start (command: StartCommand): void {
  const firstOpen = openInBatches(command.clients, ([user, room]) => {
    // Its own source address (127.2.x.y): twenty thousand clients and their reconnects need more ports than one address has.
    const localAddress = `127.2.${Math.floor(user / 250) % 250}.${1 + (user % 250)}`
    class SpreadWebSocket extends WebSocket {
      constructor (url: string, protocols?: string | string[]) {
        super(url, protocols, { origin: BENCH_ORIGIN, localAddress, perMessageDeflate: false })
      }
    }
    const client = createClient({ url: `ws://127.0.0.1:${command.port}/ws`, getToken: () => sign({ sub: `u${user}` }), WebSocket: SpreadWebSocket, rooms: [room] })
    const entry: Tracked = { client, room, lastSeq: 0, markedSeq: 0, seqs: [], resets: [], reopenedAt: 0, wasClosed: false }
    tracked.push(entry)
    let everOpen = false
    client.on('state', (state) => {
      if (state === 'open') {
        if (!everOpen) {
          everOpen = true
          firstOpen()
        }
        if (marked && entry.wasClosed && entry.reopenedAt === 0) entry.reopenedAt = performance.now()
      } else if (marked) {
        entry.wasClosed = true
      }
    })
    client.on('event', (frame: { seq?: number }) => {
      if (typeof frame.seq !== 'number') return
      entry.lastSeq = frame.seq
      if (marked) entry.seqs.push(frame.seq)
    })
    client.on('reset', ({ seq }: { seq: number }) => {
      entry.lastSeq = seq
      if (marked) entry.resets.push(seq)
    })
    client.on('error', (err) => {
      refusals[err.code] = (refusals[err.code] ?? 0) + 1
    })
  }, () => send({ type: 'started' }))
}

process.on('message', (command: Command) => {
  if (command.cmd === 'start') start(command)
  else if (command.cmd === 'mark') {
    marked = true
    markedAt = performance.now()
    for (const entry of tracked) entry.markedSeq = entry.lastSeq
    for (const key of Object.keys(refusals)) delete refusals[key]
    send({ type: 'marked' })
  } else if (command.cmd === 'report') {
    const report: Report = {
      clients: tracked.map((entry) => ({ room: entry.room, markedSeq: entry.markedSeq, seqs: entry.seqs, resets: entry.resets, reopenedMs: entry.reopenedAt === 0 ? (entry.client.state === 'open' && !entry.wasClosed ? 0 : -1) : entry.reopenedAt - markedAt, openNow: entry.client.state === 'open' })),
      refusals,
    }
    send({ type: 'report', report })
  } else if (command.cmd === 'close') {
    for (const entry of tracked) entry.client.close()
    setTimeout(() => process.exit(0), 200)
  }
})

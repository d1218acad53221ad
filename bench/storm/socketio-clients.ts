// One process's share of the Socket.IO storm clients, speaking engine.io/Socket.IO over ws as
// socket.io-client does: `0{…}` open, `40{pid,offset}` to recover after a reconnect, `2`/`3` ping/pong,
// `42["event",{n},offset]` events; reconnects after 1 s ± 50 %, doubling to 5 s (its defaults). Same
// reports as clients.ts, with the payload's `n` as the seq.
import WebSocket from 'ws'
import type { Command, Report, StartCommand } from './clients.js'
import { openInBatches } from './setup.js'

interface Tracked { room: string; lastN: number; markedN: number; seqs: number[]; reopenedAt: number; wasClosed: boolean; open: boolean }
const tracked: Tracked[] = []
const refusals: Record<string, number> = {}
let markedAt = 0
let marked = false

function start (command: StartCommand): void {
  const firstOpen = openInBatches(command.clients, ([user, room]) => {
    const entry: Tracked = { room, lastN: 0, markedN: 0, seqs: [], reopenedAt: 0, wasClosed: false, open: false }
    tracked.push(entry)
    const localAddress = `127.3.${Math.floor(user / 250) % 250}.${1 + (user % 250)}`
    let pid: string | undefined
    let offset: string | undefined
    let attempt = 0
    let everOpen = false
    const connect = (): void => {
      const ws = new WebSocket(`ws://127.0.0.1:${command.port}/socket.io/?EIO=4&transport=websocket&room=${room}`, { localAddress, perMessageDeflate: false })
      ws.on('message', (data) => {
        const text = data.toString()
        if (text === '2') return ws.send('3')
        if (text.startsWith('0')) return ws.send(pid === undefined ? '40' : `40${JSON.stringify({ pid, offset })}`)
        if (text.startsWith('40')) {
          pid = (JSON.parse(text.slice(2)) as { pid?: string }).pid ?? pid
          attempt = 0
          entry.open = true
          if (!everOpen) {
            everOpen = true
            firstOpen()
          }
          if (marked && entry.wasClosed && entry.reopenedAt === 0) entry.reopenedAt = performance.now()
          return
        }
        if (text.startsWith('42')) {
          const [, payload, packetOffset] = JSON.parse(text.slice(2)) as [string, { n: number }, string?]
          if (packetOffset !== undefined) offset = packetOffset
          entry.lastN = payload.n
          if (marked) entry.seqs.push(payload.n)
        }
      })
      ws.on('error', () => { refusals.network = (refusals.network ?? 0) + 1 })
      ws.on('close', () => {
        entry.open = false
        if (marked) entry.wasClosed = true
        const delay = Math.min(5000, 1000 * 2 ** attempt++) * (0.5 + Math.random())
        setTimeout(connect, delay)
      })
    }
    connect()
  }, () => process.send!({ type: 'started' }))
}

process.on('message', (command: Command) => {
  if (command.cmd === 'start') start(command)
  else if (command.cmd === 'mark') {
    marked = true
    markedAt = performance.now()
    for (const entry of tracked) entry.markedN = entry.lastN
    for (const key of Object.keys(refusals)) delete refusals[key]
    process.send!({ type: 'marked' })
  } else if (command.cmd === 'report') {
    const report: Report = {
      clients: tracked.map((entry) => ({ room: entry.room, markedSeq: entry.markedN, seqs: entry.seqs, resets: [], reopenedMs: entry.reopenedAt === 0 ? (entry.open && !entry.wasClosed ? 0 : -1) : entry.reopenedAt - markedAt, openNow: entry.open })),
      refusals,
    }
    process.send!({ type: 'report', report })
  } else if (command.cmd === 'close') {
    process.exit(0)
  }
})

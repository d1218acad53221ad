// A load client process: opens its share of the connections to one target, records the latency of every
// event (publish time carried in the payload; same machine clock), and reports when asked (IPC).
import { createSigner } from 'fast-jwt'
import { io as socketIoClient, type Socket } from 'socket.io-client'
import WebSocket from 'ws'
import { emptyHistogram, record } from './histogram.js'
import { BENCH_ORIGIN, BENCH_SECRET } from './servers/common.js'

export type Target = 'plugin' | 'ws' | 'socketio'

export interface ConnectCommand {
  cmd: 'connect'
  target: Target
  port: number
  /** [userIndex, room] for each connection this process opens. */
  connections: Array<[number, string]>
  concurrency: number
}

type Command = ConnectCommand | { cmd: 'reset' } | { cmd: 'report' } | { cmd: 'close' }

const now = () => performance.timeOrigin + performance.now()
const sign = createSigner({ key: BENCH_SECRET, expiresIn: 3_600_000 })
let histogram = emptyHistogram()
const sockets: Array<{ close(): void }> = []
let failed = 0

function onEvent(sentAt: number): void {
  record(histogram, now() - sentAt)
}

function openPlugin(port: number, user: number, room: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`ws://127.0.0.1:${port}/ws`, ['rooms.v1', `bearer.${sign({ sub: `u${user}` })}`], { origin: BENCH_ORIGIN })
    sockets.push({ close: () => socket.terminate() })
    socket.on('error', reject)
    socket.on('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)))
    socket.on('message', (data) => {
      const frame = JSON.parse(data.toString())
      if (frame.type === 'event') onEvent(frame.payload.sentAt)
      else if (frame.type === 'welcome' && room === '') resolve()
      else if (frame.type === 'welcome') socket.send(JSON.stringify({ type: 'join', id: 1, room }))
      else if (frame.type === 'ack') resolve()
    })
  })
}

function openWs(port: number, room: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`ws://127.0.0.1:${port}/?room=${encodeURIComponent(room)}`)
    sockets.push({ close: () => socket.terminate() })
    socket.on('error', reject)
    socket.on('message', (data) => {
      const frame = JSON.parse(data.toString())
      if (frame.type === 'event') onEvent(frame.payload.sentAt)
      else if (frame.type === 'welcome') resolve()
    })
  })
}

function openSocketIo(port: number, room: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const socket: Socket = socketIoClient(`http://127.0.0.1:${port}`, { transports: ['websocket'], query: { room }, reconnection: false, forceNew: true })
    sockets.push({ close: () => socket.disconnect() })
    socket.on('connect_error', reject)
    socket.on('event', (payload: { sentAt: number }) => onEvent(payload.sentAt))
    socket.on('welcome', () => resolve())
  })
}

async function connectAll(command: ConnectCommand): Promise<number> {
  const started = now()
  let next = 0
  const worker = async () => {
    while (next < command.connections.length) {
      const [user, room] = command.connections[next++]!
      try {
        if (command.target === 'plugin') await openPlugin(command.port, user, room)
        else if (command.target === 'ws') await openWs(command.port, room)
        else await openSocketIo(command.port, room)
      } catch {
        failed++
      }
    }
  }
  await Promise.all(Array.from({ length: command.concurrency }, worker))
  return now() - started
}

process.on('message', (message: Command) => {
  void (async () => {
    if (message.cmd === 'connect') {
      const ms = await connectAll(message)
      process.send!({ cmd: 'connected', ms, failed })
    } else if (message.cmd === 'reset') {
      histogram = emptyHistogram()
      process.send!({ cmd: 'reset' })
    } else if (message.cmd === 'report') {
      process.send!({ cmd: 'report', histogram })
    } else {
      for (const socket of sockets) socket.close()
      process.send!({ cmd: 'closed' })
      setTimeout(() => process.exit(0), 50)
    }
  })()
})

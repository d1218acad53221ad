// A load client process: opens its share of the connections to one target, records the latency of every
// event (publish time carried in the payload; same machine clock), and reports when asked (IPC).
// The three targets get the same client: ws, no UTF-8 validation, no JSON.parse per event (the publish
// time is read straight from the bytes), so the clients stay far cheaper than the servers they load.
// Socket.IO is spoken at the engine.io level (`0{…}` open, `40` connect, `2`/`3` ping/pong, `42[…]` events).
import http from 'node:http'
import { createSigner } from 'fast-jwt'
import WebSocket from 'ws'
import { emptyHistogram, record } from './histogram.js'
import { BENCH_ORIGIN, BENCH_SECRET } from './servers/common.js'

export type Target = 'plugin' | 'ws' | 'socketio' | 'plugin-sse'

export interface ConnectCommand {
  cmd: 'connect'
  target: Target
  port: number
  /** [userIndex, room] for each connection this process opens; room '' means no join. */
  connections: Array<[number, string]>
  concurrency: number
  /** Each connection from its own loopback source address (127.1.x.y): tens of thousands need more ports than one address has. */
  spreadSources?: boolean
}

type Command = ConnectCommand | { cmd: 'reset' } | { cmd: 'report' } | { cmd: 'close' }

const now = () => performance.timeOrigin + performance.now()
const sign = createSigner({ key: BENCH_SECRET, expiresIn: 3_600_000 })
const SENT_AT = Buffer.from('"sentAt":')
let histogram = emptyHistogram()
const sockets: Array<{ terminate(): void }> = []
const sseAgent = new http.Agent({ keepAlive: true, maxSockets: 256 })
let failed = 0

/** Records the latency of an event frame; false when the frame carries no publish time. */
function onFrame (data: Buffer): boolean {
  const at = data.indexOf(SENT_AT)
  if (at < 0) return false
  record(histogram, now() - Number.parseFloat(data.toString('latin1', at + SENT_AT.length, at + SENT_AT.length + 24)))
  return true
}

/** The plugin's SSE fallback: a session POST, its stream (read as it arrives), a join POSTed. */
async function openSse (port: number, user: number, room: string): Promise<void> {
  const token = sign({ sub: `u${user}` })
  const post = (path: string, body: string) => new Promise<string>((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, path, method: 'POST', agent: sseAgent, headers: { authorization: `Bearer ${token}`, origin: BENCH_ORIGIN, 'content-type': 'application/json' } }, (response) => {
      let text = ''
      response.on('data', (chunk: Buffer) => { text += chunk.toString() })
      response.on('end', () => (response.statusCode === 201 || response.statusCode === 202 ? resolve(text) : reject(new Error(`HTTP ${response.statusCode}`))))
    })
    request.on('error', reject)
    request.end(body)
  })
  const { stream } = JSON.parse(await post('/ws/sse', '{}')) as { stream: string }
  await new Promise<void>((resolve, reject) => {
    const request = http.get({ host: '127.0.0.1', port, path: stream, headers: { origin: BENCH_ORIGIN, accept: 'text/event-stream' } }, (response) => {
      let ready = false
      let buffer = ''
      response.on('data', (chunk: Buffer) => {
        buffer += chunk.toString('latin1')
        for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          if (ready) {
            const at = block.indexOf('"sentAt":')
            if (at >= 0) record(histogram, now() - Number.parseFloat(block.slice(at + 9, at + 33)))
          } else if (block.includes('"type":"welcome"')) {
            if (room === '') {
              ready = true
              resolve()
            } else post(stream, JSON.stringify({ type: 'join', id: 1, room })).catch(reject)
          } else if (block.includes('"type":"ack"')) {
            ready = true
            resolve()
          }
        }
      })
      response.on('error', reject)
    })
    request.on('error', reject)
    sockets.push({ terminate: () => request.destroy() })
  })
}

function open (target: Target, port: number, user: number, room: string, spreadSources = false): Promise<void> {
  if (target === 'plugin-sse') return openSse(port, user, room)
  const options = {
    skipUTF8Validation: true,
    origin: BENCH_ORIGIN,
    maxPayload: 1 << 20,
    ...(spreadSources ? { localAddress: `127.1.${Math.floor(user / 250) % 250}.${1 + (user % 250)}` } : {}),
  }
  const query = room === '' ? '' : `room=${encodeURIComponent(room)}`
  const socket = target === 'plugin'
    ? new WebSocket(`ws://127.0.0.1:${port}/ws`, ['rooms.v1', `bearer.${sign({ sub: `u${user}` })}`], options)
    : target === 'ws'
      ? new WebSocket(`ws://127.0.0.1:${port}/?${query}`, options)
      : new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket&${query}`, options)
  sockets.push(socket)
  return new Promise((resolve, reject) => {
    socket.on('error', reject)
    socket.on('unexpected-response', (_request, response) => reject(new Error(`HTTP ${response.statusCode}`)))
    let ready = false
    socket.on('message', (data: Buffer) => {
      if (ready && onFrame(data)) return
      const text = data.toString()
      if (target === 'socketio') {
        if (text.startsWith('0')) socket.send('40')
        else if (text === '2') socket.send('3')
        else if (text.startsWith('42["welcome"')) {
          ready = true
          resolve()
        }
      } else if (text.includes('"type":"welcome"')) {
        if (target === 'plugin' && room !== '') socket.send(JSON.stringify({ type: 'join', id: 1, room }))
        else {
          ready = true
          resolve()
        }
      } else if (text.includes('"type":"ack"')) {
        ready = true
        resolve()
      }
    })
  })
}

async function connectAll (command: ConnectCommand): Promise<number> {
  const started = now()
  let next = 0
  const worker = async () => {
    while (next < command.connections.length) {
      const [user, room] = command.connections[next++]!
      try {
        await open(command.target, command.port, user, room, command.spreadSources)
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
      for (const socket of sockets) socket.terminate()
      process.send!({ cmd: 'closed' })
      setTimeout(() => process.exit(0), 50)
    }
  })()
})

// The reconnect storm against Socket.IO 4.8 with connection-state recovery (in-memory adapter: its
// recovery keeps missed packets in this process): 100 rooms, the events published here at STORM_RATE per
// second, each carrying its room's counter `n`. POST /bench/cut destroys every TCP connection at once;
// POST /bench/stop stops publishing; GET /bench/stats gives the connected count and each room's last `n`.
import http from 'node:http'
import type { Socket } from 'node:net'
import { Server } from 'socket.io'

const server = http.createServer()
const io = new Server(server, {
  transports: ['websocket'],
  serveClient: false,
  perMessageDeflate: false,
  connectionStateRecovery: { maxDisconnectionDuration: 120_000, skipMiddlewares: true },
})
const sockets = new Set<Socket>()
server.on('connection', (socket: Socket) => {
  sockets.add(socket)
  socket.once('close', () => sockets.delete(socket))
})
const rooms = 100
const counters = new Array<number>(rooms).fill(0)
let next = 0
const rate = Number(process.env.STORM_RATE ?? 100)
const publishing = setInterval(() => {
  for (let i = 0; i < rate / 20; i++) {
    const room = next++ % rooms
    io.to(`room-${room}`).emit('event', { n: ++counters[room]! })
  }
}, 50)
server.prependListener('request', (request, response) => {
  if (request.url?.startsWith('/socket.io')) return
  if (request.url === '/bench/cut' && request.method === 'POST') {
    const own = request.socket
    response.end(JSON.stringify({ cut: sockets.size - 1 }))
    setImmediate(() => { for (const socket of sockets) if (socket !== own) socket.destroy() })
  } else if (request.url === '/bench/stop' && request.method === 'POST') {
    clearInterval(publishing)
    response.end('{}')
  } else if (request.url === '/bench/stats') {
    response.end(JSON.stringify({ connections: io.engine.clientsCount, last: Object.fromEntries(counters.map((n, room) => [`room-${room}`, n])) }))
  }
})
io.on('connection', (socket) => {
  // A recovered socket is back in its rooms with the packets it missed; a new one joins from the query.
  if (socket.recovered) return
  const room = socket.handshake.query.room
  if (typeof room === 'string') void socket.join(room)
})
server.listen(Number(process.env.PORT ?? 0), '127.0.0.1', () => process.stdout.write(`${(server.address() as import('node:net').AddressInfo).port}\n`))

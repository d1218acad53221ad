// Socket.IO 4 with a room: websocket transport only, io.to(room).emit per publish. With
// BENCH_COMPRESSION=1, its `perMessageDeflate` option (off by default since engine.io 4).
import http from 'node:http'
import { Server } from 'socket.io'
import { COMPRESSION, countEgress, handleStats, readJson, ready } from './common.js'

const server = http.createServer()
countEgress(server)
const io = new Server(server, { transports: ['websocket'], serveClient: false, perMessageDeflate: COMPRESSION ? { threshold: 1024 } : false })
// Socket.IO answers its own path; everything else is ours.
server.prependListener('request', async (request, response) => {
  if (request.url?.startsWith('/socket.io')) return
  if (handleStats(request, response, () => io.engine.clientsCount)) return
  if (request.method === 'POST' && request.url === '/publish') {
    const { room, payload } = await readJson(request)
    io.to(room).emit('event', payload)
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end('{}')
  }
})
io.on('connection', (socket) => {
  // The engine.io query carries the room (the load clients speak engine.io directly).
  const room = socket.handshake.query.room
  if (typeof room === 'string' && room !== '') void socket.join(room)
  socket.emit('welcome')
})
server.listen(0, '127.0.0.1', () => ready((server.address() as import('node:net').AddressInfo).port))

// The naive raw ws baseline: no auth, stringify once per publish, loop send() over the room. With
// BENCH_COMPRESSION=1, ws's own permessage-deflate as its README shows it (a zlib context per socket).
import http from 'node:http'
import { WebSocketServer, type WebSocket } from 'ws'
import { COMPRESSION, countEgress, handleStats, readJson, ready } from './common.js'

const rooms = new Map<string, Set<WebSocket>>()
const server = http.createServer(async (request, response) => {
  if (handleStats(request, response, () => wss.clients.size)) return
  if (request.method === 'POST' && request.url === '/publish') {
    const { room, payload } = await readJson(request)
    const frame = JSON.stringify({ type: 'event', room, payload })
    for (const socket of rooms.get(room) ?? []) socket.send(frame)
    response.writeHead(200, { 'content-type': 'application/json' })
    response.end('{}')
    return
  }
  response.writeHead(404).end()
})
countEgress(server)
const wss = new WebSocketServer({ server, maxPayload: 65536, perMessageDeflate: COMPRESSION ? { threshold: 1024 } : false })
wss.on('connection', (socket, request) => {
  const room = new URL(request.url ?? '/', 'http://x').searchParams.get('room') ?? 'default'
  let members = rooms.get(room)
  if (members === undefined) rooms.set(room, (members = new Set()))
  members.add(socket)
  socket.on('close', () => members.delete(socket))
  socket.on('error', () => socket.terminate())
  socket.send(JSON.stringify({ type: 'welcome' }))
})
// BENCH_HEARTBEAT_MS: the heartbeat of ws's README (a ping per socket per interval, a socket that missed
// the last pong terminated), as the plugin's heartbeat is measured against it in the density scenario.
if (process.env.BENCH_HEARTBEAT_MS !== undefined) {
  const alive = new WeakSet<WebSocket>()
  wss.on('connection', (socket) => {
    alive.add(socket)
    socket.on('pong', () => alive.add(socket))
  })
  setInterval(() => {
    for (const socket of wss.clients) {
      if (!alive.has(socket)) {
        socket.terminate()
        continue
      }
      alive.delete(socket)
      socket.ping()
    }
  }, Number(process.env.BENCH_HEARTBEAT_MS)).unref()
}
server.listen(0, '127.0.0.1', () => ready((server.address() as import('node:net').AddressInfo).port))

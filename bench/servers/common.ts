// What every benchmark server shares: its CPU and memory readings, and printing its port when ready.
import type { IncomingMessage, ServerResponse } from 'node:http'
import type { Server as NetServer, Socket } from 'node:net'

/** BENCH_COMPRESSION=1: each server turns on its own way of compressing (the compression scenario). */
export const COMPRESSION = process.env.BENCH_COMPRESSION === '1'

const liveSockets = new Set<Socket>()
let closedSocketsBytes = 0
/** Counts every byte the server writes to its TCP sockets (net.Socket#bytesWritten), for egress per delivery. */
export function countEgress (server: NetServer): void {
  server.on('connection', (socket: Socket) => {
    liveSockets.add(socket)
    socket.once('close', () => {
      liveSockets.delete(socket)
      closedSocketsBytes += socket.bytesWritten
    })
  })
}

function egressBytes (): number {
  let total = closedSocketsBytes
  for (const socket of liveSockets) total += socket.bytesWritten
  return total
}

export function statsResponse (connections: () => number) {
  return {
    cpuMicros: (() => {
      const usage = process.cpuUsage()
      return usage.user + usage.system
    })(),
    rss: process.memoryUsage().rss,
    heapUsed: process.memoryUsage().heapUsed,
    connections: connections(),
    egressBytes: egressBytes(),
  }
}

/** GET /stats (optionally after a GC) for the orchestrator. */
export function handleStats (request: IncomingMessage, response: ServerResponse, connections: () => number): boolean {
  if (request.method !== 'GET' || !request.url?.startsWith('/stats')) return false
  if (request.url.includes('gc=1')) (globalThis as { gc?: () => void }).gc?.()
  response.writeHead(200, { 'content-type': 'application/json' })
  response.end(JSON.stringify(statsResponse(connections)))
  return true
}

export async function readJson (request: IncomingMessage): Promise<any> {
  let body = ''
  for await (const chunk of request) body += chunk
  return JSON.parse(body)
}

export function ready (port: number): void {
  // Exit on SIGTERM so that `node --cpu-prof` writes its profile.
  process.once('SIGTERM', () => process.exit(0))
  process.stdout.write(`${port}\n`)
}

export const BENCH_SECRET = 'bench-secret-0123456789'
export const BENCH_ORIGIN = 'http://bench.local'

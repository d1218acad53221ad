// What every benchmark server shares: its CPU and memory readings, and printing its port when ready.
import type { IncomingMessage, ServerResponse } from 'node:http'

export function statsResponse (connections: () => number) {
  return {
    cpuMicros: (() => {
      const usage = process.cpuUsage()
      return usage.user + usage.system
    })(),
    rss: process.memoryUsage().rss,
    heapUsed: process.memoryUsage().heapUsed,
    connections: connections(),
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

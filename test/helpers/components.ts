// Real components for tests: free ports, and skipping (or, under CI, failing) when a component is missing.
import net from 'node:net'

/**
 * A port that was free a moment ago, for a server that must come back on the same port after a restart.
 * Drawn below Linux's ephemeral range (32768–60999): a port the kernel hands out to outgoing connections
 * can be taken by one of them while the server is down, and its restart then fails (the fault campaign,
 * with thousands of reconnects, hit it). 23000–29999: Redis Cluster nodes use 20000–22767 and +10000.
 */
export async function freePort (): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = 23_000 + Math.floor(Math.random() * 7000)
    if (await portFree(port)) return port
  }
  throw new Error('no free port in 23000–29999')
}

export function portFree (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/**
 * Whether tests that need a real component (Chromium, redis-server) can run. When it is missing they are
 * skipped with the reason, except under CI=true, where a missing component fails the run.
 */
export function componentAvailable (t: { fail(message: string): void; test(name: string, options: { skip: string }, fn: () => Promise<void>): unknown }, missing: string | undefined, what: string): boolean {
  if (missing === undefined) return true
  if (process.env.CI === 'true') t.fail(`${missing}: ${what} tests are required under CI=true`)
  else t.test(`${what} tests`, { skip: `skipped: ${missing}` }, async () => {})
  return false
}

// Real components for tests: free ports, and skipping (or, under CI, failing) when a component is missing.
import net from 'node:net'

/** A port that was free a moment ago, for a server that must come back on the same port after a restart. */
export async function freePort (): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
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

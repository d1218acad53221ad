// Real headless Chromium (Debian's package) driven by playwright-core. Never a downloaded browser.
import { existsSync } from 'node:fs'
import net from 'node:net'

export const CHROMIUM_PATH = '/usr/bin/chromium'
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
]

/**
 * Why browser tests cannot run here, or undefined when they can. Under CI=true a missing Chromium is a
 * failure, not a skip: the caller turns the reason into a failing test.
 */
export function chromiumMissing(): string | undefined {
  return existsSync(CHROMIUM_PATH) ? undefined : `Chromium not found at ${CHROMIUM_PATH} (apt-get install chromium)`
}

/** A port that was free a moment ago, for a server that must come back on the same port after a restart. */
export async function freePort(): Promise<number> {
  const server = net.createServer()
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise<void>((resolve) => server.close(() => resolve()))
  return port
}

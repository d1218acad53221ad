// Real headless Chromium (Debian's package) driven by playwright-core. Never a downloaded browser.
import { existsSync } from 'node:fs'

export const CHROMIUM_PATH = '/usr/bin/chromium'
export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync',
]

/**
 * Why browser tests cannot run here, or undefined when they can. Under CI=true a missing Chromium is a
 * failure, not a skip: the caller turns the reason into a failing test.
 */
export function chromiumMissing (): string | undefined {
  return existsSync(CHROMIUM_PATH) ? undefined : `Chromium not found at ${CHROMIUM_PATH} (apt-get install chromium)`
}

// tap's coverage map: every test counts toward the plugin's own code (lib/), and only toward it —
// helpers, fixtures, the example and the bench are not what coverage is about.
import { readdirSync } from 'node:fs'

const lib = readdirSync(new URL('../lib', import.meta.url), { recursive: true })
  .map(String)
  .filter((file) => file.endsWith('.ts'))
  .map((file) => `lib/${file}`)

export default () => lib

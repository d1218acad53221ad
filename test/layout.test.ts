// Issue #22: the tree shows the architecture, and every rule is kept in one place.
import { readdirSync, readFileSync, statSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import Fastify from 'fastify'
import t from 'tap'
import Type from 'typebox'
import rooms from '../lib/index.js'
import { BUILT_IN_CLIENT_TYPES, RESERVED_TYPES, SERVER_TYPES } from '../lib/protocol/protocol.js'
import { ORIGIN, SECRET } from './helpers/index.js'

const lib = fileURLToPath(new URL('../lib', import.meta.url))
const sources = readdirSync(lib, { recursive: true }).map(String).filter((file) => file.endsWith('.ts'))

t.test('#22 lib/ is folders by stage: only the entry and the public types sit at its top', async (t) => {
  const top = readdirSync(lib).filter((entry) => statSync(path.join(lib, entry)).isFile()).sort()
  t.same(top, ['index.ts', 'types.ts'])
  const folders = readdirSync(lib).filter((entry) => statSync(path.join(lib, entry)).isDirectory()).sort()
  t.same(folders, ['admission', 'brokers', 'client', 'config', 'dispatch', 'http', 'observability', 'out', 'protocol', 'rooms', 'socket', 'sse'])
})

t.test('#22 a file past ~300 lines says why at its top', async (t) => {
  for (const file of sources) {
    const lines = readFileSync(path.join(lib, file), 'utf8').split('\n')
    if (lines.length <= 310) continue
    const head = lines.slice(0, 14).join('\n')
    t.match(head, /past 300 lines/i, `${file} (${lines.length} lines) says why`)
  }
})

t.test('#22 every FST_ROOMS_* code the server answers is defined in config/errors.ts, and nowhere else as a literal', async (t) => {
  for (const file of sources) {
    // The client only reads codes (in its docs); the server's are defined once.
    if (file === path.join('config', 'errors.ts') || file.startsWith(`client${path.sep}`)) continue
    const literals = readFileSync(path.join(lib, file), 'utf8').match(/['"`]FST_ROOMS_[A-Z_]+['"`]/g) ?? []
    t.same(literals, [], `${file}: no FST_ROOMS_ literal`)
  }
})

t.test('#22 one list of reserved types: what register refuses in events, broadcast refuses too', async (t) => {
  t.same([...RESERVED_TYPES].sort(), [...BUILT_IN_CLIENT_TYPES, ...SERVER_TYPES].sort())
  const app = Fastify()
  await app.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN] })
  await app.ready()
  t.teardown(() => app.close())
  for (const type of RESERVED_TYPES) {
    await t.rejects(app.rooms.broadcast('lobby', type, {}), { code: 'FST_ROOMS_INVALID_ARGUMENT', message: `fastify-rooms: type "${type}" is reserved by the protocol` }, `broadcast of "${type}"`)
    const other = Fastify()
    await t.rejects((async () => { await other.register(rooms, { jwt: { secret: SECRET }, allowedOrigins: [ORIGIN], events: { [type]: Type.Object({}) } }).ready() })(),
      { code: 'FST_ROOMS_INVALID_OPTION', message: `fastify-rooms: option "events.${type}" uses a type name the protocol reserves` }, `events.${type}`)
    await other.close()
  }
})

t.test('#22 docs/architecture.md names every file of lib/', async (t) => {
  const guide = readFileSync(fileURLToPath(new URL('../docs/architecture.md', import.meta.url)), 'utf8')
  for (const file of sources) {
    const relative = file.split(path.sep).join('/')
    t.ok(guide.includes(`\`${relative}\``) || guide.includes(`\`${path.basename(file)}\``), `${relative} is in the map`)
  }
})

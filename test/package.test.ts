// Issue #11: what `npm pack` produces is the product. The tarball is installed into host apps that bring
// their own fastify (another 5.x minor) and their own ws, type-checked under strict, and run.
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t, { type Test } from 'tap'
import { run } from './helpers/exec.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const tsc = path.join(root, 'node_modules', '.bin', 'tsc')
const HOST_FASTIFY = '5.11.2' // the project itself develops against 5.12
const OLD_WS = '8.17.1' // outside the plugin's ws range (^8.18.0): npm must keep two copies

interface NpmLsNode { version?: string; dependencies?: Record<string, NpmLsNode> }
function versionsOf (tree: NpmLsNode, name: string, found = new Set<string>()): Set<string> {
  for (const [dependency, node] of Object.entries(tree.dependencies ?? {})) {
    if (dependency === name && node.version !== undefined) found.add(node.version)
    versionsOf(node, name, found)
  }
  return found
}

const work = await mkdtemp(path.join(tmpdir(), 'fastify-rooms-pack-'))
t.teardown(() => rm(work, { recursive: true, force: true }))

// `npm pack` runs `prepack` (the build) itself: this is what `npm publish` would upload.
const packed = JSON.parse(await run('npm', ['pack', '--json', '--pack-destination', work], root, 120_000)) as Array<{ filename: string; files: Array<{ path: string }> }>
const tarball = path.join(work, packed[0]!.filename)
const files = packed[0]!.files.map((file) => file.path).sort()

t.test('#11: the tarball holds the built package, its licence and docs, and nothing else', async (t) => {
  for (const expected of ['LICENSE', 'README.md', 'package.json', 'dist/index.js', 'dist/index.d.ts', 'dist/client/index.js', 'dist/client/index.d.ts', 'dist/brokers/redis.js', 'dist/brokers/redis.d.ts']) {
    t.ok(files.includes(expected), `${expected} is packed`)
  }
  t.same(files.filter((file) => !/^(LICENSE|README\.md|package\.json|dist\/.+\.(js|d\.ts|js\.map))$/.test(file)), [], 'nothing but dist/, LICENSE, README.md, package.json')
  t.ok(files.length > 30, `${files.length} files`)
})

t.test('#11: every shipped source map resolves (its sources are inlined)', async (t) => {
  const unpacked = path.join(work, 'unpacked')
  await run('mkdir', ['-p', unpacked], work, 10_000)
  await run('tar', ['-xzf', tarball, '-C', unpacked], work, 30_000)
  const maps = files.filter((file) => file.endsWith('.js.map'))
  t.ok(maps.length > 10)
  for (const map of maps) {
    const parsed = JSON.parse(await readFile(path.join(unpacked, 'package', map), 'utf8')) as { sources: string[]; sourcesContent?: string[] }
    t.equal(parsed.sourcesContent?.length, parsed.sources.length, `${map} carries its sources`)
    t.ok(parsed.sourcesContent?.every((source) => source.length > 0), `${map} sources are not empty`)
  }
  const manifest = JSON.parse(await readFile(path.join(unpacked, 'package', 'package.json'), 'utf8')) as Record<string, Record<string, unknown>>
  t.equal(manifest.peerDependencies?.fastify, '^5.0.0', 'fastify is a peer')
  t.equal(manifest.dependencies?.fastify, undefined, 'fastify is not a dependency')
  t.equal(manifest.dependencies?.ioredis, undefined, 'ioredis is not a dependency')
  t.same(manifest.peerDependenciesMeta?.ioredis, { optional: true }, 'ioredis is an optional peer')
  for (const [name, range] of Object.entries(manifest.dependencies ?? {})) t.match(range, /^\^/, `${name} uses a caret range`)
})

async function host (name: string, dependencies: Record<string, string>): Promise<string> {
  const dir = path.join(work, name)
  await cp(fileURLToPath(new URL('./fixtures/host', import.meta.url)), dir, { recursive: true })
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({
    name: `host-${name}`,
    private: true,
    type: 'module',
    dependencies: { 'fastify-rooms': `file:${tarball}`, '@fastify/jwt': '^10.0.0', typebox: '^1.4.0', ...dependencies },
    devDependencies: { '@types/node': '^20.19.0', '@types/ws': '^8.18.0' },
  }, null, 2))
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error'], dir, 240_000)
  return dir
}

interface HostReport {
  error?: string
  joinedSeq: number
  refused: string
  shouted: unknown
  status: number
  published: { seq: number }
  delivered: { seq: number; payload: unknown }
  invalid: number
  stats: number
}

async function typeCheckAndRun (t: Test, dir: string): Promise<HostReport> {
  // The host's own tsconfig (strict, skipLibCheck off: our .d.ts files are checked too) and its own node_modules.
  await run(tsc, ['-p', 'tsconfig.json'], dir, 120_000).then(() => t.pass('the host type-checks under strict'))
  const report = JSON.parse((await run(process.execPath, ['build/main.js'], dir, 30_000)).trim().split('\n').pop()!) as HostReport
  t.equal(report.error, undefined)
  return report
}

function checkReport (t: Test, report: HostReport): void {
  t.equal(report.joinedSeq, 0, 'joined lobby at seq 0')
  t.equal(report.refused, 'forbidden', 'authorizeJoin refuses the secret room')
  t.same(report.shouted, { from: 'alice', text: 'HI' }, 'a request answered by a host handler')
  t.equal(report.status, 200)
  // seq 1 is alice's own presence join in lobby.
  t.same(report.published, { seq: 2 }, 'the HTTP route published seq 2')
  t.same(report.delivered, { seq: 2, payload: { text: 'hello' } }, 'the client received it')
  t.equal(report.invalid, 400, 'the announce body is validated')
  t.equal(report.stats, 1)
}

t.test(`#11: a host on fastify ${HOST_FASTIFY} installs the tarball with one fastify, type-checks and runs`, async (t) => {
  const dir = await host('other-fastify-minor', { fastify: HOST_FASTIFY, ws: '^8.18.0' })
  const tree = JSON.parse(await run('npm', ['ls', '--all', '--json'], dir, 60_000)) as NpmLsNode
  t.same([...versionsOf(tree, 'fastify')], [HOST_FASTIFY], 'one fastify in the tree: the host\'s')
  t.same([...versionsOf(tree, 'ioredis')], [], 'ioredis is not installed for a host that does not use Redis')
  checkReport(t, await typeCheckAndRun(t, dir))
  // CommonJS hosts: require() of the ESM package, which is why engines says ^20.19 || >=22.12.
  const required = await run(process.execPath, ['-e', 'const m = require("fastify-rooms"); console.log(typeof m.default, typeof m.memoryBroker, typeof require("fastify-rooms/client").createClient)'], dir, 30_000)
  t.equal(required.trim(), 'function function function')
  const redis = await run(process.execPath, ['--input-type=module', '-e', 'import("fastify-rooms/redis").then(() => console.log("loaded"), (err) => console.log(err.code))'], dir, 30_000)
  t.equal(redis.trim(), 'ERR_MODULE_NOT_FOUND', 'fastify-rooms/redis needs the optional ioredis peer, and says so')
})

t.test(`#11: a host with its own ws ${OLD_WS} (two ws copies in the tree) still delivers broadcasts`, async (t) => {
  const dir = await host('own-ws', { fastify: '^5.0.0', ws: OLD_WS })
  const tree = JSON.parse(await run('npm', ['ls', '--all', '--json'], dir, 60_000)) as NpmLsNode
  const ws = versionsOf(tree, 'ws')
  t.ok(ws.has(OLD_WS) && ws.size === 2, `two copies of ws: ${[...ws].join(', ')}`)
  t.equal(versionsOf(tree, 'fastify').size, 1, 'one fastify')
  checkReport(t, await typeCheckAndRun(t, dir))
})

t.test('#21: a frontend installs fastify-rooms-client alone — nothing of the server in its tree — and it type-checks and loads', async (t) => {
  const clientRoot = path.join(root, 'packages', 'client')
  const manifest = JSON.parse(await readFile(path.join(clientRoot, 'package.json'), 'utf8')) as { version: string; dependencies?: object; peerDependencies?: object }
  const main = JSON.parse(await readFile(path.join(root, 'package.json'), 'utf8')) as { version: string }
  t.equal(manifest.version, main.version, 'released together: one version')
  t.same([manifest.dependencies, manifest.peerDependencies], [undefined, undefined], 'no dependencies, no peers')
  const clientPacked = JSON.parse(await run('npm', ['pack', '--json', '--pack-destination', work], clientRoot, 180_000)) as Array<{ filename: string; files: Array<{ path: string }> }>
  t.same(clientPacked[0]!.files.map((file) => file.path).filter((file) => !file.endsWith('.map')).sort(),
    ['LICENSE', 'README.md', 'dist/errors.d.ts', 'dist/errors.js', 'dist/index.d.ts', 'dist/index.js', 'dist/module.js', 'dist/refusals.d.ts', 'dist/refusals.js',
      'dist/sse-link.d.ts', 'dist/sse-link.js', 'dist/streamed-event.d.ts', 'dist/streamed-event.js', 'dist/token.d.ts', 'dist/token.js', 'dist/types.d.ts', 'dist/types.js', 'package.json'])
  const dir = path.join(work, 'frontend')
  await run('mkdir', ['-p', dir], work, 10_000)
  await writeFile(path.join(dir, 'package.json'), JSON.stringify({ name: 'frontend', private: true, type: 'module', dependencies: { 'fastify-rooms-client': `file:${path.join(work, clientPacked[0]!.filename)}` } }))
  await run('npm', ['install', '--no-audit', '--no-fund', '--offline', '--loglevel=error'], dir, 120_000)
  const tree = JSON.parse(await run('npm', ['ls', '--all', '--json'], dir, 60_000)) as NpmLsNode
  t.same(Object.keys(tree.dependencies ?? {}), ['fastify-rooms-client'], 'one package installed')
  t.same(tree.dependencies?.['fastify-rooms-client']?.dependencies, undefined, 'and it brings nothing')
  await writeFile(path.join(dir, 'app.ts'), [
    "import { createClient, type RoomsClientError } from 'fastify-rooms-client'",
    "const client = createClient({ url: 'ws://127.0.0.1:1/ws', autoConnect: false, rooms: ['lobby'] })",
    "client.on('error', (err: RoomsClientError) => console.log(err.code))",
    'console.log(client.state)',
    '',
  ].join('\n'))
  await writeFile(path.join(dir, 'tsconfig.json'), JSON.stringify({ compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, types: [] }, files: ['app.ts'] }))
  await run(tsc, ['-p', 'tsconfig.json'], dir, 120_000).then(() => t.pass('types resolve with no @types and no server packages'))
  const loaded = await run(process.execPath, ['--input-type=module', '-e', "import('fastify-rooms-client').then((m) => console.log(typeof m.createClient, m.createClient({ url: 'ws://127.0.0.1:1/ws', autoConnect: false }).state))"], dir, 30_000)
  t.equal(loaded.trim(), 'function closed')
})

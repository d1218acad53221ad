// The tests that touch our dependencies, run against what users install rather than our lockfile:
//   node scripts/dependency-matrix.js newest   — a copy installed without the lockfile: today's newest
//                                               versions in our ranges (fastify, ioredis and pg too)
//   node scripts/dependency-matrix.js oldest   — every dependency and peer at the oldest version its
//                                               range allows, forced through the whole tree
// Prints the versions used and ends with tap's summary line, `# { total: N, pass: P, fail: F }`.
import { execFileSync, spawnSync } from 'node:child_process'
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const FILES = [
  'test/inject.test.ts',
  'test/first-hour.test.ts',
  'test/upgrade.test.ts',
  'test/authenticate.test.ts',
  'test/framing.test.ts',
  'test/compression.test.ts',
  'test/compression-python.test.ts',
  'test/client.test.ts',
  'test/client-refusals.test.ts',
  'test/protocol.test.ts',
  'test/types-e2e.test.ts',
  'test/postgres.test.ts',
  'test/streams-redis.test.ts',
  'test/streams-postgres.test.ts',
]
// Peers a user installs beside us; the project pins them as devDependencies.
const PEERS = ['fastify', 'ioredis', 'pg']

const mode = process.argv[2]
if (mode !== 'newest' && mode !== 'oldest') {
  console.error('usage: node scripts/dependency-matrix.js newest|oldest')
  process.exit(2)
}
const root = fileURLToPath(new URL('..', import.meta.url))
const work = mkdtempSync(path.join(tmpdir(), `fastify-rooms-${mode}-`))
const env = { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false' }

function sh (command, args, options = {}) {
  return String(execFileSync(command, args, { cwd: work, env, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * 1024 * 1024, ...options }) ?? '')
}

/** The oldest published, non-prerelease version `range` allows. */
function oldest (name, range) {
  const found = JSON.parse(sh('npm', ['view', `${name}@${range}`, 'version', '--json']))
  const versions = (Array.isArray(found) ? found : [found]).filter((version) => !version.includes('-'))
  const key = (version) => version.split('.').map(Number)
  versions.sort((a, b) => {
    const [x, y] = [key(a), key(b)]
    return x[0] - y[0] || x[1] - y[1] || x[2] - y[2]
  })
  return versions[0]
}

try {
  // The repository's files as committed, without the lockfile.
  const files = execFileSync('git', ['ls-files', '-z'], { cwd: root }).toString().split('\0').filter((file) => file !== '' && file !== 'package-lock.json')
  execFileSync('tar', ['-cf', path.join(work, 'files.tar'), '--null', '-T', '-'], { cwd: root, input: files.join('\0') })
  sh('tar', ['-xf', 'files.tar'])
  rmSync(path.join(work, 'files.tar'))

  const manifest = JSON.parse(readFileSync(path.join(work, 'package.json'), 'utf8'))
  for (const peer of PEERS) manifest.devDependencies[peer] = manifest.peerDependencies[peer]
  if (mode === 'oldest') {
    manifest.overrides = {}
    for (const [name, range] of Object.entries(manifest.dependencies)) {
      const version = oldest(name, range)
      manifest.dependencies[name] = version
      manifest.overrides[name] = version
    }
    for (const peer of PEERS) {
      const version = oldest(peer, manifest.peerDependencies[peer])
      manifest.devDependencies[peer] = version
      manifest.overrides[peer] = version
    }
  }
  writeFileSync(path.join(work, 'package.json'), JSON.stringify(manifest, null, 2) + '\n')
  sh('npm', ['install', '--no-package-lock', '--loglevel=error'], { stdio: ['ignore', 'inherit', 'inherit'] })
  const tree = JSON.parse(sh('npm', ['ls', '--json', '--depth=0']))
  const names = [...Object.keys(manifest.dependencies), ...PEERS]
  console.log(`${mode}: ${names.map((name) => `${name}@${tree.dependencies?.[name]?.version}`).join(', ')}`)
  if (mode === 'newest') {
    // Our sources still compile against the newest types (a contributor's fresh clone).
    sh('npm', ['run', 'build', '--silent'], { stdio: ['ignore', 'inherit', 'inherit'] })
  } else {
    // The package as built and shipped (types of old peers are the host's concern; they run it).
    sh('cp', ['-r', path.join(root, 'dist'), path.join(work, 'dist')])
    sh('mkdir', ['-p', path.join(work, 'packages', 'client')])
    sh('cp', ['-r', path.join(root, 'packages', 'client', 'dist'), path.join(work, 'packages', 'client', 'dist')])
  }
  sh('npx', ['tap', 'build'], { stdio: ['ignore', 'inherit', 'inherit'] })
  const result = spawnSync('npx', ['tap', '--disable-coverage', '--reporter=terse', ...FILES], { cwd: work, env, stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 64 * 1024 * 1024, timeout: 900_000 })
  const output = result.stdout.toString()
  process.stdout.write(output)
  if (!/^# \{ total: \d+/m.test(output)) console.log('# { total: 1, pass: 0, fail: 1 }')
  process.exitCode = result.status === 0 ? 0 : 1
} catch (err) {
  console.error(`${mode}: ${err.message}`)
  console.log('# { total: 1, pass: 0, fail: 1 }')
  process.exitCode = 1
} finally {
  rmSync(work, { recursive: true, force: true })
}

// Issue #21: a newcomer following docs/tutorial.md alone builds its app, its Node client and its test on a
// fresh install — no lockfile, so npm resolves today's newest versions in our ranges — and all of it works.
// The setup commands and every file are taken from the tutorial itself; only `fastify-rooms` is
// installed from this checkout's `npm pack` instead of the registry.
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { run, runCommand } from './helpers/exec.js'
import { freePort } from './helpers/components.js'

const root = fileURLToPath(new URL('..', import.meta.url))

/** The tutorial's fenced blocks that carry a title: `setup` commands and files by path. */
export function titledBlocks (markdown: string): Map<string, string> {
  const blocks = new Map<string, string>()
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const title = /^```\w+ title="([^"]+)"\s*$/.exec(lines[i]!)?.[1]
    if (title === undefined) continue
    const start = i + 1
    while (i + 1 < lines.length && lines[i + 1] !== '```') i++
    blocks.set(title, lines.slice(start, i + 1).join('\n') + '\n')
  }
  return blocks
}

const blocks = titledBlocks(await readFile(path.join(root, 'docs', 'tutorial.md'), 'utf8'))

t.test('#21 the tutorial names its setup and every file it builds', async (t) => {
  t.same([...blocks.keys()].sort(), ['public/index.html', 'setup', 'src/app.ts', 'src/client.ts', 'src/server.ts', 'test/chat.test.ts', 'tsconfig.json'])
})

t.test('#21 the tutorial, followed step by step on a fresh install: it type-checks, its test passes, its server serves the page and the client module, its Node client chats', { timeout: 600_000 }, async (t) => {
  const work = await mkdtemp(path.join(tmpdir(), 'fastify-rooms-tutorial-'))
  t.teardown(() => rm(work, { recursive: true, force: true }))
  // `npm test` built dist/ (pretest); packing it as it is.
  const packed = JSON.parse(await run('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', work], root, 120_000)) as Array<{ filename: string }>
  const tarball = path.join(work, packed[0]!.filename)
  const setup = blocks.get('setup')!.replace(/^(npm install .*) fastify-rooms( |$)/m, `$1 ${tarball}$2`)
  t.not(setup, blocks.get('setup'), 'fastify-rooms comes from this checkout')
  await run('bash', ['-euo', 'pipefail', '-c', setup], work, 400_000)
  const app = path.join(work, 'chat')
  for (const [file, content] of blocks) {
    if (file === 'setup') continue
    await mkdir(path.dirname(path.join(app, file)), { recursive: true })
    await writeFile(path.join(app, file), content)
  }
  const installed = JSON.parse(await run('npm', ['ls', '--json', '--depth=0'], app, 60_000)) as { dependencies: Record<string, { version: string }> }
  t.comment(`resolved: ${Object.entries(installed.dependencies).map(([name, { version }]) => `${name}@${version}`).join(', ')}`)

  const typecheck = await runCommand('npm', ['run', 'typecheck'], app, 120_000)
  if (!t.equal(typecheck.code, 0, 'npm run typecheck')) t.comment(typecheck.stdout + typecheck.stderr)
  const test = await runCommand('npm', ['test'], app, 120_000)
  if (!t.equal(test.code, 0, 'npm test passes')) t.comment(test.stdout + test.stderr)
  t.match(test.stdout, /# pass 2\n# fail 0/, 'both of its tests pass')

  const port = await freePort()
  const server = spawn('npm', ['start'], { cwd: app, env: { ...cleanEnvironment(), PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  t.teardown(() => {
    try {
      process.kill(-server.pid!, 'SIGTERM')
    } catch {
      // Already gone.
    }
  })
  let output = ''
  server.stdout.on('data', (chunk: Buffer) => { output += chunk.toString() })
  server.stderr.on('data', (chunk: Buffer) => { output += chunk.toString() })
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start:\n${output}`)), 60_000)
    const check = () => {
      if (output.includes('Server listening at')) {
        clearTimeout(timer)
        resolve()
      } else setTimeout(check, 50)
    }
    check()
  })
  const base = `http://127.0.0.1:${port}`
  const page = await fetch(`${base}/`)
  t.equal(page.status, 200)
  t.match(await page.text(), /import \{ createClient \} from '\/ws\/client\.js'/)
  const module = await fetch(`${base}/ws/client.js`)
  t.equal(module.status, 200, 'the page\'s client module is served by the plugin')

  const client = await runCommand('env', [`CHAT_URL=${base}`, 'npm', 'run', '--silent', 'client'], app, 60_000)
  if (!t.equal(client.code, 0, 'npm run client')) t.comment(client.stdout + client.stderr)
  t.same(client.stdout.trim().split('\n'), ['#2 node-bot: hello from Node', 'sent as seq 2'], 'what the tutorial says it prints')

  const token = (await (await fetch(`${base}/token`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'ops' }) })).json()) as { token: string }
  const announced = await fetch(`${base}/rooms/lobby/announce`, { method: 'POST', headers: { authorization: `Bearer ${token.token}`, 'content-type': 'application/json' }, body: JSON.stringify({ text: 'deploy at 5' }) })
  t.equal(announced.status, 200)
  // After the client's presence join (1) and chat (2); its presence leave (3) is published once the
  // presence grace (5 s) has passed, which may or may not be before this request.
  const { seq } = await announced.json() as { seq: number }
  t.ok(seq === 3 || seq === 4, `the announcement is the room's next event (seq ${seq})`)
})

function cleanEnvironment (): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => name !== 'NODE_OPTIONS' && name !== 'NODE_V8_COVERAGE' && !/^_?TAP/i.test(name)))
}

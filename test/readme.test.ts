// Issue #11, #21: every TypeScript block in the README and the guide (docs/) compiles, against the built
// package as a host imports it (`fastify-rooms`, `fastify-rooms/client`, `fastify-rooms/redis` resolve
// through package.json's exports to dist/, which `npm test` builds first), with the compiler options the
// tutorial tells users to set up. A snippet that rots fails here. The tutorial's own files (blocks with a
// `title`) form one project, followed end to end by test/tutorial.test.ts.
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { runCommand } from './helpers/exec.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const dir = path.join(root, '.readme-snippets')

/** The fenced ```ts blocks of a Markdown text without a title, with the line each starts on. */
export function typeScriptBlocks (markdown: string): Array<{ line: number; code: string }> {
  const blocks: Array<{ line: number; code: string }> = []
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    const fence = /^```(ts|typescript)(\s.*)?$/.exec(lines[i]!)
    if (fence === null) continue
    const start = i + 1
    while (i + 1 < lines.length && lines[i + 1] !== '```') i++
    if (!/title="/.test(fence[2] ?? '')) blocks.push({ line: start + 1, code: lines.slice(start, i + 1).join('\n') })
    i++
  }
  return blocks
}

async function markdownFiles (): Promise<string[]> {
  const docs = await readdir(path.join(root, 'docs'), { recursive: true })
  return ['README.md', ...docs.filter((file) => file.endsWith('.md')).map((file) => path.join('docs', file)).sort()]
}

/** The compiler options of the tutorial's tsconfig.json, as a user copies them. */
async function tutorialCompilerOptions (): Promise<Record<string, unknown>> {
  const tutorial = await readFile(path.join(root, 'docs', 'tutorial.md'), 'utf8')
  const json = /```json title="tsconfig\.json"\n([\s\S]*?)\n```/.exec(tutorial)?.[1]
  if (json === undefined) throw new Error('docs/tutorial.md has no tsconfig.json block')
  return (JSON.parse(json) as { compilerOptions: Record<string, unknown> }).compilerOptions
}

t.test('#11 #21: every TypeScript block of the README and docs/ type-checks with the tutorial\'s compiler options', async (t) => {
  const compilerOptions = await tutorialCompilerOptions()
  t.match(compilerOptions, { strict: true, module: 'NodeNext' })
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // Each block is a module of its own (top-level await, its own imports), as a reader would paste it. A
  // block that augments a module is compiled alone: an augmentation is global to its compilation.
  const projects = new Map<string, string[]>()
  let count = 0
  for (const markdown of await markdownFiles()) {
    for (const block of typeScriptBlocks(await readFile(path.join(root, markdown), 'utf8'))) {
      const file = `${markdown.replace(/\.md$/, '').replaceAll(/[/\\]/g, '-')}-line-${block.line}.ts`
      await writeFile(path.join(dir, file), `${block.code}\nexport {}\n`)
      const project = /^declare module /m.test(block.code) ? file.replace(/\.ts$/, '') : 'all'
      projects.set(project, [...projects.get(project) ?? [], file])
      count++
    }
  }
  t.ok(count >= 15, `${count} blocks found`)
  for (const [project, files] of projects) {
    const tsconfig = path.join(dir, `tsconfig.${project}.json`)
    await writeFile(tsconfig, JSON.stringify({ compilerOptions: { ...compilerOptions, noEmit: true }, files }))
    const result = await runCommand(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', tsconfig], root, 120_000)
    const output = result.stdout + result.stderr
    t.equal(output.replaceAll(dir + path.sep, ''), '', `${files.length} blocks: no compiler errors (file names give the page and line)`)
    t.equal(result.code, 0)
  }
})

t.test('#21 the README is short, the guide has no internal notes, and every relative link resolves', async (t) => {
  const readme = await readFile(path.join(root, 'README.md'), 'utf8')
  t.ok(readme.split('\n').length <= 120, `README: ${readme.split('\n').length} lines`)
  for (const markdown of await markdownFiles()) {
    const text = await readFile(path.join(root, markdown), 'utf8')
    if (!markdown.endsWith('architecture.md')) {
      t.notMatch(text, /\b[Ii]ssue #?\d+\b|original design|Status: /, `${markdown}: no internal notes`)
    }
    for (const [, target] of text.matchAll(/\]\(((?!https?:)[^)#\s]+)(#[^)]*)?\)/g)) {
      const resolved = path.join(root, path.dirname(markdown), target!)
      const exists = await readFile(resolved).then(() => true, () => false)
      t.ok(exists, `${markdown} → ${target}`)
    }
  }
})

t.test('the block extractor finds ts and typescript fences without a title and nothing else', async (t) => {
  const markdown = ['text', '```ts', 'const a = 1', '```', '```sh', 'ls', '```', '```typescript', 'let b', 'let c', '```', '```ts title="src/a.ts"', 'let d', '```'].join('\n')
  t.same(typeScriptBlocks(markdown), [{ line: 3, code: 'const a = 1' }, { line: 9, code: 'let b\nlet c' }])
})

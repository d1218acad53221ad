// Issue #11: every TypeScript block in the README compiles, against the built package as a host imports
// it (`fastify-rooms`, `fastify-rooms/client`, `fastify-rooms/redis` resolve through package.json's
// exports to dist/, which `npm test` builds first). A snippet that rots fails here.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { runCommand } from './helpers/exec.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const dir = path.join(root, '.readme-snippets')

/** The fenced ```ts blocks of a Markdown text, with the line each starts on. */
export function typeScriptBlocks (markdown: string): Array<{ line: number; code: string }> {
  const blocks: Array<{ line: number; code: string }> = []
  const lines = markdown.split('\n')
  for (let i = 0; i < lines.length; i++) {
    if (!/^```(ts|typescript)\s*$/.test(lines[i]!)) continue
    const start = i + 1
    while (i + 1 < lines.length && lines[i + 1] !== '```') i++
    blocks.push({ line: start + 1, code: lines.slice(start, i + 1).join('\n') })
    i++
  }
  return blocks
}

t.test('#11: every TypeScript block in the README type-checks under strict', async (t) => {
  const blocks = typeScriptBlocks(await readFile(path.join(root, 'README.md'), 'utf8'))
  t.ok(blocks.length >= 4, `${blocks.length} blocks found`)
  await rm(dir, { recursive: true, force: true })
  await mkdir(dir, { recursive: true })
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  // Each block is a module of its own (top-level await, its own imports), as a reader would paste it. A
  // block that augments a module is compiled alone: an augmentation is global to its compilation.
  const projects = new Map<string, string[]>()
  for (const block of blocks) {
    const file = `readme-line-${block.line}.ts`
    await writeFile(path.join(dir, file), `${block.code}\nexport {}\n`)
    const project = /^declare module /m.test(block.code) ? file.replace(/\.ts$/, '') : 'all'
    projects.set(project, [...projects.get(project) ?? [], file])
  }
  for (const [project, files] of projects) {
    const tsconfig = path.join(dir, `tsconfig.${project}.json`)
    await writeFile(tsconfig, JSON.stringify({
      compilerOptions: {
        target: 'ES2022',
        module: 'NodeNext',
        moduleResolution: 'NodeNext',
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: ['node'],
        lib: ['ES2022', 'DOM'],
      },
      files,
    }))
    const result = await runCommand(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', tsconfig], root, 120_000)
    const output = result.stdout + result.stderr
    t.equal(output.replaceAll(dir + path.sep, ''), '', `${files.join(', ')}: no compiler errors (file names give the README line)`)
    t.equal(result.code, 0)
  }
})

t.test('the block extractor finds ts and typescript fences and nothing else', async (t) => {
  const markdown = ['text', '```ts', 'const a = 1', '```', '```sh', 'ls', '```', '```typescript', 'let b', 'let c', '```'].join('\n')
  t.same(typeScriptBlocks(markdown), [{ line: 3, code: 'const a = 1' }, { line: 9, code: 'let b\nlet c' }])
})

// Issue #12: types end to end, checked against the built package as a host compiles it. Each fixture in
// test/fixtures/types is compiled on its own (one of them augments the package's RoomsEventMap, which is
// global to a compilation); every `@ts-expect-error` in them must be an error, or tsc fails.
import { mkdir, readdir, rm, writeFile, copyFile } from 'node:fs/promises'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { runCommand } from './helpers/exec.js'

const root = fileURLToPath(new URL('..', import.meta.url))
const fixtures = fileURLToPath(new URL('./fixtures/types', import.meta.url))

for (const file of (await readdir(fixtures)).filter((name) => name.endsWith('.ts'))) {
  t.test(`#12 types: ${file} compiles, and each wrong use in it is an error`, async (t) => {
    const dir = path.join(root, '.type-tests', file.replace(/\.ts$/, ''))
    await rm(dir, { recursive: true, force: true })
    await mkdir(dir, { recursive: true })
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    await copyFile(path.join(fixtures, file), path.join(dir, file))
    await writeFile(path.join(dir, 'tsconfig.json'), JSON.stringify({
      compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: true, types: ['node'] },
      files: [file],
    }))
    const result = await runCommand(path.join(root, 'node_modules', '.bin', 'tsc'), ['-p', dir], root, 120_000)
    t.equal((result.stdout + result.stderr).replaceAll(dir + path.sep, ''), '', 'no compiler errors, no unused @ts-expect-error')
    t.equal(result.code, 0)
  })
}

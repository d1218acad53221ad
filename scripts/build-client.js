// The client as one ES module (dist/client/module.js, and in the client package): what the plugin serves
// on <path>/client.js and a page without a bundler imports. The client has no dependencies, so the bundle
// is its own files joined; tsc's per-file output stays for Node and bundlers.
import { copyFileSync, mkdirSync } from 'node:fs'
import { build } from 'esbuild'

await build({
  entryPoints: ['lib/client/index.ts'],
  bundle: true,
  format: 'esm',
  platform: 'neutral',
  target: 'es2022',
  sourcemap: true,
  sourcesContent: true,
  legalComments: 'none',
  outfile: 'dist/client/module.js',
  logLevel: 'warning',
})
if (process.argv[2] === '--package') {
  mkdirSync('packages/client/dist', { recursive: true })
  for (const file of ['module.js', 'module.js.map']) copyFileSync(`dist/client/${file}`, `packages/client/dist/${file}`)
}

// The browser client served as one ES module, for a page without a bundler: `<path>/client.js` (a page's
// stable URL: revalidated by ETag, so a deploy is seen at once) and `<path>/client@<version>.js` (immutable,
// cached for a year): the client's files bundled into one module by the build (scripts/build-client.js).
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import { answer, ClientNotBuiltError } from '../config/errors.js'

export interface ClientBundle {
  version: string
  code: string
  map: string | undefined
  etag: string
}

// Beside the compiled plugin (the installed package); from the TypeScript sources (this repository's tests
// and example), the build's output.
const LOCATIONS = ['../client/module.js', '../../dist/client/module.js']

export async function loadClientBundle (): Promise<ClientBundle | undefined> {
  const { version } = createRequire(import.meta.url)('../../package.json') as { version: string }
  for (const location of LOCATIONS) {
    const url = new URL(location, import.meta.url)
    const code = await readFile(url, 'utf8').catch(() => undefined)
    if (code === undefined) continue
    const map = await readFile(new URL(`${location}.map`, import.meta.url), 'utf8').catch(() => undefined)
    // The map is served beside the module under the module's own name.
    const served = code.replace(/\/\/# sourceMappingURL=\S+\s*$/, map === undefined ? '' : `//# sourceMappingURL=client@${version}.js.map\n`)
    const etag = `"${createHash('sha256').update(served).digest('base64url').slice(0, 22)}"`
    return { version, code: served, map, etag }
  }
  return undefined
}

export function registerClientRoutes (scope: FastifyInstance, path: string, bundle: ClientBundle | undefined): void {
  const missing = (_request: FastifyRequest, reply: FastifyReply) => answer(reply, new ClientNotBuiltError())
  const serve = (cacheControl: string) => (request: FastifyRequest, reply: FastifyReply) => {
    if (bundle === undefined) return missing(request, reply)
    // Public code, imported cross-origin by `<script type="module">` (a CORS fetch, without credentials).
    reply.header('access-control-allow-origin', '*')
      .header('x-content-type-options', 'nosniff')
      .header('cache-control', cacheControl)
      .header('etag', bundle.etag)
    if (request.headers['if-none-match'] === bundle.etag) return reply.code(304).send()
    return reply.type('text/javascript; charset=utf-8').send(bundle.code)
  }
  const version = bundle?.version ?? 'unbuilt'
  // A global rate limit the host set applies: these are plain, cheap GETs.
  scope.get(`${path}/client.js`, serve('no-cache'))
  scope.get(`${path}/client@${version}.js`, serve('public, max-age=31536000, immutable'))
  scope.get(`${path}/client@${version}.js.map`, (request, reply) => {
    if (bundle?.map === undefined) return missing(request, reply)
    return reply.header('access-control-allow-origin', '*').header('cache-control', 'public, max-age=31536000, immutable').type('application/json; charset=utf-8').send(bundle.map)
  })
}

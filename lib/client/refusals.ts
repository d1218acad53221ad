// Why a connection attempt was refused, from what the server answered: a refused handshake's response
// (ws hands it over in Node), the SSE session's refused POST, or the browser's diagnostic GET.
import { RoomsClientError, type RefusalDetails } from './errors.js'

export type FetchLike = (url: string, init: object) => Promise<{ status: number; headers: { get(name: string): string | null }; json(): Promise<unknown> }>

/** A refused handshake's HTTP answer: the status, and the server's JSON `{ code, message }` when readable. */
export interface HandshakeRefusal {
  status: number
  code?: string
  message?: string
  retryAfterMs?: number
}

/** What the client reads of a refused handshake's response body (ws hands it over): enough for `{ code, message }`. */
const MAX_REFUSAL_BODY = 8192
const REFUSAL_READ_MS = 2000

/** The part of Node's IncomingMessage read from a refused handshake (ws's `unexpected-response`). */
export interface RefusedResponse {
  statusCode?: number
  headers: Record<string, string | string[] | undefined>
  on(event: 'data', listener: (chunk: { length: number; toString(): string }) => void): unknown
  on(event: 'end' | 'error' | 'close', listener: () => void): unknown
}

/** Why a refused or failed attempt failed, from the HTTP status of the upgrade or of the diagnostic request. */
const REFUSALS: Record<number, string> = { 401: 'unauthorized', 403: 'origin_not_allowed', 429: 'rate_limited', 503: 'unavailable' }

/** A refused handshake's answer (ws's `unexpected-response`), read within MAX_REFUSAL_BODY bytes and REFUSAL_READ_MS. */
export function readRefusedResponse (response: RefusedResponse): Promise<HandshakeRefusal> {
  return new Promise((resolve) => {
    let body = ''
    let done = false
    const finish = (): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      let parsed: { code?: unknown; message?: unknown } | undefined
      try {
        parsed = JSON.parse(body)
      } catch {
        parsed = undefined
      }
      resolve({
        status: response.statusCode ?? 0,
        code: typeof parsed?.code === 'string' ? parsed.code : undefined,
        message: typeof parsed?.message === 'string' ? parsed.message : undefined,
        retryAfterMs: retryAfterMs(response.headers['retry-after']),
      })
    }
    const timer = setTimeout(finish, REFUSAL_READ_MS)
    response.on('data', (chunk) => {
      if (body.length + chunk.length > MAX_REFUSAL_BODY) return finish()
      body += chunk.toString()
    })
    response.on('end', finish)
    response.on('error', finish)
    response.on('close', finish)
  })
}

/** A refused request's answer: its status, Retry-After and the server's JSON `{ code, message }`. */
export async function refusalOf (response: Awaited<ReturnType<FetchLike>>): Promise<HandshakeRefusal> {
  const body = await response.json().catch(() => undefined) as { code?: unknown; message?: unknown } | undefined
  return {
    status: response.status,
    code: typeof body?.code === 'string' ? body.code : undefined,
    message: typeof body?.message === 'string' ? body.message : undefined,
    retryAfterMs: retryAfterMs(response.headers.get('retry-after')),
  }
}

/** Retry-After in seconds, as milliseconds; undefined when absent or not a positive number. */
export function retryAfterMs (header: string | string[] | null | undefined): number | undefined {
  const seconds = Number(header)
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : undefined
}

/** A refusal from an HTTP status: the codes of `RefusalDetails`; 426 means the credentials passed. */
export function refusal (status: number, message: string | undefined, retryAfterMs?: number, serverCode?: string): RoomsClientError {
  const details: RefusalDetails = { status }
  if (retryAfterMs !== undefined) details.retryAfterMs = retryAfterMs
  if (serverCode !== undefined) details.serverCode = serverCode
  if (status === 426) return new RoomsClientError('network', 'the server accepts these credentials, but the WebSocket handshake failed (a proxy?)', details)
  return new RoomsClientError(REFUSALS[status] ?? 'refused', message ?? `the server refused the connection (HTTP ${status})`, details)
}

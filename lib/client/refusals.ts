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
      resolve(handshakeRefusal(response.statusCode ?? 0, parseBody(body), retryAfterMs(response.headers['retry-after'])))
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
  return handshakeRefusal(response.status, await response.json().catch(() => undefined), retryAfterMs(response.headers.get('retry-after')))
}

/** A refusal from its status and the server's JSON body (`{ code, message }`, when it is one). */
export function handshakeRefusal (status: number, body: unknown, retryAfter?: number): HandshakeRefusal {
  const { code, message } = (typeof body === 'object' && body !== null ? body : {}) as { code?: unknown; message?: unknown }
  return {
    status,
    code: typeof code === 'string' ? code : undefined,
    message: typeof message === 'string' ? message : undefined,
    retryAfterMs: retryAfter,
  }
}

/** The HTTP status in ws's (and injectWS's) "Unexpected server response: 401"; 0 when there is none. */
export function unexpectedResponseStatus (message: string | undefined): number {
  return Number(/Unexpected server response: (\d{3})/.exec(message ?? '')?.[1] ?? 0)
}

/** A body's JSON, or undefined when it is not JSON. */
export function parseBody (text: unknown): unknown {
  if (typeof text !== 'string') return undefined
  try {
    return JSON.parse(text)
  } catch {
    return undefined
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

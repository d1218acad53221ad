// The Server-Sent Events fallback's link, in the shape of a WebSocket.
import { refusalOf, type FetchLike, type HandshakeRefusal } from './refusals.js'
import type { EventSourceConstructor, EventSourceLike, WebSocketLike } from './types.js'

/**
 * The Server-Sent Events fallback in the shape of a WebSocket: a session opened by a POST (with the token,
 * like the handshake), the frames from its EventSource stream, the client's frames POSTed one at a time so
 * they keep their order. No EventSource reconnect of its own: a dropped stream closes the link (1006) and
 * the client reconnects and resumes as it does after a dropped socket.
 */
export class SseLink implements WebSocketLike {
  readyState = 0
  onopen: WebSocketLike['onopen'] = null
  onmessage: WebSocketLike['onmessage'] = null
  onclose: WebSocketLike['onclose'] = null
  onerror: WebSocketLike['onerror'] = null
  private source: EventSourceLike | undefined
  private streamUrl = ''
  private sending: Promise<void> = Promise.resolve()

  constructor (private readonly base: string, public token: string | undefined, EventSourceImpl: EventSourceConstructor, private readonly fetchImpl: FetchLike) {
    void this.start(EventSourceImpl)
  }

  send (data: string): void {
    if (this.readyState !== 1) return
    this.sending = this.sending.then(async () => {
      if (this.readyState !== 1) return
      try {
        const response = await this.fetchImpl(this.streamUrl, { method: 'POST', headers: this.headers(), body: data, credentials: 'include', cache: 'no-store' })
        if (response.status >= 400) this.finish(1006, `frame refused: HTTP ${response.status}`)
      } catch {
        this.finish(1006, 'frame POST failed')
      }
    })
  }

  close (code = 1000, reason = ''): void {
    this.finish(code, reason)
  }

  private headers (): Record<string, string> {
    return this.token === undefined ? { 'content-type': 'application/json' } : { 'content-type': 'application/json', authorization: `Bearer ${this.token}` }
  }

  private async start (EventSourceImpl: EventSourceConstructor): Promise<void> {
    try {
      const response = await this.fetchImpl(`${this.base}/sse`, { method: 'POST', headers: this.headers(), body: '{}', credentials: 'include', cache: 'no-store' })
      if (this.readyState === 3) return
      // Said the way ws says it, so a refusal is reported with its code like a refused upgrade.
      if (response.status !== 201) return this.fail(`Unexpected server response: ${response.status}`, await refusalOf(response))
      const { stream } = await response.json() as { stream: string }
      if (this.readyState === 3) return
      this.streamUrl = new URL(stream, this.base).href
      const source = new EventSourceImpl(this.streamUrl, { withCredentials: true })
      this.source = source
      source.onopen = () => this.opened()
      source.onmessage = (event) => {
        // An EventSource may hand over the first frame before its open event: the stream is open then.
        this.opened()
        this.onmessage?.({ data: event.data })
      }
      source.addEventListener('close', (event) => {
        let closed: { code?: unknown; reason?: unknown } = {}
        try {
          closed = JSON.parse(event.data) as typeof closed
        } catch {}
        this.finish(typeof closed.code === 'number' ? closed.code : 1006, typeof closed.reason === 'string' ? closed.reason : '')
      })
      source.onerror = () => this.finish(1006, '')
    } catch (err) {
      this.fail(`SSE fallback unreachable: ${(err as Error)?.message}`)
    }
  }

  private opened (): void {
    if (this.readyState !== 0) return
    this.readyState = 1
    this.onopen?.({})
  }

  private fail (message: string, refusal?: HandshakeRefusal): void {
    this.onerror?.({ message, refusal })
    this.finish(1006, '')
  }

  private finish (code: number, reason: string): void {
    if (this.readyState === 3) return
    this.readyState = 3
    this.source?.close()
    this.onclose?.({ code, reason })
  }
}

// EventSource for Node tests of the client's SSE fallback (Node 20 has none; browsers do, and the Chromium
// tests use theirs): the parts the client uses, over node:http — open, default and named events, error on
// any end, close. No reconnect of its own (the client never relies on one).
import http from 'node:http'
import { ORIGIN } from './index.js'
import { readEvents } from './sse.js'

type Handler = ((event: { data: string }) => void) | null

export class NodeEventSource {
  onopen: ((event: unknown) => void) | null = null
  onmessage: Handler = null
  onerror: ((event: unknown) => void) | null = null
  private readonly named = new Map<string, Array<(event: { data: string }) => void>>()
  private readonly request: http.ClientRequest
  private closed = false

  constructor (url: string, _init?: { withCredentials?: boolean }) {
    this.request = http.get(url, { headers: { accept: 'text/event-stream', origin: ORIGIN } }, (response) => {
      if (response.statusCode !== 200) return this.fail()
      this.onopen?.({})
      response.setEncoding('utf8')
      readEvents(response, (event) => {
        if (this.closed) return
        if (event.event === undefined) this.onmessage?.({ data: event.data })
        else for (const listener of this.named.get(event.event) ?? []) listener({ data: event.data })
      })
      response.on('close', () => this.fail())
    })
    this.request.on('error', () => this.fail())
  }

  addEventListener (type: string, listener: (event: { data: string }) => void): void {
    this.named.set(type, [...this.named.get(type) ?? [], listener])
  }

  close (): void {
    this.closed = true
    this.request.destroy()
  }

  private fail (): void {
    if (this.closed) return
    this.closed = true
    this.onerror?.({})
  }
}

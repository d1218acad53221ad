// EventSource for Node tests of the client's SSE fallback (Node 20 has none; browsers do, and the Chromium
// tests use theirs): the parts the client uses, over node:http — open, default and named events, error on
// any end, close. No reconnect of its own (the client never relies on one).
import http from 'node:http'
import { ORIGIN } from './index.js'

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
      let buffer = ''
      response.setEncoding('utf8')
      response.on('data', (chunk: string) => {
        buffer += chunk
        for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          let data: string | undefined
          let name = 'message'
          for (const line of block.split('\n')) {
            if (line.startsWith('data: ')) data = (data === undefined ? '' : data + '\n') + line.slice(6)
            else if (line.startsWith('event: ')) name = line.slice(7)
          }
          if (data === undefined || this.closed) continue
          if (name === 'message') this.onmessage?.({ data })
          else for (const listener of this.named.get(name) ?? []) listener({ data })
        }
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

// The raw subscriber's two transports: a WebSocket (resume frame first on every connection), and the SSE
// fallback's protocol by hand (a session opened with a POST, its stream re-attached with Last-Event-ID on
// the same process, or a new session opened with `{ resume }` on another; frames POSTed in order).
import http from 'node:http'
import WebSocket from 'ws'
import { readEvents } from '../test/helpers/sse.js'
import type { Publish } from './history.js'
import { CHAOS_ORIGIN, sign } from './protocol.js'
import { RawSubscriber } from './raw-subscriber.js'

export class RawWsSubscriber extends RawSubscriber {
  private ws: WebSocket | undefined

  constructor (name: string, ports: () => number[], publishes: Publish[], now: () => number) {
    super(name, 'raw-ws', ports, publishes, now)
  }

  start (): void {
    // Uncompressed, so the checker's own test can mangle frames in the proxy.
    const ws = new WebSocket(`ws://127.0.0.1:${this.port()}/ws`, ['rooms.v1'], { headers: { authorization: `Bearer ${sign(this.history.user)}` }, origin: CHAOS_ORIGIN, perMessageDeflate: false, handshakeTimeout: 5000 })
    this.ws = ws
    const conn = ++this.conn
    this.welcomed = false
    ws.on('message', (data) => this.onText(conn, data.toString()))
    ws.on('error', () => {})
    ws.on('close', (code) => {
      if (this.ws !== ws) return
      this.ws = undefined
      this.onClosed(conn, code)
    })
  }

  protected get open (): boolean {
    return this.ws?.readyState === WebSocket.OPEN
  }

  protected write (frame: Record<string, unknown>): boolean {
    if (!this.open) return false
    this.ws!.send(JSON.stringify(frame))
    return true
  }

  protected resumeOnWelcome (): void {
    this.resume()
  }

  slow (ms: number): void {
    // ws has no public accessor for its TCP socket (test/helpers/index.ts's tcpSocketOf pins `_socket`).
    const socket = (this.ws as unknown as { _socket?: { pause(): void; resume(): void } | null } | undefined)?._socket
    if (socket === undefined || socket === null) return
    socket.pause()
    setTimeout(() => socket.resume(), ms).unref()
  }

  drop (): void {
    this.ws?.terminate()
  }

  protected end (): void {
    this.ws?.terminate()
  }
}

interface HttpAnswer { status: number; body: any }

function request (port: number, method: string, path: string, headers: Record<string, string>, body?: string): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const outgoing = http.request({ host: '127.0.0.1', port, method, path, agent: false, timeout: 5000, headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers } }, (response) => {
      let text = ''
      response.on('data', (chunk: Buffer) => { text += chunk.toString() })
      response.on('end', () => {
        let parsed: unknown
        try {
          parsed = text === '' ? undefined : JSON.parse(text)
        } catch {}
        resolve({ status: response.statusCode ?? 0, body: parsed })
      })
      response.on('error', reject)
    })
    outgoing.on('timeout', () => outgoing.destroy(new Error('timeout')))
    outgoing.on('error', reject)
    outgoing.end(body)
  })
}

export class RawSseSubscriber extends RawSubscriber {
  protected override readonly resumesFromLastEventId = true
  private session: { port: number; stream: string } | undefined
  private stream: { conn: number; request: http.ClientRequest; response: http.IncomingMessage } | undefined
  private lastEventId: string | undefined
  private posts: Promise<unknown> = Promise.resolve()
  private pinger: NodeJS.Timeout | undefined

  constructor (name: string, ports: () => number[], publishes: Publish[], now: () => number) {
    super(name, 'raw-sse', ports, publishes, now)
  }

  private get credentials (): Record<string, string> {
    return { authorization: `Bearer ${sign(this.history.user)}`, origin: CHAOS_ORIGIN }
  }

  start (): void {
    const conn = ++this.conn
    this.welcomed = false
    let ended = false
    const closed = (code: number) => {
      if (ended) return
      ended = true
      if (this.stream?.conn === conn) this.stream = undefined
      clearInterval(this.pinger)
      this.onClosed(conn, code)
    }
    this.attach(conn, closed).catch(() => closed(1006))
  }

  /** Re-attaches to its session where that process still holds it; otherwise opens one there, resuming. */
  private async attach (conn: number, closed: (code: number) => void): Promise<void> {
    const port = this.port()
    if (this.session?.port !== port) this.session = undefined
    let resumeHeader: Record<string, string> = this.lastEventId === undefined ? {} : { 'last-event-id': this.lastEventId }
    if (this.session === undefined) {
      const opened = await request(port, 'POST', '/ws/sse', this.credentials, JSON.stringify(this.lastEventId === undefined ? {} : { resume: this.lastEventId }))
      if (opened.status !== 201) throw new Error(`session: ${opened.status}`)
      this.session = { port, stream: opened.body.stream }
      resumeHeader = {}
    }
    const session = this.session
    await new Promise<void>((resolve, reject) => {
      const outgoing = http.get({ host: '127.0.0.1', port, path: session.stream, agent: false, headers: { accept: 'text/event-stream', ...this.credentials, ...resumeHeader } }, (response) => {
        if (response.statusCode !== 200) {
          // The session is gone (its process restarted, or it ended): the next attempt opens a new one.
          if (this.session === session) this.session = undefined
          response.resume()
          reject(new Error(`stream: ${response.statusCode}`))
          return
        }
        this.stream = { conn, request: outgoing, response }
        response.setEncoding('utf8')
        let closeCode = 1006
        readEvents(response, (event) => {
          if (event.id !== undefined) this.lastEventId = event.id
          if (event.event === 'close') closeCode = (JSON.parse(event.data) as { code: number }).code
          else if (event.event === undefined) this.onText(conn, event.data)
        })
        response.on('close', () => closed(closeCode))
        response.on('error', () => {})
        resolve()
      })
      outgoing.on('error', reject)
    })
  }

  protected override onFrame (conn: number, frame: Parameters<RawSubscriber['onFrame']>[1]): void {
    if (frame.type === 'welcome') {
      // An EventSource cannot answer pings: the stream's peer proves itself alive by POSTing.
      const every = Math.max(200, Math.floor((frame.payload?.heartbeatMs ?? 3000) / 3))
      clearInterval(this.pinger)
      this.pinger = setInterval(() => this.write({ type: 'ping' }), every).unref()
    }
    super.onFrame(conn, frame)
  }

  protected get open (): boolean {
    return this.stream !== undefined && !this.stream.response.destroyed
  }

  /** POSTs in order; a POST that fails is sent again (the same id: answered once) while this stream lasts. */
  protected write (frame: Record<string, unknown>): boolean {
    const stream = this.stream
    const session = this.session
    if (stream === undefined || session === undefined) return false
    const body = JSON.stringify(frame)
    const post = async () => {
      for (let attempt = 0; attempt < 5 && this.stream === stream; attempt++) {
        const answer = await request(session.port, 'POST', session.stream, this.credentials, body).catch(() => undefined)
        if (answer?.status === 202) return
        await new Promise((resolve) => setTimeout(resolve, 200))
      }
    }
    this.posts = this.posts.then(post, post)
    return true
  }

  protected resumeOnWelcome (): void {
    // The server resumes what the last event id names, answering `sse-resume`; a fresh client has nothing.
    if (this.lastEventId === undefined || !this.hasPositions()) return this.afterResume()
    this.resumeId = 'sse-resume'
    // Its answer is due at once; without one the stream is dropped and attached again.
    const stream = this.stream
    setTimeout(() => { if (this.resumeId === 'sse-resume' && this.stream === stream) this.drop() }, 5000).unref()
  }

  slow (ms: number): void {
    const response = this.stream?.response
    if (response === undefined) return
    response.pause()
    setTimeout(() => response.resume(), ms).unref()
  }

  drop (): void {
    this.stream?.request.destroy()
  }

  protected end (): void {
    clearInterval(this.pinger)
    this.stream?.request.destroy()
  }
}

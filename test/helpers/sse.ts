// A raw client of the SSE fallback over node:http (any header, a stream read as it arrives): opens a
// session with a POST, reads the EventSource stream, POSTs frames. No reconnect or dedupe of its own.
import http from 'node:http'
import type { Frame } from './index.js'
import { bounded, ORIGIN, sign } from './index.js'

export interface SseEvent {
  id?: string
  event?: string
  data: string
}

export interface HttpAnswer {
  status: number
  body: any
}

export function httpRequest (port: number, method: string, path: string, headers: Record<string, string>, body?: string): Promise<HttpAnswer> {
  return bounded(new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, method, path, headers: body === undefined ? headers : { 'content-type': 'application/json', ...headers } }, (response) => {
      let text = ''
      response.on('data', (chunk: Buffer) => { text += chunk.toString() })
      response.on('end', () => {
        let parsed: unknown = text
        try {
          parsed = text === '' ? undefined : JSON.parse(text)
        } catch {}
        resolve({ status: response.statusCode ?? 0, body: parsed })
      })
    })
    request.on('error', reject)
    request.end(body)
  }), `${method} ${path}`)
}

export interface SseStream {
  /** The stream's URL path (to reconnect to). */
  path: string
  status: number
  events: SseEvent[]
  /** The `data` of every event without an `event:` name, parsed. */
  frames: Frame[]
  /** The last `id:` seen, as EventSource keeps it. */
  lastEventId: string | undefined
  response: http.IncomingMessage
  ended: Promise<void>
  /** Stops reading (the kernel buffers fill, then the server's). */
  pause(): void
  close(): void
}

export function openStream (port: number, path: string, headers: Record<string, string> = {}): Promise<SseStream> {
  return bounded(new Promise((resolve, reject) => {
    const request = http.request({ host: '127.0.0.1', port, method: 'GET', path, headers: { accept: 'text/event-stream', origin: ORIGIN, ...headers } }, (response) => {
      const stream: SseStream = {
        path,
        status: response.statusCode ?? 0,
        events: [],
        frames: [],
        lastEventId: headers['last-event-id'],
        response,
        ended: new Promise((resolve) => response.once('close', () => resolve())),
        pause: () => response.pause(),
        close: () => request.destroy(),
      }
      response.setEncoding('utf8')
      readEvents(response, (event) => {
        if (event.id !== undefined) stream.lastEventId = event.id
        stream.events.push(event)
        if (event.event === undefined) stream.frames.push(JSON.parse(event.data))
      })
      resolve(stream)
    })
    request.on('error', reject)
    request.end()
  }), `GET ${path}`)
}

/** Opens a session for `sub` and its stream; resolves once the welcome frame arrived. */
export async function openSession (port: number, sub: string, path = '/ws'): Promise<{ session: string; stream: SseStream; post(frame: object): Promise<HttpAnswer>; token: string }> {
  const token = sign(sub)
  const opened = await httpRequest(port, 'POST', `${path}/sse`, { authorization: `Bearer ${token}`, origin: ORIGIN }, '{}')
  if (opened.status !== 201) throw new Error(`opening a session: ${opened.status} ${JSON.stringify(opened.body)}`)
  const stream = await openStream(port, opened.body.stream)
  await waitForFrame(stream, (frame) => frame.type === 'welcome', 'welcome')
  return {
    session: opened.body.session,
    stream,
    token,
    post: (frame) => httpRequest(port, 'POST', opened.body.stream, { authorization: `Bearer ${token}`, origin: ORIGIN }, JSON.stringify(frame)),
  }
}

export async function waitForFrame (stream: SseStream, match: (frame: Frame) => boolean, what: string): Promise<Frame> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const found = stream.frames.find(match)
    if (found !== undefined) return found
    if (Date.now() > deadline) throw new Error(`${what} did not arrive within 10000 ms`)
    await new Promise((resolve) => setImmediate(resolve))
  }
}

/** Calls `onEvent` for each event of an SSE body as it arrives (comments skipped; `data` lines joined). */
export function readEvents (body: NodeJS.ReadableStream, onEvent: (event: SseEvent) => void): void {
  let buffer = ''
  body.on('data', (chunk: string | Buffer) => {
    buffer += chunk.toString()
    for (let end = buffer.indexOf('\n\n'); end !== -1; end = buffer.indexOf('\n\n')) {
      const block = buffer.slice(0, end)
      buffer = buffer.slice(end + 2)
      let event: SseEvent | undefined
      for (const line of block.split('\n')) {
        if (line.startsWith(':') || line === '') continue
        const colon = line.indexOf(':')
        const field = colon === -1 ? line : line.slice(0, colon)
        const value = colon === -1 ? '' : line.slice(colon + 1).replace(/^ /, '')
        event ??= { data: '' }
        if (field === 'data') event.data = event.data === '' ? value : `${event.data}\n${value}`
        else if (field === 'id') event.id = value
        else if (field === 'event') event.event = value
      }
      if (event !== undefined && (event.data !== '' || event.event !== undefined)) onEvent(event)
    }
  })
}

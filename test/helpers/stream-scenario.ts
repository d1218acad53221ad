// The streamed-message scenario the issue asks for, on any set of servers (one process, or two on Redis or
// PostgreSQL) and either transport: a long stream appended at a steady rate while raw clients are dropped
// at seeded random moments and resume (some on the other server, one joining late), and the project's
// client is cut through a proxy and moved between servers. Every raw client checks the wire strictly
// (StreamFollower); at the end every text must equal the source, byte for byte.
import type tap from 'tap'
import WebSocket from 'ws'
import { createClient, isStreamed, type RoomsClient, type StreamedEvent } from '../../lib/client/index.js'
import { bounded, connect, ORIGIN, sign, tcpSocketOf, until, type Client, type Frame, type TestServer } from './index.js'
import { startProxy } from './proxy.js'
import { openStream, httpRequest, type SseStream } from './sse.js'
import { NodeEventSource } from './event-source.js'
import { seeded, StreamFollower, tokens } from './stream-follower.js'

export interface ScenarioOptions {
  servers: TestServer[]
  seed: number
  count: number
  perSecond: number
  transport: 'websocket' | 'sse'
}

export interface ScenarioResult {
  source: string
  followers: StreamFollower[]
  drops: number
  streamId: string
  client: { text: string; deltas: string; ends: string[]; emitted: number; state: string }
}

class BrowserLikeWebSocket extends WebSocket {
  constructor (url: string, protocols?: string | string[]) {
    super(url, protocols, { origin: ORIGIN })
  }
}

const ROOM = 'conversation'

/** A raw client on either transport: its frames so far, and a way to cut it. */
interface RawLink {
  frames: Frame[]
  consumed: number
  cut(): Promise<void>
  /** The SSE stream's last event id (a raw EventSource's resume position). */
  lastEventId?: string | undefined
  session?: string
  server: TestServer
}

async function wsLink (server: TestServer, sub: string): Promise<RawLink & { client: Client }> {
  const client = await connect(server, sub)
  return {
    client,
    server,
    frames: client.frames,
    consumed: client.frames.length,
    cut: async () => {
      tcpSocketOf(client.ws).destroy()
      await client.closed
    },
  }
}

async function sseLink (server: TestServer, sub: string, resume?: string): Promise<RawLink & { post(frame: object): Promise<unknown>; stream: SseStream }> {
  const token = sign(sub)
  const headers = { authorization: `Bearer ${token}`, origin: ORIGIN }
  const opened = await httpRequest(server.port, 'POST', '/ws/sse', headers, JSON.stringify(resume === undefined ? {} : { resume }))
  if (opened.status !== 201) throw new Error(`opening a session: ${opened.status} ${JSON.stringify(opened.body)}`)
  return attachSse(server, opened.body.stream, headers, undefined)
}

async function attachSse (server: TestServer, path: string, headers: Record<string, string>, lastEventId: string | undefined): Promise<RawLink & { post(frame: object): Promise<unknown>; stream: SseStream }> {
  const stream = await openStream(server.port, path, lastEventId === undefined ? {} : { 'last-event-id': lastEventId })
  const link = {
    server,
    stream,
    frames: stream.frames,
    consumed: 0,
    session: path,
    get lastEventId () { return stream.lastEventId },
    post: (frame: object) => httpRequest(server.port, 'POST', path, headers, JSON.stringify(frame)),
    cut: async () => {
      stream.close()
      await bounded(stream.ended, 'the SSE stream ending')
    },
  }
  return link
}

/** Applies what a link received since last time. */
function drain (link: RawLink, follower: StreamFollower): void {
  for (; link.consumed < link.frames.length; link.consumed++) follower.apply(link.frames[link.consumed]!)
}

export async function streamScenario (options: ScenarioOptions): Promise<ScenarioResult> {
  const { servers, transport } = options
  const random = seeded(options.seed)
  const pick = () => servers[Math.floor(random() * servers.length)]!
  const words = tokens(options.count)
  const source = words.join('')
  let drops = 0

  // The project's client, through a proxy that is cut (and pointed at another server) at random moments.
  const proxy = await startProxy(servers[0]!.port)
  const client: RoomsClient = createClient({
    url: `ws://127.0.0.1:${proxy.port}/ws`,
    getToken: () => sign('carol'),
    WebSocket: BrowserLikeWebSocket,
    EventSource: NodeEventSource,
    transport,
    rooms: [ROOM],
    backoff: { initialMs: 10, maxMs: 100 },
  })
  let streamed: StreamedEvent | undefined
  let emitted = 0
  let deltas = ''
  const ends: string[] = []
  client.on('answer', (event: any) => {
    if (!isStreamed(event)) return
    emitted++
    streamed ??= event
    event.on('append', (delta: string) => { deltas += delta })
    event.on('end', (state: string) => ends.push(state))
  })
  await until(() => client.state === 'open' && client.position(ROOM) !== undefined, 'the client in the room')

  // Raw clients: two from the start, one joining late.
  const followers: StreamFollower[] = []
  const links: RawLink[] = []
  const open = async (server: TestServer, sub: string, follower: StreamFollower, first: boolean, previous?: RawLink): Promise<RawLink> => {
    if (transport === 'websocket') {
      const link = await wsLink(server, sub)
      link.client.send({ type: first ? 'join' : 'resume', id: 'r', ...(first ? { room: ROOM } : { payload: { rooms: { [ROOM]: follower.position() } } }) })
      return link
    }
    if (first) {
      const link = await sseLink(server, sub)
      await link.post({ type: 'join', id: 'r', room: ROOM })
      return link
    }
    // A raw EventSource resumes from its last event id: on its session (same server), or in a new
    // session on another server with that id in the opening POST.
    if (previous?.server === server && previous.session !== undefined) {
      return attachSse(server, previous.session, { authorization: `Bearer ${sign(sub)}`, origin: ORIGIN }, previous.lastEventId)
    }
    return sseLink(server, sub, previous?.lastEventId)
  }
  for (const [index, sub] of ['dan', 'eve'].entries()) {
    const follower = new StreamFollower(ROOM)
    followers.push(follower)
    links.push(await open(servers[index % servers.length]!, sub, follower, true))
    await until(() => { drain(links[index]!, follower); return follower.epoch !== '' }, `${sub} joined`)
  }

  const stream = await servers[0]!.app.rooms.stream(ROOM, 'answer', { question: 'why?' })
  let written = 0
  let lateJoined = false
  const writing = new Promise<void>((resolve, reject) => {
    const timer = setInterval(() => {
      try {
        stream.append(words[written++]!)
        if (written === words.length) {
          clearInterval(timer)
          stream.end().then(resolve, reject)
        }
      } catch (err) {
        clearInterval(timer)
        reject(err)
      }
    }, 1000 / options.perSecond)
  })

  // Drops at seeded moments, until the writer is done.
  const dropping = (async () => {
    const writer = { done: false }
    void writing.finally(() => { writer.done = true })
    while (!writer.done) {
      await new Promise((resolve) => setTimeout(resolve, 300 + random() * 1500))
      for (const link of links) drain(link, followers[links.indexOf(link)]!)
      if (writer.done) break
      if (!lateJoined && written > options.count * 0.4) {
        lateJoined = true
        const follower = new StreamFollower(ROOM)
        followers.push(follower)
        links.push(await open(pick(), 'fay', follower, true))
        continue
      }
      const choice = Math.floor(random() * (links.length + 1))
      drops++
      if (choice === links.length) {
        proxy.target = pick().port
        proxy.cut()
        continue
      }
      const link = links[choice]!
      const follower = followers[choice]!
      await link.cut()
      drain(link, follower)
      links[choice] = await open(pick(), ['dan', 'eve', 'fay'][choice]!, follower, false, link)
    }
  })()
  try {
    await Promise.all([writing, dropping])
    await until(() => {
      for (const [index, link] of links.entries()) drain(link, followers[index]!)
      return followers.every((follower) => follower.states.get(stream.id) !== 'streaming') && ends.length > 0
    }, 'every client at the end of the stream').catch((err: Error) => {
      const where = followers.map((follower) => `${follower.states.get(stream.id)} at ${follower.texts.get(stream.id)?.length} (${follower.errors.slice(0, 2).join('; ')})`)
      throw new Error(`${err.message}: source ${source.length}, raw clients ${where.join(', ')}; the client ${streamed?.state} at ${streamed?.text.length}`)
    })
  } finally {
    client.close()
    for (const link of links) await link.cut().catch(() => {})
    await proxy.close()
  }
  return {
    source,
    followers,
    drops,
    streamId: stream.id,
    client: { text: streamed?.text ?? '', deltas, ends, emitted, state: streamed?.state ?? 'none' },
  }
}

/** What every scenario must end with: each raw client strict and whole, the client's one object whole. */
export function checkScenario (t: Pick<typeof tap, 'ok' | 'same' | 'equal'>, result: ScenarioResult, minDrops = 5): void {
  t.ok(result.drops >= minDrops, `dropped ${result.drops} times`)
  for (const follower of result.followers) {
    t.same(follower.errors, [], 'the wire: no seq twice or skipped, no append overlapping or leaving a gap')
    t.equal(follower.texts.get(result.streamId), result.source)
    t.equal(follower.states.get(result.streamId), 'done')
  }
  t.equal(result.client.text, result.source, 'the client\'s object')
  t.equal(result.client.deltas, result.source, 'its append deltas, concatenated')
  t.same(result.client.ends, ['done'])
  t.equal(result.client.emitted, 1, 'one object, through every reconnect')
}

// `fastify.rooms.asyncapi(info?)`: the AsyncAPI 3.0 document of the plugin as configured — its WebSocket
// channel and security, every frame in both directions with its schema (the host's messages and events
// from their TypeBox schemas), namespaces, error and close codes, and the SSE fallback when it is on.
// Operations are the server's: it `receive`s what clients send and `send`s what they get.
import type { TSchema } from 'typebox'
import { InvalidArgumentError } from '../config/errors.js'
import type { ResolvedOptions } from '../config/options.js'
import type { AsyncApiDocument, AsyncApiInfo } from '../types.js'
import { PROTOCOL_VERSION, SUBPROTOCOL } from './protocol.js'
import { builtInClientFrames, clientFrame, closeCodes, eventFrame, plain, presenceFrame, serverFrames, type JsonSchema } from './frame-schemas.js'

/** What the document is made from: the resolved options, in the shape this module needs. */
export interface ContractSource {
  path: string
  auth: { tokenFromQuery: boolean; authenticate: boolean }
  sse: boolean
  presence: boolean
  maxPayload: number
  heartbeatMs: number
  messages: ReadonlyMap<string, { schema: TSchema; room: boolean }>
  events: ReadonlyMap<string, TSchema>
  namespaces: Record<string, Record<string, unknown>>
}

const ref = (to: string) => ({ $ref: to })

/** The document's view of the resolved options (`namespaces`: the names the host configured). */
export function contractSource (options: ResolvedOptions, namespaces: readonly string[]): ContractSource {
  const policies = Object.fromEntries(namespaces.map((name) => {
    const { history, presence, maxMembers, latestOnJoin } = options.roomPolicy(`${name}:`)
    return [name, { history, presence, ...(Number.isFinite(maxMembers) ? { maxMembers } : {}), latestOnJoin }]
  }))
  return {
    path: options.path,
    auth: { tokenFromQuery: options.token.fromQuery === true, authenticate: options.authenticate !== undefined },
    sse: options.sse !== false,
    presence: options.roomPolicy('').presence !== false || Object.values(policies).some((policy) => policy.presence !== false),
    maxPayload: options.maxPayload,
    heartbeatMs: options.heartbeatMs,
    messages: new Map([...options.messages].map(([type, message]) => [type, { schema: message.validator.Type(), room: message.room }])),
    events: new Map([...options.events].map(([type, validator]) => [type, validator.Type()])),
    namespaces: policies,
  }
}

export function asyncApiDocument (source: ContractSource, info: AsyncApiInfo = {}): AsyncApiDocument {
  checkInfo(info)
  const keys = new MessageKeys()
  const messages: Record<string, JsonSchema> = {}
  const add = (key: string, name: string, summary: string, payload: JsonSchema): string => {
    messages[key] = { name, title: name, summary, payload }
    return key
  }

  const received: string[] = []
  const answered: Array<{ key: string; reply: string[] }> = []
  for (const [type, frame] of Object.entries(builtInClientFrames)) {
    const key = add(keys.take(type), type, frame.summary, frame.schema)
    received.push(key)
    answered.push({ key, reply: frame.reply })
  }
  for (const [type, message] of source.messages) {
    const key = add(keys.take(`message.${type}`), type, `The host's \`${type}\` message${message.room ? ' (names a joined room)' : ''}; \`ack\` carries the handler's result.`,
      clientFrame(type, plain(message.schema), { room: message.room ? 'required' : 'optional', id: 'optional' }))
    received.push(key)
    answered.push({ key, reply: ['ack', 'error'] })
  }

  const sent: string[] = []
  for (const [type, frame] of Object.entries(serverFrames)) sent.push(add(keys.take(type), type, frame.summary, frame.schema))
  if (source.presence) sent.push(add(keys.take('presence'), 'presence', 'Who joined or left a room (or, in `presence: \'count\'` rooms, how many are in).', presenceFrame))
  if (source.events.size === 0) {
    sent.push(add(keys.take('event'), 'event', 'An event of the host\'s (no `events` declared: any type, any payload); a room event or a direct frame.', eventFrame(undefined, {})))
  }
  for (const [type, schema] of source.events) {
    sent.push(add(keys.take(`event.${type}`), type, `The host's \`${type}\` event: a room event (possibly streamed) or a direct frame.`, eventFrame(type, plain(schema))))
  }

  const security = securitySchemes(source.auth)
  const securityRefs = Object.keys(security).map((name) => ref(`#/components/securitySchemes/${name}`))
  const socketMessages = Object.fromEntries([...received, ...sent].map((key) => [key, ref(`#/components/messages/${key}`)]))
  const channels: Record<string, unknown> = {
    socket: {
      address: source.path,
      title: 'WebSocket',
      description: `A WebSocket offering the subprotocol \`${SUBPROTOCOL}\` (protocol ${PROTOCOL_VERSION}); JSON text frames of at most ${source.maxPayload} bytes; ` +
        `\`welcome\` first; every frame with an \`id\` gets exactly one \`ack\` or \`error\`; heartbeats every ${source.heartbeatMs} ms.`,
      messages: socketMessages,
      bindings: { ws: { method: 'GET', ...(source.auth.tokenFromQuery ? { query: { type: 'object', properties: { token: { type: 'string' } } } } : {}) } },
      'x-close-codes': closeCodes,
      ...(Object.keys(source.namespaces).length === 0 ? {} : { 'x-namespaces': source.namespaces }),
    },
  }
  const operations: Record<string, unknown> = {}
  const socketOperation = (action: 'send' | 'receive', key: string, reply: string[] = []) => ({
    action,
    channel: ref('#/channels/socket'),
    messages: [ref(`#/channels/socket/messages/${key}`)],
    ...(action === 'receive' ? { security: securityRefs } : {}),
    ...(reply.length === 0 ? {} : { reply: { channel: ref('#/channels/socket'), messages: reply.map((to) => ref(`#/channels/socket/messages/${to}`)) } }),
  })
  for (const { key, reply } of answered) operations[`receive.${key}`] = socketOperation('receive', key, reply)
  for (const key of sent) operations[`send.${key}`] = socketOperation('send', key)

  if (source.sse) {
    messages.sseOpen = { name: 'sseOpen', title: 'Open an SSE session', payload: { type: 'object', additionalProperties: false, properties: { resume: { type: 'string', description: 'a last event id, to resume from' } } } }
    messages.sseSession = { name: 'sseSession', title: 'The session opened', payload: { type: 'object', required: ['session', 'stream'], properties: { session: { type: 'string' }, stream: { type: 'string', description: 'the path of its event stream and frame POSTs' } } } }
    channels.sseOpen = { address: `${source.path}/sse`, title: 'SSE fallback: sessions', messages: { sseOpen: ref('#/components/messages/sseOpen'), sseSession: ref('#/components/messages/sseSession') }, bindings: { http: {} } }
    channels.sseStream = {
      address: `${source.path}/sse/{session}`,
      title: 'SSE fallback: a session',
      description: 'GET: an EventSource receiving every server frame as one `data:` line (SSE ids carry room positions); POST: one client frame per request (202).',
      parameters: { session: { description: 'the session id from the open' } },
      messages: socketMessages,
    }
    operations.openSseSession = { action: 'receive', channel: ref('#/channels/sseOpen'), messages: [ref('#/channels/sseOpen/messages/sseOpen')], security: securityRefs, reply: { channel: ref('#/channels/sseOpen'), messages: [ref('#/channels/sseOpen/messages/sseSession')] }, bindings: { http: { method: 'POST' } } }
    operations.receiveOverSse = { action: 'receive', channel: ref('#/channels/sseStream'), messages: received.map((key) => ref(`#/channels/sseStream/messages/${key}`)), bindings: { http: { method: 'POST' } } }
    operations.sendOverSse = { action: 'send', channel: ref('#/channels/sseStream'), messages: sent.map((key) => ref(`#/channels/sseStream/messages/${key}`)), bindings: { http: { method: 'GET' } } }
  }

  return {
    asyncapi: '3.0.0',
    info: {
      title: info.title ?? 'fastify-rooms',
      version: info.version ?? '1.0.0',
      description: info.description ?? `Rooms over WebSocket${source.sse ? ' (and a Server-Sent Events fallback)' : ''}, served by fastify-rooms.`,
    },
    ...(info.servers === undefined ? {} : { servers: Object.fromEntries(Object.entries(info.servers).map(([name, server]) => [name, { ...server, pathname: server.pathname ?? source.path }])) }),
    defaultContentType: 'application/json',
    channels,
    operations,
    components: { messages, securitySchemes: security },
  }
}

function securitySchemes (auth: ContractSource['auth']): Record<string, JsonSchema> {
  if (auth.authenticate) {
    return { session: { type: 'httpApiKey', in: 'cookie', name: 'cookie', description: 'whatever the host\'s `authenticate` reads from the request (typically a session cookie)' } }
  }
  return {
    bearerSubprotocol: { type: 'httpApiKey', in: 'header', name: 'Sec-WebSocket-Protocol', description: `the JWT as a second subprotocol entry: \`${SUBPROTOCOL}, bearer.<jwt>\` (browsers cannot set headers)` },
    bearerHeader: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT' },
    ...(auth.tokenFromQuery ? { tokenQuery: { type: 'httpApiKey', in: 'query', name: 'token', description: '`?token=<jwt>` (`token.fromQuery`)' } } : {}),
  }
}

/** Component keys are `[A-Za-z0-9._-]`; a type with other characters (`:`) is spelled with `_`, and kept apart. */
class MessageKeys {
  private readonly taken = new Set<string>()

  take (wanted: string): string {
    const base = wanted.replace(/[^A-Za-z0-9._-]/g, '_')
    let key = base
    for (let n = 2; this.taken.has(key); n++) key = `${base}-${n}`
    this.taken.add(key)
    return key
  }
}

function checkInfo (info: unknown): asserts info is AsyncApiInfo {
  if (typeof info !== 'object' || info === null) throw new InvalidArgumentError('info', 'must be an object')
  const { title, version, description, servers } = info as Record<string, unknown>
  for (const [name, value] of Object.entries({ title, version, description })) {
    if (value !== undefined && typeof value !== 'string') throw new InvalidArgumentError(`info.${name}`, 'must be a string')
  }
  if (servers === undefined) return
  if (typeof servers !== 'object' || servers === null) throw new InvalidArgumentError('info.servers', 'must be an object of AsyncAPI servers')
  for (const [name, server] of Object.entries(servers)) {
    const { host, protocol } = (server ?? {}) as Record<string, unknown>
    if (typeof host !== 'string' || typeof protocol !== 'string') throw new InvalidArgumentError(`info.servers.${name}`, 'must have a string host and protocol')
  }
}

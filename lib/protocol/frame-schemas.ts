// Every frame of the protocol as a JSON Schema, for the AsyncAPI document (asyncapi.ts): the client's from
// the schemas the server validates with, the server's as protocol.ts, stream-frames.ts and event-frames.ts
// write them. Server frames are open (a newer server may add fields); client frames are as strict as intake.
import type { TSchema } from 'typebox'
import { AuthPayload, CloseCode, ErrorCode, LatencyPayload, MessageType, ResumePayload, RoomName } from './protocol.js'
import { MAX_TRACESTATE_LENGTH, TRACEPARENT_PATTERN } from './trace-context.js'

export type JsonSchema = Record<string, unknown>

/** A TypeBox schema as plain JSON Schema (TypeBox keeps its own marks off the enumerable keys). */
export function plain (schema: TSchema): JsonSchema {
  return JSON.parse(JSON.stringify(schema)) as JsonSchema
}

const FrameId = { oneOf: [{ type: 'string', minLength: 1, maxLength: 64 }, { type: 'integer' }], description: 'echoed on the answer (`ack` or `error`)' }
const Room = { ...plain(RoomName), description: 'a room name: well-formed text without control characters; `<namespace>:…` takes its namespace\'s options' }
const TraceFields = {
  traceId: { type: 'string', minLength: 1, maxLength: 64, description: 'the handler\'s `ctx.traceId` unless `traceparent` names the trace' },
  traceparent: { type: 'string', pattern: TRACEPARENT_PATTERN, description: 'W3C traceparent: the handler span becomes its child' },
  tracestate: { type: 'string', maxLength: MAX_TRACESTATE_LENGTH, description: 'W3C tracestate, with `traceparent`' },
}
const Seq = { type: 'integer', minimum: 1, description: '1, 2, 3… per room and epoch' }
const Time = { type: 'integer', description: 'server time, ms since the epoch' }
const Position = { seq: { type: 'integer', minimum: 0 }, epoch: { type: 'string' } }
const Members = { type: 'array', items: { type: 'object', required: ['id'], properties: { id: { type: 'string' }, info: { type: 'object' } } } }

/** A client frame: the envelope around `payload` (absent for frames without one). */
export function clientFrame (type: string, payload: JsonSchema | undefined, fields: { room: 'required' | 'optional' | 'none'; id: 'required' | 'optional' }): JsonSchema {
  const required = ['type']
  if (fields.id === 'required') required.push('id')
  if (fields.room === 'required') required.push('room')
  if (payload !== undefined) required.push('payload')
  return {
    type: 'object',
    additionalProperties: false,
    required,
    properties: {
      type: { const: type },
      id: FrameId,
      ...(fields.room === 'none' ? {} : { room: Room }),
      ...(payload === undefined ? {} : { payload }),
      ...TraceFields,
    },
  }
}

/** The built-in client frames, with what answers them (the server frames of an operation's reply). */
export const builtInClientFrames: Record<string, { summary: string; schema: JsonSchema; reply: string[] }> = {
  join: { summary: 'Join a room; the ack gives its position, members or count, and open streamed events.', schema: clientFrame('join', undefined, { room: 'required', id: 'optional' }), reply: ['ack', 'error'] },
  leave: { summary: 'Leave a room.', schema: clientFrame('leave', undefined, { room: 'required', id: 'optional' }), reply: ['ack', 'error'] },
  ping: { summary: 'Answered at once with `pong`.', schema: clientFrame('ping', undefined, { room: 'none', id: 'optional' }), reply: ['pong'] },
  auth: { summary: 'A fresh token for the same user moves the connection\'s expiry.', schema: clientFrame('auth', plain(AuthPayload), { room: 'none', id: 'optional' }), reply: ['ack', 'error'] },
  resume: { summary: 'After a reconnect: rejoin rooms from positions (and unfinished streamed events from their lengths).', schema: clientFrame('resume', plain(ResumePayload), { room: 'none', id: 'optional' }), reply: ['ack', 'error'] },
  latency: { summary: 'Send back a room event\'s `time` (feeds the client-latency histogram).', schema: clientFrame('latency', plain(LatencyPayload), { room: 'none', id: 'optional' }), reply: ['ack', 'error'] },
}

const StreamObject = {
  type: 'object',
  required: ['id', 'state', 'text'],
  properties: {
    id: { type: 'string' },
    state: { enum: ['streaming', 'done', 'aborted'] },
    text: { type: 'string', description: 'the text so far; `append` frames continue it' },
    reason: { type: 'string', description: 'why an aborted stream ended (`idle`, `shutdown`, `lost`, `unknown stream`, or the writer\'s)' },
  },
}

/**
 * An event of the host's (`broadcast`, `stream`, `sendToUser`, `ctx.reply`): a room event has `room`,
 * `seq`, `traceId` and `time` (a streamed one also `stream`); a direct frame only `type` and `payload`.
 */
export function eventFrame (type: string | undefined, payload: JsonSchema): JsonSchema {
  return {
    type: 'object',
    required: ['type', 'payload'],
    properties: {
      type: type === undefined ? plain(MessageType) : { const: type },
      room: Room,
      seq: Seq,
      payload,
      traceId: { type: 'string', description: '32 hex digits (a W3C trace id) unless the publisher chose one' },
      traceparent: { type: 'string', pattern: TRACEPARENT_PATTERN, description: 'the publish span\'s, when the publish was traced' },
      time: Time,
      stream: StreamObject,
    },
  }
}

const errorCodes = Object.values(ErrorCode)

export const serverFrames: Record<string, { summary: string; schema: JsonSchema }> = {
  welcome: {
    summary: 'Always the first frame.',
    schema: serverFrame('welcome', { payload: { type: 'object', required: ['connectionId', 'user', 'heartbeatMs', 'maxPayload', 'protocol'], properties: { connectionId: { type: 'string' }, user: { type: 'object', required: ['id'], properties: { id: { type: 'string' } } }, heartbeatMs: { type: 'integer' }, maxPayload: { type: 'integer' }, protocol: { const: 1 } } } }),
  },
  ack: { summary: 'The answer to a frame with an `id`: the handler\'s result, or a built-in frame\'s.', schema: serverFrame('ack', { id: FrameId, payload: {} }, ['id']) },
  error: {
    summary: 'A frame was refused; with its `id` when it had a readable one.',
    schema: serverFrame('error', { id: FrameId, payload: { type: 'object', required: ['code', 'message'], properties: { code: { enum: errorCodes }, message: { type: 'string' }, details: { type: 'object', properties: { errors: { type: 'array', items: { type: 'object', properties: { path: { type: 'string' }, message: { type: 'string' } } } } } } } } }),
  },
  pong: { summary: 'The answer to `ping`.', schema: serverFrame('pong', { id: FrameId }) },
  reset: { summary: 'History no longer covers the gap (or the epoch changed): refetch the room\'s state.', schema: serverFrame('reset', { room: Room, payload: { type: 'object', required: ['seq', 'epoch'], properties: Position } }, ['room']) },
  left: { summary: 'The server took this socket out of the room.', schema: serverFrame('left', { room: Room, payload: { type: 'object', required: ['reason'], properties: { reason: { enum: ['forbidden', 'server'] } } } }, ['room']) },
  joined: {
    summary: 'The server put this socket into the room; events after `payload.seq` follow.',
    schema: serverFrame('joined', { room: Room, payload: { type: 'object', required: ['seq', 'epoch'], properties: { ...Position, members: Members, memberCount: { type: 'integer' }, count: { type: 'integer' }, streams: { type: 'array', items: { type: 'object' } } } } }, ['room']),
  },
  append: {
    summary: 'More text of a streamed event, from `offset` (UTF-16 code units); `state` when it ends.',
    schema: {
      type: 'object',
      required: ['type', 'room', 'seq', 'id', 'offset', 'text'],
      properties: { type: { const: 'append' }, room: Room, seq: Seq, id: { type: 'string' }, offset: { type: 'integer', minimum: 0 }, text: { type: 'string' }, state: { enum: ['done', 'aborted'] }, reason: { type: 'string' } },
    },
  },
}

export const presenceFrame = eventFrame('presence', {
  oneOf: [
    { type: 'object', required: ['action', 'user'], properties: { action: { enum: ['join', 'leave'] }, user: { type: 'object', required: ['id'], properties: { id: { type: 'string' }, info: { type: 'object' } } } } },
    { type: 'object', required: ['action', 'count'], properties: { action: { const: 'count' }, count: { type: 'integer', minimum: 0 } } },
  ],
})

function serverFrame (type: string, properties: Record<string, unknown>, required: string[] = []): JsonSchema {
  return { type: 'object', required: ['type', ...required, ...('payload' in properties ? ['payload'] : [])], properties: { type: { const: type }, ...properties, time: Time } }
}

/** What each close code the server sends means (docs/reference/errors.md#close-codes). */
export const closeCodes: Record<number, string> = {
  [CloseCode.normal]: 'normal close',
  [CloseCode.goingAway]: '`server shutting down` (or, on the SSE fallback, `session closed`)',
  1006: 'no close frame: a peer that missed a heartbeat is terminated',
  [CloseCode.policyViolation]: '`token expired`, `rate limit abuse`, `disconnectUser`, or an `onConnect` refusal',
  [CloseCode.messageTooBig]: 'a frame over `maxPayload`',
  [CloseCode.internalError]: '`internal error`: a bug in the plugin\'s message path, or `onConnect` failed',
  [CloseCode.tryAgainLater]: '`slow consumer`, `connection limit reached` or `broker unavailable`: reconnect later',
  4000: 'SSE fallback: `replaced by a newer stream`',
}

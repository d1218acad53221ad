// A room event's frame: serialized once per publish by whichever broker assigns its seq.
/** What a room event's frame is made of, besides its seq, time and stream (a PublishRequest has them all). */
export interface RoomEventFields {
  type: string
  room: string
  /** Already JSON. */
  payloadJson: string
  traceId: string
  /** The publish span's, when the publish was traced (observability/tracing.ts finds it again by position). */
  traceparent?: string | undefined
}

/**
 * A room event, serialized once per publish. `payloadJson` is already JSON; `type`, `room` and `traceId`
 * are validated names, but still go through JSON.stringify so no value can break out of its string.
 */
export function roomEventFrame (event: RoomEventFields, seq: number, time: number, streamId?: string): string {
  const [head, tail] = roomEventFrameParts(event, time, streamId)
  return head + seq + tail
}

/**
 * The frame around its seq, for a broker that assigns the seq elsewhere (Redis: inside its Lua script).
 * A streamed event ends with its `stream` object (see stream-frames.ts); a traced one has its
 * `traceparent` right before `time`.
 */
export function roomEventFrameParts (event: RoomEventFields, time: number, streamId?: string): [head: string, tail: string] {
  const end = streamId === undefined ? '}' : `,"stream":${JSON.stringify({ id: streamId, state: 'streaming', text: '' })}}`
  const traceparent = event.traceparent === undefined ? '' : `,"traceparent":"${event.traceparent}"`
  return [
    `{"type":${JSON.stringify(event.type)},"room":${JSON.stringify(event.room)},"seq":`,
    `,"payload":${event.payloadJson},"traceId":${JSON.stringify(event.traceId)}${traceparent},"time":${time}${end}`,
  ]
}

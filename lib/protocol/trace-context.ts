// W3C Trace Context on the wire: a frame's `traceparent` (and `tracestate`), and new trace ids, without
// @opentelemetry/api (a host without it still gets W3C trace ids that its other tools can carry).
import { randomFillSync } from 'node:crypto'

/** `version-traceid-parentid-flags`, lowercase hex (https://www.w3.org/TR/trace-context/#traceparent-header). */
export const TRACEPARENT_PATTERN = '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$'
const TRACEPARENT = new RegExp(TRACEPARENT_PATTERN)
const ZERO_TRACE_ID = '0'.repeat(32)
const ZERO_SPAN_ID = '0'.repeat(16)
/** What the specification asks vendors to propagate at least; longer ones are refused, not cut. */
export const MAX_TRACESTATE_LENGTH = 512

export interface TraceIds {
  traceId: string
  spanId: string
  traceFlags: number
}

// Random bytes drawn 256 ids at a time: a trace id per publish costs a quarter of a randomUUID() and its dashes taken out.
const pool = Buffer.alloc(16 * 256)
let taken = pool.length

/** A new trace id: 32 lowercase hex digits of random, never all zeros. */
export function newTraceId (): string {
  if (taken === pool.length) {
    randomFillSync(pool)
    taken = 0
  }
  const id = pool.toString('hex', taken, taken += 16)
  return id === ZERO_TRACE_ID ? newTraceId() : id
}

/** The ids of a valid traceparent; undefined for none, version ff, or an all-zero id (the specification's invalid values). */
export function parseTraceparent (traceparent: string | undefined): TraceIds | undefined {
  if (traceparent === undefined || !TRACEPARENT.test(traceparent) || traceparent.startsWith('ff')) return undefined
  const traceId = traceparent.slice(3, 35)
  const spanId = traceparent.slice(36, 52)
  if (traceId === ZERO_TRACE_ID || spanId === ZERO_SPAN_ID) return undefined
  return { traceId, spanId, traceFlags: Number.parseInt(traceparent.slice(53, 55), 16) }
}

export function traceparentOf (ids: TraceIds): string {
  return `00-${ids.traceId}-${ids.spanId}-${ids.traceFlags.toString(16).padStart(2, '0')}`
}

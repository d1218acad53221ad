// OpenTelemetry spans (messaging conventions) for admission, each frame handled, each publish and each
// process's fan-out of an event, when the host has @opentelemetry/api installed and `tracing` is not false.
// The API is an optional peer, imported once at register: without it every call site sees `undefined`
// and pays one comparison. The W3C ids without the API (a frame's traceparent, new trace ids) are
// trace-context.ts's.
import type { Context, Span, SpanContext, Tracer } from '@opentelemetry/api'
import { newTraceId, parseTraceparent, traceparentOf } from '../protocol/trace-context.js'

type OpenTelemetry = typeof import('@opentelemetry/api')

/** The trace a publish belongs to: its event's traceId, and the traceparent of its publish span. */
export interface PublishTrace {
  traceId: string
  traceparent: string | undefined
}

/** A frame's span, as its handler and its log lines see it. */
export interface FrameTrace {
  traceId: string
  spanId: string
}

export interface TracedFrame {
  type: string
  room?: string | undefined
  traceparent?: string | undefined
  tracestate?: string | undefined
}

const SYSTEM = 'fastify-rooms'
// The traceparent our publish spans put in an event frame ends the frame's traced part, before its time.
const TRACEPARENT_KEY = ',"traceparent":"'
const TRACEPARENT_LENGTH = 55

/** Loads @opentelemetry/api if the host has it; undefined (tracing off) otherwise or when `enabled` is false. */
export async function loadTracing (enabled: boolean): Promise<Tracing | undefined> {
  if (!enabled) return undefined
  let api: OpenTelemetry
  try {
    api = await import('@opentelemetry/api')
  } catch {
    return undefined
  }
  // A ProxyTracer: a provider the host registers after us (an SDK started later) is used from then on.
  return new Tracing(api, api.trace.getTracer(SYSTEM))
}

export class Tracing {
  // The admission span of each upgrade in progress (a request that never ends leaves nothing behind).
  private readonly admissions = new WeakMap<object, Span>()
  private providerSeen = false

  constructor (private readonly api: OpenTelemetry, private readonly tracer: Tracer) {}

  /**
   * Whether the host registered a tracer provider (an SDK). Until it does, every span would be a no-op
   * that still costs microseconds per frame and publish, so none is made. A provider can come after
   * register (an SDK started later); once one is seen it stays. ProxyTracerProvider is the API's global
   * provider in all of 1.x; a provider without getDelegateTracer is taken as a real one.
   */
  recording (): boolean {
    if (this.providerSeen) return true
    const provider = this.api.trace.getTracerProvider() as { getDelegateTracer?: (name: string) => unknown }
    this.providerSeen = typeof provider.getDelegateTracer !== 'function' || provider.getDelegateTracer(SYSTEM) !== undefined
    return this.providerSeen
  }

  /** An upgrade arrived: its admission span starts, a child of the request's span if the host traces HTTP. */
  admissionStarted (request: object, attributes: { path: string; address: string }): void {
    if (!this.recording()) return
    const span = this.tracer.startSpan('admission', {
      kind: this.api.SpanKind.SERVER,
      attributes: { 'messaging.system': SYSTEM, 'rooms.route': attributes.path, 'client.address': attributes.address },
    })
    this.admissions.set(request, span)
  }

  /** The upgrade's outcome: accepted, or refused with an HTTP status and (when the answer has one) a code. */
  admissionEnded (request: object, outcome: { accepted: true; connectionId: string } | { accepted: false; status: number; code?: string | undefined }): void {
    const span = this.admissions.get(request)
    if (span === undefined) return
    this.admissions.delete(request)
    if (outcome.accepted) {
      span.setAttributes({ 'rooms.admission.outcome': 'accepted', 'messaging.client.id': outcome.connectionId })
    } else {
      span.setAttributes({ 'rooms.admission.outcome': 'refused', 'http.response.status_code': outcome.status, 'error.type': outcome.code ?? String(outcome.status) })
      span.setStatus({ code: this.api.SpanStatusCode.ERROR })
    }
    span.end()
  }

  /**
   * Runs one frame's handling inside its span: a child of the frame's traceparent, else a new trace (not
   * the upgrade's: a socket's frames are unrelated operations). `run` answers the error code it sent, if any.
   */
  async frame (frame: TracedFrame, knownType: boolean, connectionId: string, run: (trace: FrameTrace | undefined) => Promise<string | undefined>): Promise<void> {
    if (!this.recording()) {
      await run(undefined)
      return
    }
    const parent = this.parentOf(frame.traceparent, frame.tracestate)
    // A client's unknown type never names a span: span names stay a bounded set.
    const span = this.tracer.startSpan(knownType ? `process ${frame.type}` : 'process', {
      kind: this.api.SpanKind.CONSUMER,
      attributes: {
        'messaging.system': SYSTEM,
        'messaging.operation.type': 'process',
        'messaging.operation.name': 'process',
        'messaging.client.id': connectionId,
        'rooms.frame.type': knownType ? frame.type : 'unknown',
        ...(frame.room === undefined ? {} : { 'messaging.destination.name': frame.room }),
      },
    }, parent)
    const spanContext = span.spanContext()
    const trace = this.api.isSpanContextValid(spanContext) ? { traceId: spanContext.traceId, spanId: spanContext.spanId } : undefined
    try {
      const code = await this.api.context.with(this.api.trace.setSpan(parent, span), () => run(trace))
      if (code === undefined) {
        span.setAttribute('rooms.outcome', 'ok')
      } else {
        span.setAttributes({ 'rooms.outcome': 'error', 'error.type': code })
        span.setStatus({ code: this.api.SpanStatusCode.ERROR })
      }
    } finally {
      span.end()
    }
  }

  /**
   * Runs a publish inside its span, a child of the active one (a traced HTTP request, a handler's frame).
   * The event's traceId is the span's trace id unless the caller chose one.
   */
  async publish<R extends { seq: number }> (attributes: { room: string; type: string; broker: string }, chosenTraceId: string | undefined, run: (trace: PublishTrace) => Promise<R>): Promise<R> {
    if (!this.recording()) return run({ traceId: chosenTraceId ?? newTraceId(), traceparent: undefined })
    const span = this.tracer.startSpan(`publish ${attributes.type}`, {
      kind: this.api.SpanKind.PRODUCER,
      attributes: {
        'messaging.system': SYSTEM,
        'messaging.operation.type': 'send',
        'messaging.operation.name': 'publish',
        'messaging.destination.name': attributes.room,
        'rooms.event.type': attributes.type,
        'rooms.broker': attributes.broker,
      },
    })
    const spanContext = span.spanContext()
    const traced = this.api.isSpanContextValid(spanContext)
    const traceId = chosenTraceId ?? (traced ? spanContext.traceId : newTraceId())
    // The frame names the span only when it is the event's own trace: a reader never sees two traces.
    const traceparent = traced && span.isRecording() && traceId === spanContext.traceId ? traceparentOf(spanContext) : undefined
    try {
      const result = await this.api.context.with(this.api.trace.setSpan(this.api.context.active(), span), () => run({ traceId, traceparent }))
      span.setAttributes({ 'rooms.seq': result.seq, 'messaging.message.id': `${attributes.room}:${result.seq}` })
      return result
    } catch (err) {
      span.recordException(err as Error)
      span.setStatus({ code: this.api.SpanStatusCode.ERROR })
      throw err
    } finally {
      span.end()
    }
  }

  /**
   * This process's fan-out of one event: one span for all its local recipients, a child of the publish
   * span named in the frame (on any process the broker carried it to). Untraced events make none.
   */
  delivered (room: string, type: string, seq: number, frame: string, recipients: number): void {
    if (!this.recording()) return
    const parent = this.parentOf(traceparentInFrame(frame), undefined)
    if (parent === this.api.ROOT_CONTEXT) return
    this.tracer.startSpan(`deliver ${type}`, {
      kind: this.api.SpanKind.CONSUMER,
      attributes: {
        'messaging.system': SYSTEM,
        'messaging.operation.type': 'process',
        'messaging.operation.name': 'deliver',
        'messaging.destination.name': room,
        'messaging.message.id': `${room}:${seq}`,
        'rooms.seq': seq,
        'rooms.recipients': recipients,
      },
    }, parent).end()
  }

  private parentOf (traceparent: string | undefined, tracestate: string | undefined): Context {
    const ids = parseTraceparent(traceparent)
    if (ids === undefined) return this.api.ROOT_CONTEXT
    const spanContext: SpanContext = { ...ids, isRemote: true }
    if (tracestate !== undefined) spanContext.traceState = this.api.createTraceState(tracestate)
    return this.api.trace.setSpanContext(this.api.ROOT_CONTEXT, spanContext)
  }
}

/**
 * The traceparent a publish span put in an event frame, found from the frame's end: it sits right before
 * `,"time":`, whose last occurrence is always the frame's own (a payload comes earlier, a streamed text is
 * escaped), so a payload cannot forge it.
 */
export function traceparentInFrame (frame: string): string | undefined {
  const time = frame.lastIndexOf(',"time":')
  const start = time - TRACEPARENT_LENGTH - 1
  if (start - TRACEPARENT_KEY.length < 0 || !frame.startsWith(TRACEPARENT_KEY, start - TRACEPARENT_KEY.length)) return undefined
  return frame.slice(start, start + TRACEPARENT_LENGTH)
}

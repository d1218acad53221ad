// Counters behind `fastify.rooms.stats()`, and the same as Prometheus metrics (prom-client) when enabled.
// Keys come from the server (known types, codes, reasons), never from raw client input, so they stay bounded.
import { Counter, Gauge, Histogram, Registry } from 'prom-client'

export type HandshakeResult = 'ok' | 'unauthorized' | 'forbidden_origin' | 'rate_limited' | 'unavailable'

function bump (counter: Record<string, number>, key: string | number, by = 1): void {
  counter[key] = (counter[key] ?? 0) + by
}

/** Current sizes, read when Prometheus scrapes. */
export interface Gauges {
  connectionCount(): number
  sseStreamCount(): number
  roomCount(): number
  memberCount(): number
  maxBufferedBytes(): number
}

interface PromMetrics {
  handshakes: Counter<'result'>
  messages: Counter<'direction' | 'type'>
  errors: Counter<'code'>
  closes: Counter<'code'>
  resumes: Counter<'result'>
  slowConsumerCloses: Counter
  broadcastSeconds: Histogram
  clientLatencySeconds: Histogram
}

/** Close codes a peer's close is counted under; the rest count as `other`. */
const PEER_CLOSE_CODES = new Set([1000, 1001, 1005, 1006, 1008, 1009, 1011, 1013])

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]

/** A running count, sum and maximum, for stats() (the histogram is Prometheus's business). */
export interface Timing {
  count: number
  sumSeconds: number
  maxSeconds: number
}

export class Stats {
  readonly messagesIn: Record<string, number> = Object.create(null)
  readonly messagesOut: Record<string, number> = Object.create(null)
  readonly errors: Record<string, number> = Object.create(null)
  readonly closes: Record<string, number> = Object.create(null)
  readonly handshakes: Record<string, number> = Object.create(null)
  readonly resumes: Record<string, number> = Object.create(null)
  readonly broadcastTiming: Timing = { count: 0, sumSeconds: 0, maxSeconds: 0 }
  readonly clientLatency: Timing = { count: 0, sumSeconds: 0, maxSeconds: 0 }
  slowConsumerCloses = 0
  readonly registry: Registry | undefined
  private readonly prom: PromMetrics | undefined

  /**
   * `metrics`: false, true (a registry of our own) or the host's prom-client Registry. `gauges`: what the
   * gauges read at scrape time (the room registry, made after this).
   */
  constructor (metrics: boolean | Registry, private readonly gauges: () => Gauges | undefined = () => undefined) {
    if (metrics === false) return
    const currentGauges = () => this.gauges()
    const registry = metrics === true ? new Registry() : metrics
    this.registry = registry
    const registers = [registry]
    const gauge = (name: string, help: string, read: (gauges: Gauges) => number) =>
      new Gauge({
        name,
        help,
        registers,
        collect () {
          const gauges = currentGauges()
          this.set(gauges === undefined ? 0 : read(gauges))
        },
      })
    gauge('rooms_connections', 'Open connections (WebSocket and SSE) on this process', (g) => g.connectionCount())
    gauge('rooms_sse_streams', 'Open SSE fallback streams on this process (counted in rooms_connections too)', (g) => g.sseStreamCount())
    // Registered by its constructor; nothing else holds it.
    void new Gauge({
      name: 'rooms_connections_by_transport',
      help: 'Open connections on this process by transport',
      labelNames: ['transport'],
      registers,
      collect () {
        const gauges = currentGauges()
        const sse = gauges === undefined ? 0 : gauges.sseStreamCount()
        this.set({ transport: 'websocket' }, gauges === undefined ? 0 : gauges.connectionCount() - sse)
        this.set({ transport: 'sse' }, sse)
      },
    })
    gauge('rooms_rooms', 'Rooms with members on this process', (g) => g.roomCount())
    gauge('rooms_members', 'Room memberships (socket × room) on this process', (g) => g.memberCount())
    gauge('rooms_max_send_buffer_bytes', 'The largest send buffer of any open socket', (g) => g.maxBufferedBytes())
    this.prom = {
      handshakes: new Counter({ name: 'rooms_handshakes_total', help: 'Upgrade attempts by result', labelNames: ['result'], registers }),
      messages: new Counter({ name: 'rooms_messages_total', help: 'Frames in and out by type (out counts each recipient)', labelNames: ['direction', 'type'], registers }),
      errors: new Counter({ name: 'rooms_errors_total', help: 'error frames sent, by code', labelNames: ['code'], registers }),
      closes: new Counter({ name: 'rooms_closes_total', help: 'Closed connections by close code', labelNames: ['code'], registers }),
      resumes: new Counter({ name: 'rooms_resumes_total', help: 'Resumed rooms by result', labelNames: ['result'], registers }),
      slowConsumerCloses: new Counter({ name: 'rooms_slow_consumer_closes_total', help: 'Sockets closed 1013 for a full send buffer', registers }),
      broadcastSeconds: new Histogram({ name: 'rooms_broadcast_seconds', help: 'From publish to the last local send of a room event', buckets: LATENCY_BUCKETS, registers }),
      clientLatencySeconds: new Histogram({ name: 'rooms_client_latency_seconds', help: 'From publish to the client\'s latency report of the event (includes the report\'s trip back)', buckets: LATENCY_BUCKETS, registers }),
    }
  }

  messageIn (type: string): void {
    bump(this.messagesIn, type)
    this.prom?.messages.inc({ direction: 'in', type })
  }

  /** One call per publish (or direct frame) with the number of sockets it went to. */
  messageOut (type: string, recipients = 1): void {
    if (recipients <= 0) return
    bump(this.messagesOut, type, recipients)
    this.prom?.messages.inc({ direction: 'out', type }, recipients)
  }

  error (code: string): void {
    bump(this.errors, code)
    this.prom?.errors.inc({ code })
  }

  /**
   * A closed socket. A code the server chose is counted as is; a code the peer chose only when it is one
   * of the documented ones, else as `other`, so a client cannot mint label values.
   */
  close (code: number, byServer: boolean): void {
    const label = byServer || PEER_CLOSE_CODES.has(code) ? String(code) : 'other'
    bump(this.closes, label)
    this.prom?.closes.inc({ code: label })
  }

  handshake (result: HandshakeResult): void {
    bump(this.handshakes, result)
    this.prom?.handshakes.inc({ result })
  }

  resume (result: 'replayed' | 'reset'): void {
    bump(this.resumes, result)
    this.prom?.resumes.inc({ result })
  }

  slowConsumerClose (): void {
    this.slowConsumerCloses++
    this.prom?.slowConsumerCloses.inc()
  }

  broadcast (seconds: number): void {
    observe(this.broadcastTiming, seconds)
    this.prom?.broadcastSeconds.observe(seconds)
  }

  clientLatencyReport (seconds: number): void {
    observe(this.clientLatency, seconds)
    this.prom?.clientLatencySeconds.observe(seconds)
  }
}

function observe (timing: Timing, seconds: number): void {
  timing.count++
  timing.sumSeconds += seconds
  if (seconds > timing.maxSeconds) timing.maxSeconds = seconds
}

/** Milliseconds since the epoch with sub-millisecond precision, comparable across processes on one clock. */
export function preciseNow (): number {
  return performance.timeOrigin + performance.now()
}

// Admission under overload: when this process's event loop is behind, or more handshakes arrive per second
// than it takes, a new handshake is refused with 503 and a spread Retry-After before any token is verified,
// any socket made or any room resumed. A reconnect storm (every client of a restarted process at once) then
// costs the cheap refusal, not the whole admission, and clients come back spread over seconds instead of
// all in the next one. Injected connections (a host's tests) are never shed.
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks'
import { TokenBucket } from '../socket/token-bucket.js'

export interface LoadSheddingOptions {
  /** Refuse handshakes while the event loop's delay (p99 since the look before last, each at least 250 ms apart) is above this. */
  maxEventLoopDelayMs: number
  /** Refuse handshakes past this many per second on this process (a burst of as many at once). */
  maxHandshakesPerSecond: number | undefined
}

/** Why a handshake is shed, and the Retry-After (seconds) to answer with. */
export interface Shed {
  reason: 'event_loop_delay' | 'handshake_rate'
  retryAfterSeconds: number
}

/** The loop's delay is sampled this often (the histogram's own timer; nothing per handshake). */
const RESOLUTION_MS = 20
/** A look at the histogram covers at least this long. */
const WINDOW_MS = 250
/** Retry-After spreads over this many seconds at least. */
const MIN_SPREAD_SECONDS = 2
const MAX_SPREAD_SECONDS = 30

export class LoadShedding {
  // Two histograms reset in turn. A reset also forgets the delay in progress (the next sample only marks a
  // start: pinned by test/load-shedding.test.ts), so a loop blocked just after a look would go unseen; the
  // histogram read at a look was not reset at the one before, and so holds every delay since it.
  private readonly histograms: [IntervalHistogram, IntervalHistogram]
  private readIndex: 0 | 1 = 0
  private readonly handshakes: TokenBucket | undefined
  private lookedAt = Date.now()
  private delayMs = 0

  constructor (private readonly options: LoadSheddingOptions) {
    this.histograms = [monitorEventLoopDelay({ resolution: RESOLUTION_MS }), monitorEventLoopDelay({ resolution: RESOLUTION_MS })]
    for (const histogram of this.histograms) histogram.enable()
    const perSecond = options.maxHandshakesPerSecond
    this.handshakes = perSecond === undefined ? undefined : new TokenBucket(perSecond, perSecond)
  }

  /** Whether one more handshake is shed now (it is counted when not). */
  check (now = Date.now()): Shed | undefined {
    if (now - this.lookedAt >= WINDOW_MS) {
      // The histogram reports nanoseconds over every delay sampled since its last reset (the look before
      // the last one); one long pause minutes ago is one sample among thousands, a loop that is behind
      // now is most of them.
      const histogram = this.histograms[this.readIndex]
      this.delayMs = histogram.count === 0 ? 0 : histogram.percentile(99) / 1e6
      histogram.reset()
      this.readIndex = this.readIndex === 0 ? 1 : 0
      this.lookedAt = now
    }
    if (this.delayMs > this.options.maxEventLoopDelayMs) {
      return { reason: 'event_loop_delay', retryAfterSeconds: spread(Math.ceil(this.delayMs / 1000) * 2) }
    }
    if (this.handshakes !== undefined && !this.handshakes.take(now)) return { reason: 'handshake_rate', retryAfterSeconds: spread(MIN_SPREAD_SECONDS) }
    return undefined
  }

  stop (): void {
    for (const histogram of this.histograms) histogram.disable()
  }
}

/** 1 to `seconds` (clamped), at random: the clients refused together do not come back together. */
function spread (seconds: number): number {
  const range = Math.min(MAX_SPREAD_SECONDS, Math.max(MIN_SPREAD_SECONDS, seconds))
  return 1 + Math.floor(Math.random() * range)
}

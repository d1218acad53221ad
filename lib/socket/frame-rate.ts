// A socket's input budget: frames per second and bytes per second (two token buckets), and the abuse
// window that closes a socket which keeps sending while it is being refused.
import { TokenBucket } from './token-bucket.js'

export interface FrameRateLimits {
  rateLimit: { messagesPerSecond: number; burst: number; bytesPerSecond: number; burstBytes: number } | false
  abuseLimit: { rateLimited: number; windowMs: number } | false
}

export class FrameRate {
  private readonly frames: TokenBucket | undefined
  private readonly bytes: TokenBucket | undefined
  private limitedInWindow = 0
  private windowStart = 0

  constructor (private readonly limits: FrameRateLimits) {
    if (limits.rateLimit !== false) {
      this.frames = new TokenBucket(limits.rateLimit.messagesPerSecond, limits.rateLimit.burst)
      this.bytes = new TokenBucket(limits.rateLimit.bytesPerSecond, limits.rateLimit.burstBytes)
    }
  }

  /** Takes a frame and its bytes from the buckets; false when either is empty. */
  take (now: number, bytes: number): boolean {
    if (this.bytes === undefined || this.frames === undefined) return true
    return this.bytes.take(now, bytes) && this.frames.take(now)
  }

  /** Whether a frame of `bytes` would be refused now (takes nothing). */
  empty (now: number, bytes: number): boolean {
    if (this.bytes === undefined || this.frames === undefined) return false
    return !this.bytes.has(now, bytes) || !this.frames.has(now, 1)
  }

  /** Counts a refused frame; true when the abuse limit is crossed (the caller closes the socket 1008). */
  abused (now: number): boolean {
    const abuse = this.limits.abuseLimit
    if (abuse === false) return false
    if (now - this.windowStart > abuse.windowMs) {
      this.windowStart = now
      this.limitedInWindow = 0
    }
    return ++this.limitedInWindow > abuse.rateLimited
  }
}

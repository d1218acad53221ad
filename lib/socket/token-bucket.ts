// A token bucket refilled lazily from the clock: no timer per connection.

export class TokenBucket {
  private tokens: number
  private lastRefill = Date.now()

  constructor (private readonly perSecond: number, private readonly burst: number) {
    this.tokens = burst
  }

  /** Takes `amount` tokens if the bucket holds them. */
  take (now: number, amount = 1): boolean {
    if (!this.has(now, amount)) return false
    this.tokens -= amount
    return true
  }

  /** Whether the bucket holds `amount` tokens now (takes none). */
  has (now: number, amount: number): boolean {
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.lastRefill) * this.perSecond) / 1000)
    this.lastRefill = now
    return this.tokens >= amount
  }
}

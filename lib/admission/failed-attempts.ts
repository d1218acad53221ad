// Failed credential checks per client address, for the requests that carry credentials but are not
// handshakes (an SSE frame POST, a stream re-checked with `authenticate`): a client guessing cookies or
// tokens there gets 429 before the host's `authenticate` runs again. Bounded: the oldest address is
// forgotten first.
import { TokenBucket } from '../socket/token-bucket.js'

const MAX_ADDRESSES = 10_000

export class FailedAttempts {
  private readonly buckets = new Map<string, TokenBucket>()
  private readonly perSecond: number

  constructor (private readonly max: number, windowMs: number) {
    this.perSecond = (max * 1000) / windowMs
  }

  /** False while `address` has used up its failures for the window. */
  allowed (address: string, now: number): boolean {
    return this.buckets.get(address)?.has(now, 1) ?? true
  }

  failed (address: string, now: number): void {
    let bucket = this.buckets.get(address)
    if (bucket === undefined) {
      if (this.buckets.size >= MAX_ADDRESSES) this.buckets.delete(this.buckets.keys().next().value!)
      bucket = new TokenBucket(this.perSecond, this.max)
      this.buckets.set(address, bucket)
    }
    bucket.take(now)
  }
}

// One timer per socket for its token's `exp`: setTimeout fires at once for delays above 2^31-1 ms, so a
// longer wait re-arms until exp is really reached.
const MAX_TIMER_MS = 2_147_483_647

export class TokenExpiry {
  private timer: NodeJS.Timeout | undefined
  /** The token's exp in seconds; undefined when the socket has no expiry (a session socket). */
  exp: number | undefined

  /** `expired` runs in a timer callback: it must not throw (the caller guards it). */
  constructor (
    private readonly expired: () => void,
    /** The longest single wait; the timer re-arms until exp (a parameter so tests can make it short). */
    private readonly maxTimerMs = MAX_TIMER_MS
  ) {}

  set (exp: number | undefined): void {
    clearTimeout(this.timer)
    this.exp = exp
    if (exp === undefined) return
    const delay = exp * 1000 - Date.now()
    this.timer = setTimeout(() => {
      if (Date.now() < exp * 1000) this.set(exp)
      else this.expired()
    }, Math.min(Math.max(delay, 0), this.maxTimerMs))
    this.timer.unref()
  }

  clear (): void {
    clearTimeout(this.timer)
  }
}

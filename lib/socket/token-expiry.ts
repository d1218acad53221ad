// Every socket's token `exp`, on one timer for the whole plugin: a timer per socket is ~200 bytes and a
// timer-list entry each, for an event that happens once an hour. Sockets are kept by their exp second
// (JWT exps are whole seconds, so sockets signed in the same second share one set); the timer is armed for
// the earliest. setTimeout fires at once for delays above 2^31-1 ms, so a longer wait re-arms until the exp
// is really reached.
const MAX_TIMER_MS = 2_147_483_647

/** A socket whose credential runs out: told once its exp second has passed. Must not throw. */
export interface Expiring {
  tokenExpired(): void
}

export class TokenExpiries {
  private readonly bySecond = new Map<number, Set<Expiring>>()
  private readonly expOf = new Map<Expiring, number>()
  private timer: NodeJS.Timeout | undefined
  private armedFor: number | undefined

  constructor (
    /** The longest single wait; the timer re-arms until the exp (a parameter so tests can make it short). */
    private readonly maxTimerMs = MAX_TIMER_MS
  ) {}

  /** The socket's exp in seconds, or undefined for none (a session socket). Replaces any earlier one. */
  set (socket: Expiring, exp: number | undefined): void {
    this.clear(socket)
    if (exp === undefined) return
    this.expOf.set(socket, exp)
    let sockets = this.bySecond.get(exp)
    if (sockets === undefined) this.bySecond.set(exp, (sockets = new Set()))
    sockets.add(socket)
    if (this.armedFor === undefined || exp < this.armedFor) this.arm(exp)
  }

  exp (socket: Expiring): number | undefined {
    return this.expOf.get(socket)
  }

  clear (socket: Expiring): void {
    const exp = this.expOf.get(socket)
    if (exp === undefined) return
    this.expOf.delete(socket)
    const sockets = this.bySecond.get(exp)
    sockets?.delete(socket)
    if (sockets?.size === 0) this.bySecond.delete(exp)
    // The timer may stay armed for a second nobody holds any more: it then only re-arms.
  }

  /** Stops the timer (shutdown); the sockets are closed by then. */
  stop (): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.armedFor = undefined
  }

  private arm (exp: number): void {
    clearTimeout(this.timer)
    this.armedFor = exp
    this.timer = setTimeout(this.fire, Math.min(Math.max(exp * 1000 - Date.now(), 0), this.maxTimerMs))
    this.timer.unref()
  }

  private readonly fire = (): void => {
    this.timer = undefined
    this.armedFor = undefined
    const now = Date.now()
    let next: number | undefined
    for (const [exp, sockets] of this.bySecond) {
      if (exp * 1000 > now) {
        if (next === undefined || exp < next) next = exp
        continue
      }
      this.bySecond.delete(exp)
      for (const socket of sockets) {
        this.expOf.delete(socket)
        // A timer callback: a throw would be uncaught. Each socket is on its own.
        try {
          socket.tokenExpired()
        } catch {}
      }
    }
    if (next !== undefined) this.arm(next)
  }
}

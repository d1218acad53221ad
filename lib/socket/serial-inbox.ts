// A socket's frames run one at a time, in the order they arrived. Frames that arrive while one runs wait
// here, bounded in count and in bytes, so a slow handler cannot make a fast sender's frames pile up.

// Frames waiting behind a slow handler; the rate bucket normally keeps this far lower.
const MAX_WAITING = 256

export class SerialInbox<F> {
  private readonly waiting: Array<{ frame: F; bytes: number }> = []
  private waitingBytes = 0
  private busy = false

  constructor (
    private readonly maxBytes: number,
    /** Runs one frame; must not reject (the inbox logs a rejection and carries on). */
    private readonly run: (frame: F) => Promise<void>,
    /** Whether frames still waiting should run (false once the socket closed). */
    private readonly open: () => boolean,
    private readonly onError: (err: unknown) => void
  ) {}

  /** Runs the frame now or after the ones before it; false when too many wait already (nothing queued). */
  push (frame: F, bytes: number): boolean {
    if (this.busy) {
      if (this.waiting.length >= MAX_WAITING || this.waitingBytes + bytes > this.maxBytes) return false
      this.waiting.push({ frame, bytes })
      this.waitingBytes += bytes
      return true
    }
    void this.drain(frame)
    return true
  }

  /** Runs `task` before any frame: frames that arrive meanwhile wait, in order (bounded as above). */
  first (task: () => Promise<void>): void {
    this.busy = true
    void (async () => {
      await task().catch(this.onError)
      const next = this.open() ? this.waiting.shift() : undefined
      if (next === undefined) {
        this.busy = false
        return
      }
      this.waitingBytes -= next.bytes
      await this.drain(next.frame)
    })()
  }

  /** Drops what waits (the socket closed). */
  clear (): void {
    this.waiting.length = 0
    this.waitingBytes = 0
  }

  private async drain (first: F): Promise<void> {
    this.busy = true
    let frame: F | undefined = first
    while (frame !== undefined) {
      await this.run(frame).catch(this.onError)
      const next = this.open() ? this.waiting.shift() : undefined
      if (next !== undefined) this.waitingBytes -= next.bytes
      frame = next?.frame
    }
    this.busy = false
  }
}

// Room events bound for one socket within one turn of the event loop leave in one write: the fan-out
// queues each socket's framed events, and one setImmediate per turn (not per message, not per socket)
// flushes every socket that has some. The kernel's write path, not the plugin, dominates fan-out; fewer,
// larger writes are what make it cheaper.

export interface Flushable {
  flush(): void
}

/** A socket that held back stream text while it was behind; true while it still holds some. */
export interface Releasable {
  releaseHeld(): boolean
}

// How often sockets holding stream text are looked at: one timer for all of them, only while there are any.
const RELEASE_INTERVAL_MS = 20

export class WriteCoalescer {
  private readonly dirty = new Set<Flushable>()
  private scheduled = false
  private readonly flushAll = () => {
    this.scheduled = false
    // A flush may queue more (a slow consumer's close writes nothing further): take this turn's set.
    const sockets = [...this.dirty]
    this.dirty.clear()
    for (const socket of sockets) socket.flush()
  }

  private readonly holding = new Set<Releasable>()
  private releaseTimer: NodeJS.Timeout | undefined

  /** The socket holds stream text until it catches up: it is asked to release it until it has. */
  later (socket: Releasable): void {
    this.holding.add(socket)
    this.releaseTimer ??= setInterval(() => {
      for (const held of this.holding) {
        // A timer callback: a throw here would be uncaught; the socket keeps its text for the next look.
        try {
          if (!held.releaseHeld()) this.holding.delete(held)
        } catch {
          this.holding.delete(held)
        }
      }
      if (this.holding.size === 0) {
        clearInterval(this.releaseTimer)
        this.releaseTimer = undefined
      }
    }, RELEASE_INTERVAL_MS).unref()
  }

  /** The socket has queued events: flush it at the end of this turn. */
  mark (socket: Flushable): void {
    this.dirty.add(socket)
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(this.flushAll)
  }
}

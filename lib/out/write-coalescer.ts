// Room events bound for one socket within one turn of the event loop leave in one write: the fan-out
// queues each socket's framed events, and one setImmediate per turn (not per message, not per socket)
// flushes every socket that has some. The kernel's write path, not the plugin, dominates fan-out; fewer,
// larger writes are what make it cheaper.

export interface Flushable {
  flush(): void
}

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

  /** The socket has queued events: flush it at the end of this turn. */
  mark (socket: Flushable): void {
    this.dirty.add(socket)
    if (this.scheduled) return
    this.scheduled = true
    setImmediate(this.flushAll)
  }
}

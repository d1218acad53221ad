// Publishes of one process in lanes: a room always goes to the same lane, a lane runs one statement at a
// time, and what queues in a lane meanwhile goes as one `publish_batch` call. A room's publishes keep the
// order they were called in (as on Redis, whose one connection runs commands in order), rooms in other
// lanes run side by side, and under load one round trip and one commit carry many publishes.
import { roomShard } from './notifications.js'

/** One publish's arguments, as `publish()` takes them (PUBLISH_COLUMNS order). */
export type PublishArguments = readonly unknown[]

interface Queued {
  args: PublishArguments
  resolve: (row: { seq: string; epoch: string }) => void
  reject: (err: unknown) => void
}

/** Publishes per statement at most: a burst past it goes in several calls, in order. */
const MAX_BATCH = 64

export class PublishLanes {
  private readonly lanes: Array<{ running: boolean; queue: Queued[] }>

  constructor (
    count: number,
    /** Runs one publish, or several in order; resolves their rows in the same order. */
    private readonly run: (batch: PublishArguments[]) => Promise<Array<{ seq: string; epoch: string }>>
  ) {
    this.lanes = Array.from({ length: Math.max(1, count) }, () => ({ running: false, queue: [] }))
  }

  publish (room: string, args: PublishArguments): Promise<{ seq: string; epoch: string }> {
    const lane = this.lanes[roomShard(room) % this.lanes.length]!
    return new Promise((resolve, reject) => {
      lane.queue.push({ args, resolve, reject })
      if (!lane.running) void this.drain(lane)
    })
  }

  private async drain (lane: { running: boolean; queue: Queued[] }): Promise<void> {
    lane.running = true
    while (lane.queue.length > 0) {
      const batch = lane.queue.splice(0, MAX_BATCH)
      try {
        const rows = await this.run(batch.map((queued) => queued.args))
        batch.forEach((queued, index) => {
          const row = rows[index]
          if (row === undefined) queued.reject(new Error('no position for a publish of the batch'))
          else queued.resolve(row)
        })
      } catch (err) {
        // One statement: a failure (PostgreSQL away, a room held too long) rolls back all of it.
        for (const queued of batch) queued.reject(err)
      }
    }
    lane.running = false
  }
}

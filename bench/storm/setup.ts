// The storm's setup is not the storm: clients start a batch at a time, the next batch once every client
// started so far is open.
const SETUP_BATCH = 200

/**
 * Calls `open(item)` for each item, SETUP_BATCH at a time; returns what each client calls once, when it is
 * first open. `done` runs when all are.
 */
export function openInBatches<T> (items: readonly T[], open: (item: T) => void, done: () => void): () => void {
  let opened = 0
  let started = 0
  const startBatch = (): void => {
    const end = Math.min(items.length, started + SETUP_BATCH)
    for (; started < end; started++) open(items[started]!)
  }
  queueMicrotask(startBatch)
  return () => {
    if (++opened === items.length) done()
    else if (opened === started) startBatch()
  }
}

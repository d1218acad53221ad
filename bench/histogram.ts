// Latency histogram with log-spaced buckets (5% wide, 10 µs to ~100 s): mergeable across processes.
const MIN_MS = 0.01
const FACTOR = 1.05
const BUCKETS = Math.ceil(Math.log(1e7) / Math.log(FACTOR)) + 1

export interface HistogramData {
  counts: number[]
  count: number
  max: number
}

export function emptyHistogram (): HistogramData {
  return { counts: new Array(BUCKETS).fill(0), count: 0, max: 0 }
}

export function record (histogram: HistogramData, ms: number): void {
  const value = Math.max(ms, MIN_MS)
  const index = Math.min(BUCKETS - 1, Math.floor(Math.log(value / MIN_MS) / Math.log(FACTOR)))
  histogram.counts[index]!++
  histogram.count++
  if (ms > histogram.max) histogram.max = ms
}

export function merge (into: HistogramData, from: HistogramData): void {
  for (let i = 0; i < BUCKETS; i++) into.counts[i]! += from.counts[i] ?? 0
  into.count += from.count
  into.max = Math.max(into.max, from.max)
}

/** The upper edge of the bucket holding the q-th quantile, in ms. */
export function quantile (histogram: HistogramData, q: number): number {
  if (histogram.count === 0) return NaN
  const rank = Math.ceil(q * histogram.count)
  let seen = 0
  for (let i = 0; i < BUCKETS; i++) {
    seen += histogram.counts[i]!
    if (seen >= rank) return MIN_MS * FACTOR ** (i + 1)
  }
  return histogram.max
}

// Exactly-once answers for host frames with an `id`: a client that re-sends a frame after a reconnect gets
// the first answer again, and the handler does not run twice. Kept per user (a retry arrives on a new
// connection), bounded by count per user and by age.
import { createHash } from 'node:crypto'
import type { SharedAnswers } from '../brokers/broker.js'
import { ErrorCode, FrameError, type FrameIdValue } from '../protocol/protocol.js'

export type AckOutcome = { ok: true; payload: unknown } | { ok: false; error: FrameError }

interface Entry {
  /** Hash of type, room and payload: the same id with other content is a new frame, not a retry. */
  fingerprint: string
  storedAt: number
  outcome: Promise<AckOutcome>
}

export interface AckCacheLimits {
  maxIdsPerUser: number
  windowMs: number
}

export function frameFingerprint (type: string, room: string | undefined, payload: unknown): string {
  return createHash('sha1').update(type).update('\n').update(room ?? '').update('\n').update(JSON.stringify(payload) ?? '').digest('base64')
}

export class AckCache {
  /** userId → (id key → entry), each map in insertion order, i.e. oldest first. */
  private readonly users = new Map<string, Map<string, Entry>>()

  constructor (private readonly limits: AckCacheLimits) {}

  /** The answer already given (or being computed) for this frame, if it is a retry within the window. */
  lookup (userId: string, id: FrameIdValue, fingerprint: string, now: number): Promise<AckOutcome> | undefined {
    const entry = this.users.get(userId)?.get(idKey(id))
    if (entry === undefined || entry.fingerprint !== fingerprint || now - entry.storedAt > this.limits.windowMs) return undefined
    return entry.outcome
  }

  store (userId: string, id: FrameIdValue, fingerprint: string, outcome: Promise<AckOutcome>, now: number): void {
    let entries = this.users.get(userId)
    if (entries === undefined) {
      entries = new Map()
      this.users.set(userId, entries)
    }
    const key = idKey(id)
    entries.delete(key)
    entries.set(key, { fingerprint, storedAt: now, outcome })
    if (entries.size > this.limits.maxIdsPerUser) entries.delete(entries.keys().next().value as string)
  }

  /** Drops entries older than the window; called from the heartbeat tick, so no timer of its own. */
  sweep (now: number): void {
    for (const [userId, entries] of this.users) {
      for (const [key, entry] of entries) {
        if (now - entry.storedAt <= this.limits.windowMs) break
        entries.delete(key)
      }
      if (entries.size === 0) this.users.delete(userId)
    }
  }

  get size (): number {
    let size = 0
    for (const entries of this.users.values()) size += entries.size
    return size
  }
}

/** How long a retry waits for the first attempt still running on another process. */
const PENDING_WAIT_MS = 10_000
const PENDING_POLL_MS = 50

/**
 * Across processes (a retry may reach another one): claims the (user, id) in the broker before running,
 * or returns the answer the first attempt stored. While the broker is unreachable it runs locally.
 */
export async function answerOnce (shared: SharedAnswers, userId: string, id: FrameIdValue, fingerprint: string, limits: AckCacheLimits, run: () => Promise<AckOutcome>): Promise<AckOutcome> {
  const answerId = idKey(id)
  const deadline = Date.now() + PENDING_WAIT_MS
  for (;;) {
    let claim
    try {
      claim = await shared.claimAnswer(userId, answerId, fingerprint, limits)
    } catch {
      return run()
    }
    if (claim.state === 'done') return parseOutcome(claim.outcome)
    if (claim.state === 'new') {
      const outcome = await run()
      await shared.storeAnswer(userId, answerId, fingerprint, serializeOutcome(outcome), limits.windowMs).catch(() => {})
      return outcome
    }
    if (Date.now() > deadline) {
      return { ok: false, error: new FrameError(ErrorCode.unavailable, 'the first attempt of this frame is still running; retry later') }
    }
    await new Promise((resolve) => setTimeout(resolve, PENDING_POLL_MS))
  }
}

function serializeOutcome (outcome: AckOutcome): string {
  return JSON.stringify(outcome.ok
    ? { ok: true, payload: outcome.payload ?? null }
    : { ok: false, code: outcome.error.code, message: outcome.error.message, details: outcome.error.details })
}

function parseOutcome (json: string): AckOutcome {
  let outcome
  try {
    outcome = JSON.parse(json) as { ok: boolean; payload?: unknown; code?: string; message?: string; details?: FrameError['details'] }
  } catch {
    return { ok: false, error: new FrameError(ErrorCode.internalError, 'the stored answer to this frame is unreadable') }
  }
  return outcome.ok ? { ok: true, payload: outcome.payload } : { ok: false, error: new FrameError(outcome.code ?? ErrorCode.internalError, outcome.message ?? 'error', outcome.details) }
}

function idKey (id: FrameIdValue): string {
  return typeof id === 'number' ? `n${id}` : `s${id}`
}

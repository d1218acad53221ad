// What the campaign's processes share: the host's secret and origin, tokens, and the text a `talk` streams.
import { createSigner } from 'fast-jwt'

export const CHAOS_SECRET = 'chaos-secret-0123456789'
// The Origin test/helpers/event-source.ts sends, which the campaign's SSE clients use.
export const CHAOS_ORIGIN = 'http://app.test'

const signer = createSigner({ key: CHAOS_SECRET })

export function sign (user: string): string {
  const now = Math.floor(Date.now() / 1000)
  return signer({ sub: user, iat: now, exp: now + 3600 })
}

/** The tokens a `talk` of `count` appends, some multi-byte, so a byte-identical end means something. */
export function streamTokens (count: number): string[] {
  return Array.from({ length: count }, (_, i) => `t${i}${i % 7 === 0 ? ' ✓"\n' : i % 5 === 0 ? ' 🙂' : ' '}`)
}

/** Seeded random numbers: a campaign's schedule and workload follow from its seed. */
export { seeded } from '../test/helpers/stream-follower.js'

// Issue 27: the fault campaign's checker is itself tested. A proxy that drops, duplicates or swaps one room
// event in N on its way to raw clients must make the checker report exactly those deliveries, each once,
// as that kind of violation and no other; the same run without mangling reports nothing.
import t from 'tap'
import { runCampaign } from '../chaos/campaign.js'
import { check } from '../chaos/checker.js'
import { emptyHistory, type CampaignHistory, type Publish, type Seen, type SubscriberHistory } from '../chaos/history.js'
import type { Mangling } from '../chaos/proxy.js'
import { drawSchedule, type FaultKind } from '../chaos/schedule.js'

const expectedKind: Record<Mangling, string> = { drop: 'gap', duplicate: 'duplicate', reorder: 'reorder' }

for (const mode of ['drop', 'duplicate', 'reorder'] as const) {
  t.test(`the checker reports each ${mode === 'drop' ? 'dropped' : mode === 'duplicate' ? 'duplicated' : 'reordered'} delivery as a ${expectedKind[mode]}, and nothing else`, async (t) => {
    const result = await runCampaign({ seed: 27, durationMs: 5000, broker: 'memory', transports: [], faults: false, mangle: { mode, every: 25, active: true } })
    t.ok(result.mangled.length >= 5, `the proxy mangled ${result.mangled.length} deliveries`)
    t.same([...new Set(result.verdict.violations.map((violation) => violation.kind))], [expectedKind[mode]], 'one kind of violation')
    t.equal(result.verdict.violations.length, result.mangled.length, 'one violation per mangled delivery')
    // Each violation names the mangled seq.
    for (const mangled of result.mangled) {
      t.ok(result.verdict.violations.some((violation) => violation.subject.endsWith(mangled.room) && violation.message.includes(`seq ${mangled.seq}`)), `seq ${mangled.seq} of ${mangled.room} reported`)
    }
    t.same(check(result.history).violations.length, result.verdict.violations.length, 'the verdict is a function of the recorded history')
  })
}

t.test('without mangling or faults the same workload has no violation', async (t) => {
  const result = await runCampaign({ seed: 27, durationMs: 5000, broker: 'memory', transports: ['ws'], faults: false })
  t.same(result.verdict.violations, [])
  t.ok(result.verdict.eventsChecked > 500, `${result.verdict.eventsChecked} events checked`)
  t.ok(result.verdict.publishesChecked > 100, `${result.verdict.publishesChecked} publishes checked`)
})

// The rules a mangling proxy cannot reach, on histories written by hand.
function history (overrides: Partial<CampaignHistory> = {}): CampaignHistory {
  return { ...emptyHistory(1, 'memory', ['ws'], 0), ...overrides }
}

function subscriber (name: string, seen: Seen[], extra: Partial<SubscriberHistory> = {}): SubscriberHistory {
  return { name, user: name, kind: 'raw-ws', seen, requests: [], finalRooms: ['r'], connected: true, ...extra }
}

const joined: Seen = { at: 1, conn: 1, k: 'joined', room: 'r', seq: 0, epoch: 'e' }
const event = (seq: number, pid: string, at = 10 + seq): Seen => ({ at, conn: 1, k: 'event', room: 'r', seq, type: 'news', pid })
const kinds = (verdict: ReturnType<typeof check>) => verdict.violations.map((violation) => violation.kind)

t.test('every schedule, however short, has the faults that can lose its broker\'s state; the same seed draws the same one', async (t) => {
  const required: Record<'memory' | 'redis' | 'cluster' | 'postgres', FaultKind[]> = { memory: ['kill'], redis: ['redis-restart', 'redis-pause'], cluster: ['failover'], postgres: ['postgres-restart', 'postgres-pause'] }
  for (const broker of ['memory', 'redis', 'cluster', 'postgres'] as const) {
    for (let seed = 1; seed <= 60; seed++) {
      const schedule = drawSchedule(seed, broker, 30_000)
      const lacking = required[broker].filter((kind) => !schedule.some((fault) => fault.kind === kind))
      if (lacking.length > 0) t.fail(`${broker} seed ${seed} lacks ${lacking.join(', ')}`)
    }
    t.same(drawSchedule(27, broker, 30_000), drawSchedule(27, broker, 30_000), `${broker}: reproducible from the seed`)
  }
  t.same(drawSchedule(27, 'redis', 30_000).map((fault) => fault.kind), ['kill', 'cut', 'redis-restart', 'slow', 'slow', 'redis-pause', 'pause', 'pause'], 'CI\'s seed 27 on Redis restarts and pauses it')
})

t.test('the checker: a history that keeps every guarantee has no violation', async (t) => {
  const verdict = check(history({
    subscribers: [subscriber('a', [joined, event(1, 'p1'), event(2, 'p2')]), subscriber('b', [joined, event(1, 'p1'), event(2, 'p2')])],
    publishes: [{ pid: 'p1', room: 'r', sentAt: 5, answeredAt: 6, outcome: 'acked', seq: 1 }, { pid: 'p2', room: 'r', sentAt: 6, answeredAt: 7, outcome: 'acked', seq: 2 }],
    final: { positions: { r: { seq: 2, epoch: 'e' } }, members: [{ process: 's', room: 'r', users: ['a', 'b'] }], memory: [{ process: 's', heapUsed: 1e7, rss: 5e7 }] },
  }))
  t.same(verdict.violations, [])
  t.equal(verdict.eventsChecked, 4)
})

t.test('the checker: an acked publish a member never got is lost, unless a reset came after it', async (t) => {
  const publishes: Publish[] = [{ pid: 'p1', room: 'r', sentAt: 5, answeredAt: 6, outcome: 'acked', seq: 1 }]
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined], { finalRooms: [] })], publishes }))), ['lost'])
  const reset: Seen = { at: 20, conn: 2, k: 'reset', room: 'r', seq: 1, epoch: 'f' }
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, reset], { finalRooms: [] })], publishes }))), [])
})

t.test('the checker: an event of a rolled-back transaction is a phantom; two clients disagreeing on a seq diverge; a wrong seq is misplaced', async (t) => {
  const rolledBack: Publish[] = [{ pid: 'p1', room: 'r', sentAt: 5, answeredAt: 6, outcome: 'rolledback' }]
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, event(1, 'p1')], { finalRooms: [] })], publishes: rolledBack }))), ['phantom'])
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, event(1, 'p1')], { finalRooms: [] }), subscriber('b', [joined, event(1, 'p2')], { finalRooms: [] })] }))), ['divergence'])
  const told: Publish[] = [{ pid: 'p1', room: 'r', sentAt: 5, answeredAt: 6, outcome: 'acked', seq: 2 }]
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, event(1, 'p1')], { finalRooms: [] })], publishes: told }))), ['misplaced'])
})

t.test('the checker: a handler run twice for one id, a request never answered, two answers on one connection', async (t) => {
  const requests = [{ id: 'q1', room: 'r', at: 5 }]
  const runs = [{ at: 6, user: 'a', id: 'q1', process: 's' }, { at: 9, user: 'a', id: 'q1', process: 's' }]
  const answer: Seen = { at: 7, conn: 1, k: 'answer', id: 'q1', ok: true }
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, answer], { requests, finalRooms: [] })], handlerRuns: runs }))), ['ran-twice'])
  const lossBetween = [{ at: 8, kind: 'redis-restart', target: 'redis', losesState: true }]
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, answer], { requests, finalRooms: [] })], handlerRuns: runs, faults: lossBetween }))), [], 'allowed across a fault that lost the stored answers')
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined], { requests, finalRooms: [] })] }))), ['unanswered'])
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, answer, { ...answer, at: 8 }], { requests, finalRooms: [] })] }))), ['answered-twice'])
  const refused: Seen = { at: 7, conn: 1, k: 'answer', id: 'q1', ok: false, code: 'unavailable' }
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, refused], { requests, finalRooms: [] })] }))), [], 'a documented error is an answer')
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, { ...refused, code: 'FST_ROOMS_BROKER' }], { requests, finalRooms: [] })] }))), ['undocumented-error'])
  // A fault's effect is counted until 5 s after it healed (a cluster's clients refresh their slots).
  const healedBefore = (ms: number) => [{ at: 6 - ms - 3000, end: 6 - ms, kind: 'failover', target: 'the master of r', losesState: true }]
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, answer], { requests, finalRooms: [] })], handlerRuns: runs, faults: healedBefore(2500) }))), [], 'the first run 2.5 s after a failover healed')
  t.same(kinds(check(history({ subscribers: [subscriber('a', [joined, answer], { requests, finalRooms: [] })], handlerRuns: runs, faults: healedBefore(10_000) }))), ['ran-twice'], 'not 10 s after')
  // The package's client: its wire ids are its own, so its user's runs are read by the id the host saw.
  const clientRuns = [{ at: 6, user: 'c', id: 'k1-7', process: 's' }, { at: 9, user: 'c', id: 'k1-7', process: 's' }]
  t.same(kinds(check(history({ subscribers: [subscriber('c', [joined], { kind: 'client-ws', finalRooms: [] })], handlerRuns: clientRuns }))), ['ran-twice'])
  t.same(kinds(check(history({ subscribers: [subscriber('c', [joined], { kind: 'client-ws', finalRooms: [] })], handlerRuns: clientRuns.slice(0, 1) }))), [], 'once is fine')
})

t.test('the checker: a stale member, wrong presence, a crash, a stuck client, a heap too big, a streamed text that differs', async (t) => {
  const final = { positions: { r: { seq: 3, epoch: 'e' } }, members: [{ process: 's', room: 'r', users: ['a', 'ghost'] }], memory: [{ process: 's', heapUsed: 300 * 1048576, rss: 4e8 }] }
  const verdict = check(history({
    subscribers: [subscriber('a', [joined, event(1, 'p1')])],
    unexpectedExits: [{ at: 5, process: 's', code: 1, signal: null }],
    stuck: ['b'],
    final,
  }))
  t.same(kinds(verdict).sort(), ['crash', 'memory', 'presence', 'stale', 'stuck'])
  const streamed: Seen[] = [
    joined,
    { at: 2, conn: 1, k: 'event', room: 'r', seq: 1, type: 'talk', stream: { id: 's1', state: 'streaming', text: '', count: 2 } },
    { at: 3, conn: 1, k: 'append', room: 'r', seq: 1, id: 's1', offset: 0, text: 't0 ✓"\n' },
    { at: 4, conn: 1, k: 'append', room: 'r', seq: 1, id: 's1', offset: 9, text: 'x' },
    { at: 5, conn: 1, k: 'append', room: 'r', seq: 1, id: 's1', offset: 6, text: 't1 ', state: 'done' },
  ]
  t.same(kinds(check(history({ subscribers: [subscriber('a', streamed, { finalRooms: [] })] }))), ['stream-offset'], 'an append that skips ahead')
  const wrong: Seen[] = [...streamed.slice(0, 3), { at: 5, conn: 1, k: 'append', room: 'r', seq: 1, id: 's1', offset: 6, text: 't2 ', state: 'done' }]
  t.same(kinds(check(history({ subscribers: [subscriber('a', wrong, { finalRooms: [] })] }))), ['stream-text'])
})

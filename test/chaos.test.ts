// Issue 27: the fault campaign's checker is itself tested. A proxy that drops, duplicates or swaps one room
// event in N on its way to raw clients must make the checker report exactly those deliveries, each once,
// as that kind of violation and no other; the same run without mangling reports nothing.
import t from 'tap'
import { runCampaign } from '../chaos/campaign.js'
import { check } from '../chaos/checker.js'
import type { Mangling } from '../chaos/proxy.js'

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

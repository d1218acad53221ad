// npm run chaos -- --seed S --minutes M [--broker memory,redis,cluster,postgres] [--transport ws,sse]
// One campaign per broker, M minutes each; prints each verdict and, on a violation, the seed, the
// schedule and the smallest windows that show it (the whole history goes to a JSON file). Exits 1 on any
// violation. Its last line is a tap-style summary (one assertion per campaign) for .ci/run.
import { writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import { runCampaign, type CampaignResult } from './campaign.js'
import type { Broker } from './schedule.js'

const BROKERS: Broker[] = ['memory', 'redis', 'cluster', 'postgres']

const { values } = parseArgs({
  options: {
    seed: { type: 'string', default: String(Date.now() % 1_000_000) },
    minutes: { type: 'string', default: '1' },
    broker: { type: 'string', default: BROKERS.join(',') },
    transport: { type: 'string', default: 'ws,sse' },
  },
})
const seed = Number(values.seed)
const minutes = Number(values.minutes)
const brokers = values.broker.split(',') as Broker[]
const transports = values.transport.split(',') as Array<'ws' | 'sse'>
if (!Number.isInteger(seed) || seed < 0) throw new Error('--seed must be a non-negative integer')
if (!(minutes > 0 && minutes <= 120)) throw new Error('--minutes must be more than 0 and at most 120')
for (const broker of brokers) if (!BROKERS.includes(broker)) throw new Error(`--broker: ${broker} is not one of ${BROKERS.join(', ')}`)
for (const transport of transports) if (transport !== 'ws' && transport !== 'sse') throw new Error(`--transport: ${transport} is not ws or sse`)

let failed = 0
const totals = { faults: 0, events: 0, publishes: 0, requests: 0, violations: 0 }
for (const broker of brokers) {
  console.log(`chaos: seed ${seed}, ${broker}, ${transports.join('+')}, ${minutes} min`)
  let result: CampaignResult
  try {
    result = await runCampaign({ seed, durationMs: Math.round(minutes * 60_000), broker, transports, log: (line) => console.log(`  ${line}`) })
  } catch (err) {
    failed++
    console.log(`not ok: the ${broker} campaign could not run: ${(err as Error).stack}`)
    continue
  }
  const { verdict } = result
  totals.faults += result.injected
  totals.events += verdict.eventsChecked
  totals.publishes += verdict.publishesChecked
  totals.requests += verdict.requestsChecked
  totals.violations += verdict.violations.length
  console.log(`${verdict.violations.length === 0 ? 'ok' : 'not ok'}: ${broker}: ${result.injected} faults injected, ${verdict.eventsChecked} events, ${verdict.publishesChecked} publishes and ${verdict.requestsChecked} requests checked, violations: ${verdict.violations.length}`)
  const byKind = new Map<string, number>()
  for (const subscriber of result.history.subscribers) byKind.set(subscriber.kind, (byKind.get(subscriber.kind) ?? 0) + subscriber.seen.filter((seen) => seen.k === 'event').length)
  console.log(`  events by client: ${[...byKind].map(([kind, count]) => `${kind} ${count}`).join(', ')}; resets ${result.history.subscribers.reduce((sum, subscriber) => sum + subscriber.seen.filter((seen) => seen.k === 'reset').length, 0)}; handler runs ${result.history.handlerRuns.length}`)
  // Every history is kept: the checker can read it again (check() of its `history`).
  const file = join(tmpdir(), `chaos-${broker}-${seed}.json`)
  writeFileSync(file, JSON.stringify({ schedule: result.schedule, history: result.history, violations: verdict.violations }))
  if (verdict.violations.length === 0) {
    console.log(`  history: ${file}`)
    continue
  }
  failed++
  console.log(`  reproduce: npm run chaos -- --seed ${seed} --minutes ${minutes} --broker ${broker} --transport ${transports.join(',')}`)
  console.log(`  schedule: ${result.history.faults.map((fault) => `${(fault.at / 1000).toFixed(1)}s ${fault.kind} ${fault.target}`).join('; ')}`)
  const violationsByKind = new Map<string, typeof verdict.violations>()
  for (const violation of verdict.violations) violationsByKind.set(violation.kind, [...violationsByKind.get(violation.kind) ?? [], violation])
  for (const [kind, list] of violationsByKind) {
    console.log(`  ${kind}: ${list.length}`)
    for (const violation of list.slice(0, 3)) {
      console.log(`    ${violation.subject}: ${violation.message}`)
      for (const record of violation.window) console.log(`      ${JSON.stringify(record)}`)
    }
  }
  console.log(`  the whole history: ${file}`)
}
console.log(`chaos: ${brokers.length} campaign(s), ${totals.faults} faults, ${totals.events} events checked, violations: ${totals.violations}`)
console.log(`# { total: ${brokers.length}, pass: ${brokers.length - failed}, fail: ${failed} }`)
process.exitCode = failed === 0 ? 0 : 1

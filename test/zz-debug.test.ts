import t from 'tap'
import { startServer } from './helpers/index.js'
import { streamScenario } from './helpers/stream-scenario.js'
t.test('x', async (t) => {
  const s = await startServer(t, { presence: false, handshakeRateLimit: false })
  const timer = setInterval(() => console.error('tick'), 2000)
  try {
    const result = await streamScenario({ servers: [s], seed: 24, count: 300, perSecond: 100, transport: 'websocket' })
    console.error(JSON.stringify({ drops: result.drops, f: result.followers.map((f) => [f.errors.slice(0, 3), f.states.get(result.streamId), f.texts.get(result.streamId)?.length]), c: [result.client.text.length, result.client.ends, result.client.emitted], src: result.source.length }))
  } finally { clearInterval(timer) }
})

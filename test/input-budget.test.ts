// Issue #20: a frame that meets an empty budget costs as little as it can — a large one is refused unread
// (no shape scan, no JSON.parse), a small one still gets an answer with its id.
import t from 'tap'
import { connect, startServer } from './helpers/index.js'

t.test('#20 over an empty budget a large frame is refused unread (no id in the answer); a small one keeps its id', async (t) => {
  const server = await startServer(t, { presence: false, rateLimit: { messagesPerSecond: 0.01, burst: 1 }, abuseLimit: false })
  const client = await connect(server, 'flooder')
  client.send({ type: 'ping', id: 'first' })
  t.equal((await client.next((frame) => frame.id === 'first')).type, 'pong')
  const keys: Record<string, number> = {}
  for (let n = 0; n < 3000; n++) keys[`k${n}`] = n
  client.send({ type: 'ping', id: 'big', payload: keys })
  const unread = await client.next((frame) => frame.type === 'error', 'the answer to the large frame')
  t.same([unread.id, unread.payload.code], [undefined, 'rate_limited'], 'refused without being parsed')
  client.send({ type: 'ping', id: 'small' })
  const small = await client.next((frame) => frame.type === 'error' && frame.id === 'small', 'the answer to the small frame')
  t.equal(small.payload.code, 'rate_limited')
  t.equal(server.app.rooms.stats().messagesIn['(unread)'], 1, 'counted as unread')
})

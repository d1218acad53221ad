// fastify.close(): 1001 to open sockets, 503 to new upgrades meanwhile, nothing left running afterwards.
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { fileURLToPath } from 'node:url'
import t from 'tap'
import { connect, rejectedUpgrade, startServer, tcpSocketOf } from './helpers/index.js'

t.test('close: open sockets get 1001, upgrades during the grace period get 503', async (t) => {
  const server = await startServer(t, { closeTimeoutMs: 10_000 })
  const fast = await connect(server, 'fast')
  const slow = await connect(server, 'slow')
  // A client that does not read holds the close open until it answers (or closeTimeoutMs passes).
  const slowSocket = tcpSocketOf(slow.ws)
  slowSocket.pause()
  const closing = server.app.close()
  t.same(await fast.closed, { code: 1001, reason: 'server shutting down' })
  const refused = await rejectedUpgrade(server, 'late')
  t.equal(refused.status, 503)
  slowSocket.resume()
  t.same(await slow.closed, { code: 1001, reason: 'server shutting down' })
  await closing
  t.equal(server.app.rooms.stats().connections, 0)
  t.equal(server.app.rooms.stats().closes['1001'], 2)
})

t.test('close: 503 comes from the plugin too when Fastify is told not to answer 503 itself', async (t) => {
  const server = await startServer(t, { closeTimeoutMs: 10_000 }, { fastify: { return503OnClosing: false } })
  const slow = await connect(server, 'slow')
  const slowSocket = tcpSocketOf(slow.ws)
  slowSocket.pause()
  const closing = server.app.close()
  const refused = await rejectedUpgrade(server, 'late')
  t.equal(refused.status, 503)
  t.match(JSON.parse(refused.body), { code: 'FST_ROOMS_UNAVAILABLE', message: /shutting down/ })
  slowSocket.resume()
  await closing
})

t.test('close: a peer that never answers is cut after closeTimeoutMs', async (t) => {
  const server = await startServer(t, { closeTimeoutMs: 100 })
  const stuck = await connect(server, 'stuck')
  const socket = tcpSocketOf(stuck.ws)
  socket.pause()
  await server.app.close()
  t.equal(server.app.rooms.stats().connections, 0)
  socket.resume()
  t.equal((await stuck.closed).code, 1001, 'the close frame was sent before the cut')
})

t.test('close: no timer of the plugin survives', async (t) => {
  const timers = () => process.getActiveResourcesInfo().filter((name) => name === 'Timeout').length
  const before = timers()
  const server = await startServer(t, { heartbeatMs: 20 })
  const client = await connect(server, 'alice')
  await client.join('room')
  await server.app.close()
  await client.closed
  t.equal(timers(), before)
})

t.test('a server process closed on SIGTERM exits by itself with code 0', async (t) => {
  const fixture = fileURLToPath(new URL('./fixtures/server.ts', import.meta.url))
  const child = spawn(process.execPath, ['--import=tsx', fixture], { stdio: ['ignore', 'pipe', 'inherit'] })
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL')
  })
  let output = ''
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()))
  while (!output.includes('\n')) await once(child.stdout, 'data')
  const port = Number(output.split('\n')[0])
  const client = await connect(`ws://127.0.0.1:${port}`, 'alice')
  await client.join('lobby')
  const exited = once(child, 'exit')
  child.kill('SIGTERM')
  t.same(await client.closed, { code: 1001, reason: 'server shutting down' })
  const [code, signal] = await exited
  t.equal(signal, null)
  t.equal(code, 0)
  t.match(output, /closed\n/)
})

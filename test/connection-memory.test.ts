// Issue #14 (leaner sockets): an open socket holds nothing of its upgrade request. @fastify/websocket
// routes the upgrade through a ServerResponse bound to the socket and adds a socket 'error' listener that
// closes over the request and reply; both kept the request, reply, IncomingMessage and every header (the
// token's subprotocol too) alive for the socket's life. These tests pin what lib/admission/upgrade-release.ts and
// the Connection's own error listener rely on.
import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'
import t from 'tap'
import { connect, startServer, tcpSocketOf } from './helpers/index.js'

setFlagsFromString('--expose-gc')
const gc = runInNewContext('gc') as () => void

/** What a FinalizationRegistry saw collected (no WeakRef: reading one keeps its target for the job). */
function collector () {
  const freed = new Set<string>()
  const registry = new FinalizationRegistry<string>((label) => freed.add(label))
  return {
    watch: (target: object, label: string) => registry.register(target, label),
    /** Collects garbage until every label was freed, a few dozen turns at most. */
    async freed (...labels: string[]): Promise<string[]> {
      for (let attempt = 0; attempt < 40 && !labels.every((label) => freed.has(label)); attempt++) {
        gc()
        await new Promise((resolve) => setTimeout(resolve, 5))
      }
      return labels.filter((label) => freed.has(label))
    },
  }
}

t.test('#14 an open socket no longer holds its upgrade request, response or headers', async (t) => {
  const watched = collector()
  let detached: (() => boolean) | undefined
  const server = await startServer(t, { presence: false }, {
    setup: (app) => {
      app.addHook('onRequest', async (req, reply) => {
        if (req.headers.upgrade === undefined) return
        watched.watch(req, 'Fastify request')
        watched.watch(reply, 'Fastify reply')
        watched.watch(req.raw, 'IncomingMessage')
        watched.watch(reply.raw, 'ServerResponse')
        // What detachSocket does that the rest relies on: the socket no longer points back at the response.
        const socket = req.raw.socket
        detached = () => !Object.values(socket).includes(reply.raw)
      })
    },
  })
  const client = await connect(server, 'alice')
  await client.join('r')
  t.equal(detached?.(), true, 'the socket let go of the response (detachSocket)')
  detached = undefined
  const [socket] = [...server.app.websocketServer.clients]
  t.equal(socket?.listenerCount('error'), 1, "the socket's only error listener is the Connection's")
  const all = ['Fastify request', 'Fastify reply', 'IncomingMessage', 'ServerResponse']
  t.same(await watched.freed(...all), all, 'all collected while the socket is open')
  t.equal(server.app.rooms.stats().connections, 1)
  client.ws.send(JSON.stringify({ type: 'ping', id: 'p' }))
  t.equal((await client.nextOfType('pong')).id, 'p', 'the socket still works')
})

t.test('#14 a peer protocol error reaches the Connection: closed 1002, logged at warn, nobody else affected', async (t) => {
  const server = await startServer(t, { presence: false })
  const bad = await connect(server, 'mallory')
  const good = await connect(server, 'alice')
  await good.join('r')
  // A frame with RSV2 set: no extension defines it, so ws fails the connection with 1002.
  const raw = tcpSocketOf(bad.ws)
  raw.write(Buffer.from([0xa1, 0x80, 0, 0, 0, 0]))
  t.equal((await bad.closed).code, 1002)
  const warned = () => server.logs.some((line) => line.includes('"level":40') && line.includes('fastify-rooms: socket error'))
  for (let turn = 0; turn < 1000 && !warned(); turn++) await new Promise((resolve) => setImmediate(resolve))
  t.ok(warned(), 'one warn line says why')
  await server.app.rooms.broadcast('r', 'still', {})
  t.equal((await good.nextOfType('still')).seq, 1)
})

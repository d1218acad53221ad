// Processes killed mid-transaction and mid-relay, on a real PostgreSQL (and Redis for the outbox): an event
// exists iff its transaction committed, each arrives once, in order, on raw clients; the outbox relay
// moves to a survivor. And the outbox and `join(room, { from })` of our own client, on the memory broker.
import pg from 'pg'
import t from 'tap'
import { postgresBroker } from '../lib/brokers/postgres.js'
import { connect, range, rawClient, retryUntil, seqsOf, startServer, until } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { postgresMissing, startPostgres } from './helpers/postgres.js'
import { redisMissing, startRedis } from './helpers/redis.js'
import { startFixtureProcess, type ServerProcess } from './helpers/server-process.js'

const http = (server: ServerProcess) => server.url.replace(/^ws/, 'http')

async function post (server: ServerProcess, body: Record<string, unknown>): Promise<{ status: number; body: any }> {
  const response = await fetch(`${http(server)}/items`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  return { status: response.status, body: await response.json() }
}

const items = (frames: Array<{ type: string }>) => frames.filter((frame) => frame.type === 'item') as unknown as Array<{ seq: number; payload: { id: string } }>

if (componentAvailable(t, postgresMissing(), 'Postgres under process faults')) {
  t.test('three processes on the Postgres broker: one killed -9 mid-transaction publishes nothing, holds nothing, and its members leave', async (t) => {
    const db = await startPostgres(t)
    const env = { DATABASE_URL: db.url, PROCESS_TTL_MS: '600' }
    // One at a time: three tsx start-ups at once on a busy 2-core runner take long.
    const a = await startFixtureProcess(t, 'postgres-server.ts', env)
    const b = await startFixtureProcess(t, 'postgres-server.ts', env)
    const c = await startFixtureProcess(t, 'postgres-server.ts', env)
    const watcher = await rawClient(b.url, 'watcher')
    watcher.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'feed' }))
    await until(() => watcher.frames.some((frame) => frame.type === 'ack'), 'join ack')
    const onC = await rawClient(c.url, 'carol')
    onC.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'feed' }))
    await until(() => watcher.frames.some((frame) => frame.type === 'presence' && frame.payload.user.id === 'carol'), 'carol present')
    const first = await post(a, { room: 'feed', text: 'one' })
    t.equal(first.status, 200)
    // A transaction on C that published and never commits: C is killed while it holds the room.
    const held = post(c, { room: 'feed', text: 'never', holdMs: 60_000 }).catch(() => ({ status: 0, body: null }))
    await retryUntil(async () => {
      const inspect = await db.client()
      const { rows } = await inspect.query("SELECT count(*)::int AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'rooms' AND l.mode = 'RowExclusiveLock'")
      await inspect.end()
      if (rows[0].n === 0) throw new Error('not holding yet')
    })
    c.child.kill('SIGKILL')
    t.equal((await held).status, 0, 'the request died with its process')
    const after = await retryUntil(() => post(a, { room: 'feed', text: 'two' }).then((reply) => {
      if (reply.status !== 200) throw new Error(JSON.stringify(reply.body))
      return reply
    }))
    t.equal(after.body.seq, first.body.seq + 1 + presenceSeqsBetween(watcher.frames, first.body.seq, after.body.seq), 'the killed transaction left no seq behind')
    await until(() => items(watcher.frames).length === 2, 'the second item')
    t.same(items(watcher.frames).map((frame) => frame.payload.id), [first.body.id, after.body.id], 'the killed transaction\'s event never arrives')
    const leave = await retryUntil(async () => {
      const frame = watcher.frames.find((f) => f.type === 'presence' && f.payload.action === 'leave' && f.payload.user.id === 'carol')
      if (frame === undefined) throw new Error('carol still present')
      return frame
    })
    t.ok(leave, 'a survivor reaped the dead process\'s members')
    const seqs = watcher.frames.filter((frame) => typeof frame.seq === 'number').map((frame) => frame.seq as number)
    t.same(seqs, range(seqs[0]!, seqs[0]! + seqs.length - 1), 'the room\'s events reach the watcher once each, in order, no gap')
  })
}

/** Presence events (joins and leaves) that took seqs between two host events. */
function presenceSeqsBetween (frames: Array<{ type: string; seq?: number }>, from: number, to: number): number {
  return frames.filter((frame) => frame.type === 'presence' && frame.seq! > from && frame.seq! < to).length
}

if (componentAvailable(t, postgresMissing() ?? redisMissing(), 'the outbox under process faults')) {
  t.test('the outbox on Redis: the relay killed -9 mid-relay moves to a survivor, and every committed row arrives exactly once, in order', async (t) => {
    const db = await startPostgres(t)
    const redis = await startRedis(t)
    const env = { DATABASE_URL: db.url, REDIS_URL: redis.url, BROKER: 'redis', PROCESS_TTL_MS: '600' }
    // The first process takes the relay's lock; the others wait for it.
    const relay = await startFixtureProcess(t, 'postgres-server.ts', env)
    await retryUntil(async () => {
      const inspect = await db.client()
      const { rows } = await inspect.query("SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND granted")
      await inspect.end()
      if (rows[0].n === 0) throw new Error('no relay yet')
    })
    const b = await startFixtureProcess(t, 'postgres-server.ts', env)
    const c = await startFixtureProcess(t, 'postgres-server.ts', env)
    const watcher = await rawClient(b.url, 'watcher')
    watcher.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'feed' }))
    await until(() => watcher.frames.some((frame) => frame.type === 'ack'), 'join ack')
    const committed: string[] = []
    const rolledBack: string[] = []
    let sent = 0
    const writers = [b, c].map(async (server) => {
      for (let i = 0; i < 60; i++) {
        const rollback = sent++ % 10 < 3
        const reply = await post(server, { room: 'feed', text: `${i}`, rollback })
        if (reply.status !== 200) throw new Error(JSON.stringify(reply.body))
        ;(rollback ? rolledBack : committed).push(reply.body.id)
        t.equal(reply.body.seq, 0, 'an outbox write has no seq before its COMMIT')
        if (committed.length === 20) relay.child.kill('SIGKILL')
      }
    })
    await Promise.all(writers)
    t.ok(relay.child.signalCode === 'SIGKILL', 'the relay was killed during the writes')
    await retryUntil(async () => { if (items(watcher.frames).length < committed.length) throw new Error(`${items(watcher.frames).length} of ${committed.length}`) }, 30_000)
    const received = items(watcher.frames)
    t.equal(received.length, committed.length, 'no row twice')
    t.same(received.map((frame) => frame.payload.id).sort(), [...committed].sort(), 'every committed row, no rolled-back one')
    t.same(seqsOf(watcher.frames, 'item'), range(received[0]!.seq, received[0]!.seq + received.length - 1), 'one seq each, in order')
  })
}

if (componentAvailable(t, postgresMissing(), 'the outbox on the memory broker')) {
  t.test('the outbox on the memory broker: COMMIT delivers, ROLLBACK never does; a page loads rows with the position and our client joins from it', async (t) => {
    const db = await startPostgres(t)
    const pool = new pg.Pool({ connectionString: db.url })
    pool.on('error', () => {})
    t.teardown(() => pool.end())
    await pool.query('CREATE TABLE items (id bigserial PRIMARY KEY, room text, text text)')
    const server = await startServer(t, { outbox: { pool }, presence: false })
    const write = async (text: string, end: 'COMMIT' | 'ROLLBACK') => {
      const client = await pool.connect()
      try {
        await client.query('BEGIN')
        const result = await server.app.rooms.broadcast('feed', 'item', { text }, { transaction: client })
        await client.query('INSERT INTO items (room, text) VALUES ($1, $2)', ['feed', text])
        await client.query(end)
        return result
      } finally {
        client.release()
      }
    }
    const watcher = await connect(server, 'watcher')
    await watcher.join('feed')
    const written = await write('a', 'COMMIT')
    t.equal(written.seq, 0)
    t.match(written.outboxId, /^[0-9]+$/)
    await write('rolled back', 'ROLLBACK')
    await write('b', 'COMMIT')
    t.same([(await watcher.nextOfType('item')).payload, (await watcher.nextOfType('item')).payload], [{ text: 'a' }, { text: 'b' }])
    t.same(seqsOf(watcher, 'item'), [1, 2])

    // Load rows with the position in one snapshot; more rows commit; join from the position.
    const client = await pool.connect()
    await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ')
    const position = await server.app.rooms.position('feed', { transaction: client })
    const { rows } = await client.query<{ text: string }>('SELECT text FROM items WHERE room = $1 ORDER BY id', ['feed'])
    await client.query('COMMIT')
    client.release()
    t.same(position, { seq: 2, epoch: position.epoch })
    await write('c', 'COMMIT')
    await write('d', 'COMMIT')
    await until(() => seqsOf(watcher, 'item').length === 4, 'c and d relayed')
    const reader = await server.app.rooms.inject({ id: 'reader' })
    const seen: string[] = []
    reader.on('item', (event) => seen.push((event.payload as { text: string }).text))
    const ack = await reader.join('feed', { from: position })
    t.same({ from: ack.from, replayed: ack.replayed, seq: ack.seq }, { from: 'replayed', replayed: 2, seq: 4 })
    await until(() => seen.length === 2, 'the two rows after the position')
    t.same([...rows.map((row) => row.text), ...seen], ['a', 'b', 'c', 'd'], 'rows loaded + events received: each once')
    const stale = await server.app.rooms.inject({ id: 'stale' })
    const refused = await stale.join('feed', { from: { seq: 99, epoch: position.epoch } }).catch((err: unknown) => err)
    t.equal((refused as { code?: string }).code, 'invalid_message', 'a position ahead of the room is refused')
    await t.rejects(stale.join('feed', { from: { seq: -1, epoch: '' } }), { code: 'invalid_message', message: 'from must be { seq, epoch } as fastify.rooms.position gave it' })
    reader.close()
    stale.close()
  })

  t.test('the outbox option is checked at register', async (t) => {
    await t.rejects(startServer(t, { outbox: {} as never }), { code: 'FST_ROOMS_INVALID_OPTION', message: 'fastify-rooms: option "outbox" must be { pool } with a pg Pool' })
    const pool = { query: async () => ({ rows: [] }), connect: async () => { throw new Error('x') } }
    await t.rejects(startServer(t, { outbox: { pool, schema: '1bad' } as never }), { code: 'FST_ROOMS_INVALID_OPTION', message: /option "outbox.schema" must be 1 to 40/ })
  })
}

if (componentAvailable(t, postgresMissing(), 'a route holding a client while PostgreSQL stops')) {
  t.test('chaos finding: PostgreSQL stopping while a route holds a client inside its transaction, written as docs/postgres.md shows it, answers 500 and the process lives on', async (t) => {
    const db = await startPostgres(t)
    const pool = new pg.Pool({ connectionString: db.url, max: 4 })
    pool.on('error', () => {})
    t.teardown(() => pool.end())
    let holding: () => void = () => {}
    const held = new Promise<void>((resolve) => { holding = resolve })
    let release: () => void = () => {}
    const released = new Promise<void>((resolve) => { release = resolve })
    const server = await startServer(t, { broker: postgresBroker({ pool, checkIntervalMs: 200 }) }, {
      setup: (app) => {
        // The documented pattern: the client between queries, idle in its transaction, when PostgreSQL goes.
        app.post<{ Body: { hold: boolean } }>('/notes', async (request) => {
          const client = await pool.connect()
          const lost = (err: Error) => request.log.warn({ err }, 'database connection lost')
          client.on('error', lost)
          try {
            await client.query('BEGIN')
            const { seq } = await app.rooms.broadcast('notes', 'note', { text: 'x' }, { transaction: client })
            if (request.body.hold) {
              holding()
              await released
            }
            await client.query('COMMIT')
            return { seq }
          } catch (err) {
            await client.query('ROLLBACK').catch(() => {})
            throw err
          } finally {
            client.off('error', lost)
            client.release()
          }
        })
      },
    })
    const answer = server.app.inject({ method: 'POST', url: '/notes', payload: { hold: true } })
    await held
    await db.stop()
    release()
    t.equal((await answer).statusCode, 500, 'the COMMIT on a lost connection fails the request')
    await db.start()
    const after = await retryUntil(async () => {
      const reply = await server.app.inject({ method: 'POST', url: '/notes', payload: { hold: false } })
      if (reply.statusCode !== 200) throw new Error(reply.body)
      return reply
    })
    t.equal(after.json().seq, 1, 'the lost transaction published nothing; the next is seq 1')
  })
}

// The Postgres broker on a real PostgreSQL started by the test: many processes with Redis's guarantees,
// publishes inside the host's transaction (delivered iff it commits, seq order = commit order, no gap
// from a rollback), and every bad transaction refused with a clear error.
import pg from 'pg'
import t from 'tap'
import Type from 'typebox'
import { defineMessage, type RoomsOptions } from '../lib/index.js'
import { postgresBroker, type PostgresBrokerOptions } from '../lib/brokers/postgres.js'
import { eventChannel } from '../lib/brokers/postgres/notifications.js'
import { connect, range, rawClient, retryUntil, seqsOf, startServer, until, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { postgresMissing, startPostgres, type PostgresServer } from './helpers/postgres.js'

async function instance (t: Parameters<typeof startServer>[0], db: PostgresServer, options: Partial<RoomsOptions> = {}, broker: Partial<PostgresBrokerOptions> = {}): Promise<TestServer> {
  return startServer(t, { broker: postgresBroker({ connectionString: db.url, processTtlMs: 600, checkIntervalMs: 100, ...broker }), ...options })
}

function pool (t: { teardown(fn: () => unknown): void }, db: PostgresServer): pg.Pool {
  const p = new pg.Pool({ connectionString: db.url, max: 10 })
  p.on('error', () => {})
  t.teardown(() => p.end())
  return p
}

/** Runs `work` in a transaction on its own client; commits unless it asks for a rollback. */
async function inTransaction<T> (p: pg.Pool, work: (client: pg.PoolClient) => Promise<T>, end: 'COMMIT' | 'ROLLBACK' = 'COMMIT', begin = 'BEGIN'): Promise<T> {
  const client = await p.connect()
  try {
    await client.query(begin)
    const result = await work(client)
    await client.query(end)
    return result
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {})
    throw err
  } finally {
    client.release()
  }
}

const events = (frames: Array<{ type: string }>, type = 'note') => frames.filter((frame) => frame.type === type) as Array<{ type: string; seq: number; payload: any }>

if (componentAvailable(t, postgresMissing(), 'Postgres broker')) {
  t.test('two processes on one PostgreSQL: one seq per room, history, presence, user routing and server-side joins everywhere', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db)
    const b = await instance(t, db)
    const alice = await connect(b, 'alice')
    const ack = await alice.join('lobby')
    t.equal(ack.payload.seq, 0)
    t.same((await alice.nextOfType('presence')).payload, { action: 'join', user: { id: 'alice' } })
    const bob = await connect(a, 'bob')
    await bob.join('lobby')
    t.same((await alice.nextOfType('presence')).payload, { action: 'join', user: { id: 'bob' } }, 'a join on A reaches B')
    for (const n of range(1, 5)) await (n % 2 === 0 ? a : b).app.rooms.broadcast('lobby', 'note', { n })
    const seen = await retryUntil(async () => {
      const notes = events(alice.frames)
      if (notes.length < 5) throw new Error(`alice has ${notes.length} notes`)
      return notes
    })
    t.same(seen.map((frame) => frame.payload.n), [1, 2, 3, 4, 5])
    t.same(seen.map((frame) => frame.seq), [3, 4, 5, 6, 7], 'the two presence joins took seqs 1–2; one sequence across processes')
    const history = await a.app.rooms.history('lobby', { after: 2 })
    t.same(history.events.map((event) => event.seq), [3, 4, 5, 6, 7])
    t.equal(history.complete, true)
    t.same((await b.app.rooms.members('lobby')).map((member) => member.id).sort(), ['alice', 'bob'])
    t.equal(await a.app.rooms.count('lobby'), 2)
    t.same((await a.app.rooms.rooms()), ['lobby'])

    await a.app.rooms.sendToUser('alice', 'notice', { big: 'x'.repeat(9000) })
    t.equal((await alice.nextOfType('notice')).payload.big.length, 9000, 'a user message larger than a notification arrives')
    await a.app.rooms.join({ userId: 'alice' }, 'side')
    t.equal((await alice.nextOfType('joined')).room, 'side', 'a server-side join made on A applies on B')
    const first = await a.app.rooms.broadcast('lobby', 'note', { n: 6 }, { idempotencyKey: 'k1' })
    const again = await b.app.rooms.broadcast('lobby', 'note', { n: 6 }, { idempotencyKey: 'k1' })
    t.same(again, first, 'an idempotency key publishes once across processes')
    const big = await a.app.rooms.broadcast('lobby', 'note', { big: 'y'.repeat(10_000) })
    const bigFrame = await alice.next((frame) => frame.type === 'note' && frame.seq === big.seq, 'the big event')
    t.equal((bigFrame.payload as { big: string }).big.length, 10_000, 'an event larger than a notification is read by seq')
    await a.app.rooms.disconnectUser('alice', 4001, 'bye')
    t.same(await alice.closed, { code: 4001, reason: 'bye' })
    t.same((await bob.next((frame) => frame.type === 'presence' && frame.payload.action === 'leave', 'a leave')).payload, { action: 'leave', user: { id: 'alice' } })
  })

  t.test('a retried frame runs its handler once across processes', async (t) => {
    const db = await startPostgres(t)
    let runs = 0
    const options: Partial<RoomsOptions> = {
      messages: {
        order: defineMessage({ schema: Type.Object({ item: Type.String() }), handler: async (_ctx, payload) => ({ run: ++runs, item: payload.item }) }),
      },
    }
    const a = await instance(t, db, options)
    const b = await instance(t, db, options)
    const onA = await connect(a, 'alice')
    const first = await onA.request({ type: 'order', payload: { item: 'tea' } }, 'o-1')
    await onA.close()
    const onB = await connect(b, 'alice')
    const retried = await onB.request({ type: 'order', payload: { item: 'tea' } }, 'o-1')
    t.same(retried.payload, first.payload, 'the first answer, from the other process')
    t.equal(runs, 1)
  })

  t.test('published in the caller\'s transaction: delivered iff it commits, seqs in commit order with no gap from 30 % rollbacks', async (t) => {
    const db = await startPostgres(t)
    const p = pool(t, db)
    await p.query('CREATE TABLE items (id bigserial PRIMARY KEY, room text, text text)')
    // Without presence, the room's only events are the host's.
    const a = await instance(t, db, { presence: false })
    const b = await instance(t, db, { presence: false })
    const raw = await rawClient(b, 'watcher')
    raw.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'items' }))
    await until(() => raw.frames.some((frame) => frame.type === 'ack'), 'join ack')
    const committed: string[] = []
    const rolledBack: string[] = []
    const seqs = new Map<string, number>()
    let n = 0
    await Promise.all(range(1, 4).map(async (worker) => {
      for (let i = 0; i < 15; i++) {
        const rollback = ++n % 10 < 3
        const server = worker % 2 === 0 ? a : b
        const id = `w${worker}-${i}`
        const { seq } = await inTransaction(p, async (client) => {
          const result = await server.app.rooms.broadcast('items', 'note', { id }, { transaction: client })
          // Inserted while the transaction holds the room: the row ids follow the order the room was taken in.
          await client.query('INSERT INTO items (room, text) VALUES ($1, $2)', ['items', id])
          return { seq: result.seq }
        }, rollback ? 'ROLLBACK' : 'COMMIT')
        ;(rollback ? rolledBack : committed).push(id)
        if (!rollback) seqs.set(id, seq)
      }
    }))
    t.equal(committed.length + rolledBack.length, 60)
    const received = await retryUntil(async () => {
      const notes = events(raw.frames)
      if (notes.length < committed.length) throw new Error(`${notes.length} of ${committed.length}`)
      return notes
    })
    // One more event, published after everything else, shows that nothing else is on its way.
    const last = await a.app.rooms.broadcast('items', 'note', { id: 'end' })
    await until(() => events(raw.frames).some((frame) => frame.payload.id === 'end'), 'the last event')
    t.equal(last.seq, committed.length + 1, 'no seq was taken by a rolled-back transaction')
    t.same(received.map((frame) => frame.seq), range(1, committed.length), 'every seq once, in order, no gap')
    t.same(received.map((frame) => frame.payload.id).sort(), [...committed].sort(), 'exactly the committed events')
    t.notOk(received.some((frame) => rolledBack.includes(frame.payload.id)), 'no rolled-back event')
    for (const frame of received) t.equal(seqs.get(frame.payload.id), frame.seq, `the seq broadcast resolved for ${frame.payload.id}`)
    // Each transaction took its row id after the room, and held the room until its commit: row ids in seq
    // order increase only if the room was held from publish to COMMIT (commit order = seq order).
    const { rows } = await p.query<{ id: string; text: string }>('SELECT id, text FROM items')
    const rowId = new Map(rows.map((row) => [row.text, Number(row.id)]))
    const ordered = received.map((frame) => rowId.get(frame.payload.id)!)
    t.same(ordered, [...ordered].sort((x, y) => x - y), 'seq order = commit order')
  })

  t.test('publishes from one process keep their call order per room, batched under load (idempotency keys too)', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db, { presence: false })
    const raw = await rawClient(a, 'watcher')
    raw.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'burst' }))
    await until(() => raw.frames.some((frame) => frame.type === 'ack'), 'join ack')
    // Not awaited one by one: most of them queue behind the first and go as batches.
    const results = await Promise.all(range(1, 200).map((n) => a.app.rooms.broadcast('burst', 'note', { n }, n % 50 === 0 ? { idempotencyKey: 'same' } : {})))
    t.same(results.map((result) => result.seq), [...range(1, 50), ...range(51, 99), 50, ...range(100, 148), 50, ...range(149, 197), 50], 'seqs in call order; the key publishes once')
    await until(() => events(raw.frames).length === 197, 'every event')
    t.same(events(raw.frames).map((frame) => frame.payload.n), range(1, 200).filter((n) => n % 50 !== 0 || n === 50), 'delivered in call order')
  })

  t.test('a bad transaction gets a clear error, and nothing is published', async (t) => {
    const db = await startPostgres(t)
    const p = pool(t, db)
    const a = await instance(t, db)
    const code = (err: unknown) => (err as { code?: string }).code
    const message = (err: unknown) => String((err as Error).message)

    const outside = await p.connect()
    t.teardown(() => outside.release())
    const notBegun = await a.app.rooms.broadcast('r', 'note', {}, { transaction: outside }).catch((err: unknown) => err)
    t.equal(code(notBegun), 'FST_ROOMS_INVALID_ARGUMENT')
    t.match(message(notBegun), /transaction is not inside BEGIN/)
    const aPool = await a.app.rooms.broadcast('r', 'note', {}, { transaction: p as unknown as pg.PoolClient }).catch((err: unknown) => err)
    t.match(message(aPool), /transaction is not inside BEGIN/, 'a pool runs each statement on its own: refused')

    const failed = await p.connect()
    t.teardown(() => failed.release())
    await failed.query('BEGIN')
    await failed.query('SELECT 1/0').catch(() => {})
    const inFailed = await a.app.rooms.broadcast('r', 'note', {}, { transaction: failed }).catch((err: unknown) => err)
    t.match(message(inFailed), /transaction has failed already: roll it back/)
    await failed.query('ROLLBACK')

    const closed = new pg.Client({ connectionString: db.url })
    await closed.connect()
    await closed.end()
    const onClosed = await a.app.rooms.broadcast('r', 'note', {}, { transaction: closed }).catch((err: unknown) => err)
    t.equal(code(onClosed), 'FST_ROOMS_INVALID_ARGUMENT')
    t.match(message(onClosed), /transaction is closed/)

    await p.query('CREATE DATABASE other')
    const foreign = new pg.Client({ connectionString: db.url.replace(/\/postgres$/, '/other') })
    await foreign.connect()
    t.teardown(() => foreign.end())
    await foreign.query('BEGIN')
    const onForeign = await a.app.rooms.broadcast('r', 'note', {}, { transaction: foreign }).catch((err: unknown) => err)
    t.match(message(onForeign), /transaction is on a database without the "fastify_rooms" schema/)
    await foreign.query('ROLLBACK')

    const notAClient = await a.app.rooms.broadcast('r', 'note', {}, { transaction: {} as pg.PoolClient }).catch((err: unknown) => err)
    t.match(message(notAClient), /transaction must be a pg client inside BEGIN/)

    const readCommitted = await inTransaction(p, (client) => a.app.rooms.position('r', { transaction: client })).catch((err: unknown) => err)
    t.match(message(readCommitted), /must be REPEATABLE READ/)
    t.same(await a.app.rooms.history('r'), { seq: 0, epoch: (await a.app.rooms.position('r')).epoch, complete: true, events: [] }, 'nothing was published')

    const memory = await startServer(t)
    const onMemory = await inTransaction(p, (client) => memory.app.rooms.broadcast('r', 'note', {}, { transaction: client })).catch((err: unknown) => err)
    t.match(message(onMemory), /transaction needs the Postgres broker \(fastify-rooms\/postgres\) or the outbox option/)
  })

  t.test('a transaction that holds a room too long: other publishers to it get a bounded FST_ROOMS_BROKER_TIMEOUT, other rooms flow', async (t) => {
    const db = await startPostgres(t)
    const p = pool(t, db)
    const a = await instance(t, db, {}, { commandTimeoutMs: 300 })
    const holder = await p.connect()
    t.teardown(() => holder.release())
    await holder.query('BEGIN')
    await a.app.rooms.broadcast('hot', 'note', { n: 1 }, { transaction: holder })
    const blocked = await a.app.rooms.broadcast('hot', 'note', { n: 2 }).catch((err: unknown) => err)
    t.equal((blocked as { code?: string }).code, 'FST_ROOMS_BROKER_TIMEOUT')
    t.equal((blocked as { statusCode?: number }).statusCode, 503)
    t.same(await a.app.rooms.broadcast('other', 'note', {}), { seq: 1 }, 'another room is not held')
    await holder.query('COMMIT')
    t.same(await a.app.rooms.broadcast('hot', 'note', { n: 3 }), { seq: 2 }, 'after COMMIT the room moves on')
  })

  t.test('a lost notification and a dropped listener connection lose no event', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db, { presence: false })
    const b = await instance(t, db, { presence: false })
    const raw = await rawClient(b, 'watcher')
    raw.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'feed' }))
    await until(() => raw.frames.some((frame) => frame.type === 'ack'), 'join ack')
    await a.app.rooms.broadcast('feed', 'note', { n: 1 })
    await until(() => events(raw.frames).length === 1, 'the first event')
    // An event committed without its notification (as if NOTIFY's message were lost on the way).
    const inspect = await db.client()
    await inspect.query(`WITH r AS (UPDATE fastify_rooms.rooms SET seq = seq + 1 WHERE room = 'feed' RETURNING seq)
      INSERT INTO fastify_rooms.events (room, seq, frame) SELECT 'feed', seq, '{"type":"note","room":"feed","seq":' || seq || ',"payload":{"n":2},"traceId":"t","time":1}' FROM r`)
    await until(() => events(raw.frames).length === 2, 'the unannounced event, from the periodic check')
    // The listener of process B is cut; events published meanwhile come from the events table.
    await inspect.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fastify-rooms listener' AND pid <> pg_backend_pid()")
    for (const n of range(3, 6)) await a.app.rooms.broadcast('feed', 'note', { n })
    await retryUntil(async () => { if (events(raw.frames).length < 6) throw new Error(`${events(raw.frames).length} of 6`) })
    await a.app.rooms.broadcast('feed', 'note', { n: 7 })
    await until(() => events(raw.frames).length === 7, 'a live event after the reconnect')
    t.same(seqsOf(raw.frames, 'note'), range(1, 7), 'each seq once, in order')
    t.same(events(raw.frames).map((frame) => frame.payload.n), range(1, 7))
    t.notOk(raw.frames.some((frame) => frame.type === 'reset'), 'no reset: nothing was lost')
  })

  t.test('PostgreSQL restarted and paused mid-stream: 503s while it is away, no crash, then an exact resume', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db, { presence: false }, { commandTimeoutMs: 500, connectTimeoutMs: 1000 })
    const b = await instance(t, db, { presence: false }, { commandTimeoutMs: 500, connectTimeoutMs: 1000 })
    const raw = await rawClient(b, 'watcher')
    raw.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'feed' }))
    await until(() => raw.frames.some((frame) => frame.type === 'ack'), 'join ack')
    for (const n of range(1, 3)) await a.app.rooms.broadcast('feed', 'note', { n })
    await db.stop()
    const down = await a.app.rooms.broadcast('feed', 'note', { n: 0 }).catch((err: unknown) => err)
    t.match((down as { code?: string }).code, /^FST_ROOMS_BROKER(_TIMEOUT)?$/)
    t.equal((down as { statusCode?: number }).statusCode, 503)
    const client = await connect(a, 'alice')
    const refused = await client.request({ type: 'join', room: 'elsewhere' })
    t.equal(refused.payload.code, 'unavailable', 'a frame that needs the database answers unavailable')
    await db.start()
    const published = await retryUntil(() => a.app.rooms.broadcast('feed', 'note', { n: 4 }))
    t.equal(published.seq, 4)
    await retryUntil(async () => { if (events(raw.frames).length < 4) throw new Error(`${events(raw.frames).length} of 4`) })

    db.pause()
    const hung = await a.app.rooms.broadcast('feed', 'note', { n: 0 }).catch((err: unknown) => err)
    db.resume()
    t.match((hung as { code?: string }).code, /^FST_ROOMS_BROKER(_TIMEOUT)?$/, 'a hung database: a bounded 503')
    const after = await retryUntil(() => a.app.rooms.broadcast('feed', 'note', { n: 5 }))
    await retryUntil(async () => { if (!events(raw.frames).some((frame) => frame.seq === after.seq)) throw new Error('waiting') })
    const seqs = seqsOf(raw.frames, 'note')
    t.same(seqs, range(1, seqs.length), 'every event once and in order, or a reset: never a silent gap')
    t.notOk(raw.frames.some((frame) => frame.type === 'reset'))
    const resumer = await rawClient(a, 'late')
    resumer.ws.send(JSON.stringify({ type: 'resume', id: 'r', payload: { rooms: { feed: { seq: 2, epoch: raw.frames.find((frame) => frame.type === 'ack')!.payload.epoch } } } }))
    await until(() => resumer.frames.some((frame) => frame.type === 'ack'), 'resume ack')
    t.same(seqsOf(resumer.frames, 'note'), range(3, seqs.length), 'a resume on the other process replays exactly')
  })

  t.test('load, then join from the position: rows read + events received = every committed row, each once, under a publish storm', async (t) => {
    const db = await startPostgres(t)
    const p = pool(t, db)
    await p.query('CREATE TABLE items (id bigserial PRIMARY KEY, room text, text text)')
    const a = await instance(t, db, { presence: false })
    const b = await instance(t, db, { presence: false })
    const storming = { on: true }
    const committed: string[] = []
    const storm = Promise.all(range(1, 3).map(async () => {
      for (let i = 0; i < 200 && storming.on; i++) {
        const id = await inTransaction(p, async (client) => {
          const { rows } = await client.query<{ id: string }>('INSERT INTO items (room, text) VALUES ($1, $2) RETURNING id', ['feed', 'x'])
          await a.app.rooms.broadcast('feed', 'item', { id: rows[0]!.id }, { transaction: client })
          return rows[0]!.id
        })
        committed.push(id)
      }
    }))
    await until(() => committed.length >= 20, 'the storm under way')
    const { items, position } = await inTransaction(p, async (client) => {
      const position = await b.app.rooms.position('feed', { transaction: client })
      const { rows } = await client.query<{ id: string }>('SELECT id FROM items WHERE room = $1', ['feed'])
      return { items: rows.map((row) => row.id), position }
    }, 'COMMIT', 'BEGIN ISOLATION LEVEL REPEATABLE READ')
    const raw = await rawClient(b, 'reader')
    raw.ws.send(JSON.stringify({ type: 'resume', id: 'r', payload: { rooms: { feed: position } } }))
    await until(() => raw.frames.some((frame) => frame.type === 'ack'), 'resume ack')
    t.equal(raw.frames.find((frame) => frame.type === 'ack')!.payload.rooms.feed.result, 'replayed')
    await until(() => committed.length >= items.length + 30, 'more of the storm after the join')
    storming.on = false
    await storm
    const total = committed.length
    await retryUntil(async () => { if (items.length + events(raw.frames, 'item').length < total) throw new Error(`${items.length + events(raw.frames, 'item').length} of ${total}`) })
    const received = events(raw.frames, 'item').map((frame) => String(frame.payload.id))
    const all = [...items, ...received]
    t.equal(new Set(all).size, all.length, 'no row both loaded and received, none received twice')
    t.same([...all].sort(), [...committed].sort(), 'every committed row: loaded or received')
    t.same(seqsOf(raw.frames, 'item'), range(position.seq + 1, position.seq + received.length), 'the events right after the position')
  })
}

if (componentAvailable(t, postgresMissing(), 'Postgres broker on its attacker\'s path')) {
  t.test('malformed notifications on the broker\'s channels are logged and dropped; the process lives', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db, { presence: false })
    const alice = await connect(a, 'alice')
    await alice.join('lobby')
    const inspect = await db.client()
    const channel = eventChannel('fastify_rooms', 'lobby')
    for (const payload of ['garbage', '\n\n\n\n\n\n', 'lobby\n\nnote\nNaN\ne\n1\n{}', 'lobby\n\nnote\n1\ne\n1\nnot json', '']) await inspect.query('SELECT pg_notify($1, $2)', [channel, payload])
    for (const payload of ['not json', '["m"]', '@12x', '[]']) await inspect.query('SELECT pg_notify($1, $2)', ['fastify_rooms_users', payload])
    await a.app.rooms.sendToUser('alice', 'notice', { ok: true })
    t.same((await alice.nextOfType('notice')).payload, { ok: true }, 'user messages still flow')
    t.equal((await a.app.rooms.broadcast('lobby', 'note', {})).seq, 1)
    t.equal((await alice.nextOfType('note')).seq, 1, 'room events still flow, with the seq the bad ones did not take')
    const dropped = a.logs.filter((line) => line.includes('dropped a Postgres notification'))
    t.equal(dropped.length, 9, 'each bad notification logged once (and the start\'s probe is not one)')
    t.ok(dropped.every((line) => JSON.parse(line).level === 40), 'at warn')
  })

  t.test('a forged join position: another epoch gets a reset, a room the user may not join stays closed', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db, { presence: false, authorizeJoin: (_user, room) => room !== 'vault' })
    for (const n of range(1, 3)) await a.app.rooms.broadcast('feed', 'note', { n })
    const client = await a.app.rooms.inject({ id: 'mallory' })
    t.teardown(() => client.close())
    const resets: unknown[] = []
    client.on('reset', (reset) => resets.push(reset))
    const forged = await client.join('feed', { from: { seq: 0, epoch: 'not-the-epoch' } })
    t.same([forged.from, forged.seq], ['reset', 3], 'no replay from an epoch the room never had')
    t.same(resets, [{ room: 'feed', seq: 3, epoch: forged.epoch }])
    const vault = await client.join('vault', { from: { seq: 0, epoch: forged.epoch } }).catch((err: unknown) => err)
    t.equal((vault as { code?: string }).code, 'forbidden', 'authorizeJoin applies to a join from a position')
    t.equal((vault as { room?: string }).room, 'vault')
  })

  t.test('a namespace without history still delivers large events across processes, and keeps none', async (t) => {
    const db = await startPostgres(t)
    const options: Partial<RoomsOptions> = { presence: false, namespaces: { ticker: { history: false, presence: false } } }
    const a = await instance(t, db, options)
    const b = await instance(t, db, options)
    const raw = await rawClient(b, 'watcher')
    raw.ws.send(JSON.stringify({ type: 'join', id: 'j', room: 'ticker:x' }))
    await until(() => raw.frames.some((frame) => frame.type === 'ack'), 'join ack')
    await a.app.rooms.broadcast('ticker:x', 'note', { big: 'z'.repeat(9000) })
    await a.app.rooms.broadcast('ticker:x', 'note', { small: true })
    await until(() => events(raw.frames).length === 2, 'both events')
    t.same(seqsOf(raw.frames, 'note'), [1, 2])
    t.equal(events(raw.frames)[0]!.payload.big.length, 9000)
    t.same((await a.app.rooms.history('ticker:x')).events, [], 'no history to read')
  })

  t.test('budgets: expired rooms, events, keys and answers are cleaned; answers per user stay bounded across processes', async (t) => {
    const db = await startPostgres(t)
    let runs = 0
    const options: Partial<RoomsOptions> = {
      presence: false,
      retryWindow: { maxIdsPerUser: 3, windowMs: 60_000 },
      history: { maxEvents: 1000, maxAgeMs: 200 },
      messages: { op: defineMessage({ schema: Type.Object({}), handler: async () => ++runs }) },
    }
    const a = await instance(t, db, options, { roomTtlMs: 300, idleRoomTtlMs: 300, cleanupIntervalMs: 100 })
    const b = await instance(t, db, options, { roomTtlMs: 300, idleRoomTtlMs: 300, cleanupIntervalMs: 100 })
    const inspect = await db.client()
    const count = async (table: string) => Number((await inspect.query(`SELECT count(*) AS n FROM fastify_rooms.${table}`)).rows[0].n)
    for (const n of range(1, 20)) await a.app.rooms.broadcast(`room-${n}`, 'note', {}, { idempotencyKey: `k${n}` })
    t.equal(await count('rooms'), 20)
    await retryUntil(async () => {
      const left = (await count('rooms')) + (await count('events'))
      if (left > 0) throw new Error(`${left} rows left`)
    }, 10_000, 'expired rooms and their events')
    // One user retrying ids through both processes: at most maxIdsPerUser answers are kept.
    for (const n of range(1, 10)) {
      const client = await connect(n % 2 === 0 ? a : b, 'alice')
      await client.request({ type: 'op', payload: {} }, `id-${n}`)
      await client.close()
    }
    t.equal(Number((await inspect.query("SELECT count(*) AS n FROM fastify_rooms.answers WHERE user_id = 'alice'")).rows[0].n), 3)
    t.equal(runs, 10)
  })

  t.test('history by count and age: reads apply the limits exactly, the table keeps a bounded window', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db, { presence: false, namespaces: { brief: { history: { maxEvents: 1000, maxAgeMs: 100 } } }, history: { maxEvents: 5, maxAgeMs: 60_000 } })
    for (const n of range(1, 100)) await a.app.rooms.broadcast('counted', 'note', { n })
    const counted = await a.app.rooms.history('counted')
    t.same(counted.events.map((event) => event.seq), range(96, 100), 'the last maxEvents')
    t.equal(counted.complete, false)
    const inspect = await db.client()
    const rows = Number((await inspect.query("SELECT count(*) AS n FROM fastify_rooms.events WHERE room = 'counted'")).rows[0].n)
    t.ok(rows <= 64 + 16, `trimmed at publish: ${rows} rows kept (the delivery window, 64, plus at most 16)`)
    await a.app.rooms.broadcast('brief:x', 'note', {})
    t.equal((await a.app.rooms.history('brief:x')).events.length, 1)
    await retryUntil(async () => { if ((await a.app.rooms.history('brief:x')).events.length > 0) throw new Error('still there') }, 5000, 'aged out of history')
    t.equal((await a.app.rooms.history('brief:x')).complete, false, 'an aged-out event makes history incomplete')
  })

  t.test('a listener that cannot hear notifications (PgBouncer in transaction mode) refuses the start with the fix', async (t) => {
    const db = await startPostgres(t)
    const admin = await db.client()
    await admin.query('CREATE DATABASE elsewhere')
    // NOTIFY reaches listeners of the same database only: a listener on another one hears nothing, as
    // behind PgBouncer in transaction mode.
    await t.rejects(startServer(t, { broker: postgresBroker({ connectionString: db.url, listenConnectionString: db.url.replace(/\/postgres$/, '/elsewhere'), connectTimeoutMs: 500 }) }), {
      code: 'FST_ROOMS_BROKER',
      message: /the listener connection did not receive a notification \(PgBouncer in transaction mode\? pass listenConnectionString pointing at PostgreSQL itself\)/,
    })
  })
}

if (postgresMissing() === undefined) {
  t.test('postgresBroker refuses bad options and an unreachable database with errors that name them', async (t) => {
    t.throws(() => postgresBroker({}), { message: 'postgresBroker: pass { connectionString } or { pool }' })
    t.throws(() => postgresBroker({ connectionString: 'postgres://x', schema: 'Bad-Name' }), { code: 'FST_ROOMS_INVALID_OPTION', message: /option "schema" must be 1 to 40/ })
    const port = await (await import('./helpers/components.js')).freePort()
    await t.rejects(startServer(t, { broker: postgresBroker({ connectionString: `postgres://user:secret@127.0.0.1:${port}/db`, connectTimeoutMs: 1000 }) }), { code: 'FST_ROOMS_BROKER', message: new RegExp(`cannot use PostgreSQL at postgres://\\*\\*\\*@127.0.0.1:${port}/db`) })
  })
}

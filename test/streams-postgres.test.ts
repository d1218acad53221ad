// Streamed events on the Postgres broker: appends stored as rows and announced by NOTIFY, followed on two
// servers; clients move between them mid-stream; PostgreSQL restarted mid-stream loses nothing stored.
import t from 'tap'
import type { RoomsOptions } from '../lib/index.js'
import { postgresBroker } from '../lib/brokers/postgres.js'
import { connect, startServer, until, type TestServer } from './helpers/index.js'
import { componentAvailable } from './helpers/components.js'
import { postgresMissing, startPostgres, type PostgresServer } from './helpers/postgres.js'
import { checkScenario, streamScenario } from './helpers/stream-scenario.js'
import { follow, StreamFollower } from './helpers/stream-follower.js'

async function instance (t: Parameters<typeof startServer>[0], db: PostgresServer, options: Partial<RoomsOptions> = {}): Promise<TestServer> {
  return startServer(t, { broker: postgresBroker({ connectionString: db.url, processTtlMs: 600, checkIntervalMs: 100, commandTimeoutMs: 2000 }), presence: false, handshakeRateLimit: false, ...options })
}

if (componentAvailable(t, postgresMissing(), 'streamed events on PostgreSQL')) {
  t.test('two servers on PostgreSQL: 3000 tokens at 100/s, clients dropped and resumed on either (seed 23): every text byte-identical, one history entry', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db)
    const b = await instance(t, db)
    const result = await streamScenario({ servers: [a, b], seed: 23, count: 3000, perSecond: 100, transport: 'websocket' })
    checkScenario(t, result)
    const history = await b.app.rooms.history('conversation')
    t.equal(history.events.length, 1)
    t.same(history.events[0]!.stream, { id: result.streamId, state: 'done', text: result.source })
  })

  t.test('PostgreSQL restarted mid-stream: the writer retries, the text stored before and after reaches the member whole', async (t) => {
    const db = await startPostgres(t)
    const a = await instance(t, db)
    const b = await instance(t, db)
    const client = await connect(b, 'dan')
    const follower = new StreamFollower('talk')
    follow(client.ws, follower)
    await client.join('talk')
    const stream = await a.app.rooms.stream('talk', 'answer', {})
    stream.append('before ')
    await until(() => follower.texts.get(stream.id) === 'before ', 'the first text on the other server')
    await db.stop()
    stream.append('during ')
    await db.start()
    stream.append('after')
    await stream.end()
    await until(() => follower.states.get(stream.id) === 'done', 'the end on the other server')
    t.equal(follower.texts.get(stream.id), 'before during after')
    t.same(follower.errors, [])
  })
}

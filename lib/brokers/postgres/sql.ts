// What the Postgres broker and the outbox share: statements in the caller's transaction with their
// failures named for the caller, and the broker errors a failed statement of ours becomes. No `pg` import:
// the outbox runs on the host's pool, and the plugin loads no driver the host did not choose.
import { BrokerError, BrokerTimeoutError, InvalidArgumentError } from '../../config/errors.js'
import type { SqlTransaction } from '../broker.js'

// Sent without parameters, so on the simple protocol: there, PostgreSQL documents that the first command of
// a transaction has transaction_timestamp() = statement_timestamp(), and only outside BEGIN is a lone
// statement the first command (on the extended protocol the two are taken at different messages).
const TRANSACTION_STATE = "SELECT transaction_timestamp() = statement_timestamp() AS outside, current_setting('transaction_isolation') AS isolation"

/**
 * Runs a statement in the caller's transaction, after checking that there is one (an event published
 * outside BEGIN would commit at once, which a caller who passed a transaction did not mean); what went
 * wrong is named for the caller. `repeatableRead`: a read that must share the caller's snapshot.
 */
export async function inTransaction (transaction: SqlTransaction, query: { text: string; values: unknown[] }, schema: string, repeatableRead = false): Promise<any[]> {
  if (typeof transaction !== 'object' || transaction === null || typeof (transaction as { query?: unknown }).query !== 'function') {
    throw new InvalidArgumentError('transaction', 'must be a pg client inside BEGIN (a PoolClient or Client)')
  }
  try {
    const [state] = (await transaction.query({ text: TRANSACTION_STATE })).rows as Array<{ outside: boolean; isolation: string }>
    if (state?.outside !== false) throw new InvalidArgumentError('transaction', 'is not inside BEGIN … COMMIT')
    if (repeatableRead && (state.isolation === 'read committed' || state.isolation === 'read uncommitted')) {
      throw new InvalidArgumentError('transaction', 'must be REPEATABLE READ (or SERIALIZABLE) for position: under READ COMMITTED each statement sees other rows')
    }
    return (await transaction.query(query)).rows
  } catch (err) {
    if (err instanceof InvalidArgumentError) throw err
    const code = (err as { code?: unknown }).code
    const message = String((err as Error).message)
    if (code === '25P01') throw new InvalidArgumentError('transaction', 'is not inside BEGIN … COMMIT')
    if (code === '25P02') throw new InvalidArgumentError('transaction', 'has failed already: roll it back')
    if (code === '3F000' || code === '42883' || code === '42P01') throw new InvalidArgumentError('transaction', `is on a database without the "${schema}" schema of the Postgres broker: use a client of the broker's database`)
    if (code === '55P03') throw new BrokerTimeoutError(`another transaction held the room's publish slot for too long: ${message}`)
    if (/not queryable|Connection terminated|closed/i.test(message) && code === undefined) throw new InvalidArgumentError('transaction', `is closed: ${message}`)
    throw err
  }
}

/** What a failed statement becomes: PostgreSQL away or too slow → the retryable broker errors (503). */
export async function wrap<T> (promise: Promise<T>): Promise<T> {
  try {
    return await promise
  } catch (err) {
    const message = String((err as Error).message)
    const code = (err as { code?: unknown }).code
    if (/timeout|timed out/i.test(message) || code === '57014' || code === '55P03') throw new BrokerTimeoutError(`PostgreSQL did not answer in time: ${message}`)
    throw new BrokerError(`PostgreSQL unavailable: ${message}`)
  }
}

export function withDeadline<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${ms} ms`)), ms)
  })
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer))
}

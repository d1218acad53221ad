// The outbox's tables and its write function, for hosts on the memory or Redis broker whose data lives
// in PostgreSQL. A write takes the room's outbox row lock until the caller's transaction ends, so each
// room's `pos` is its commit order with no gap from a rollback; the relay publishes rows in that order.
//
// Tables (S = the schema):
//   S.outbox_rooms  room → pos (the last written), updated_at
//   S.outbox        id → room, pos, the event (type, payload, trace_id, except_id, idempotency_key),
//                   created_at; relayed_at, seq, epoch once published (kept retainMs for `position`)
// Channel: S_outbox (a wake-up for the relay; it also looks every checkIntervalMs).

export function outboxSql (schema: string): string {
  const s = `"${schema}"`
  return `
CREATE SCHEMA IF NOT EXISTS ${s};
CREATE TABLE IF NOT EXISTS ${s}.outbox_rooms (
  room text PRIMARY KEY,
  pos bigint NOT NULL,
  updated_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS ${s}.outbox (
  id bigserial PRIMARY KEY,
  room text NOT NULL,
  pos bigint NOT NULL,
  type text NOT NULL,
  payload text NOT NULL,
  trace_id text NOT NULL,
  except_id text,
  idempotency_key text,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  relayed_at timestamptz,
  seq bigint,
  epoch text,
  UNIQUE (room, pos)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON ${s}.outbox (id) WHERE relayed_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_relayed_at ON ${s}.outbox (relayed_at) WHERE relayed_at IS NOT NULL;

CREATE OR REPLACE FUNCTION ${s}.outbox_write(
  p_room text, p_type text, p_payload text, p_trace_id text, p_except text, p_key text, p_channel text, p_lock_timeout_ms integer
) RETURNS TABLE (id bigint, pos bigint) LANGUAGE plpgsql AS $$
DECLARE
  v_pos bigint;
  v_id bigint;
  v_lock_timeout text := current_setting('lock_timeout');
BEGIN
  PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
  INSERT INTO ${s}.outbox_rooms AS r (room, pos, updated_at) VALUES (p_room, 1, clock_timestamp())
    ON CONFLICT (room) DO UPDATE SET pos = r.pos + 1, updated_at = EXCLUDED.updated_at
    RETURNING r.pos INTO v_pos;
  PERFORM set_config('lock_timeout', v_lock_timeout, true);
  INSERT INTO ${s}.outbox AS o (room, pos, type, payload, trace_id, except_id, idempotency_key)
    VALUES (p_room, v_pos, p_type, p_payload, p_trace_id, p_except, p_key) RETURNING o.id INTO v_id;
  PERFORM pg_notify(p_channel, '');
  RETURN QUERY SELECT v_id, v_pos;
END
$$;
`
}

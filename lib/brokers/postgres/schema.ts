// The Postgres broker's tables and functions, made idempotently at start in a schema the host names.
// A publish is one function call (one round trip), so it can run inside the host's own transaction: the
// room row's lock, taken by the seq increment, is held until that transaction ends, which makes seq order
// the rooms' commit order and leaves no gap when a transaction rolls back.
// Past 300 lines: the schema is one script of SQL run at start (tables, then the functions that use them).
//
// Tables (S = the schema):
//   S.rooms           room → seq, epoch, hosted, its history limits, expires_at (roomTtlMs after the last
//                     event once a host event was published, idleRoomTtlMs while it only carried presence)
//   S.events          (room, seq) → frame, created_at: history, trimmed by count at publish and by age
//                     by the cleaner, in small batches
//   S.idempotency     (room, key) → the first publish's seq and epoch, until expires_at
//   S.presence        (room, connection_id) → user_id, process_id
//   S.presence_users  (room, user_id) → connections, info
//   S.processes       process_id → expires_at (its heartbeat)
//   S.answers         (user_id, answer_id) → fingerprint, outcome: answers to frames with an id
//   S.messages        id → body: user messages too large for a notification, for a minute
//   S.streams         (room, id) → seq, frame (as published), units (text length, UTF-16 code units), state,
//                     reason, updated_at: streamed events
//   S.stream_chunks   (room, id, offset) → text: a stream's text, one row per append (no rewrite of the
//                     whole text per append), read in offset order
// Channels: S_ev_<n> (room events of the rooms hashed to shard n) and S_users (user messages).

/** A schema name the broker accepts: it goes into SQL as an identifier. */
export const SCHEMA_NAME = /^[a-z_][a-z0-9_]{0,39}$/

/** Room event channels: a process listens to the shards its rooms hash to, never one channel per room. */
export const EVENT_SHARDS = 32

/** NOTIFY payloads must stay under 8000 bytes: a bigger frame is read from S.events instead. */
export const MAX_NOTIFY_BYTES = 7900

/** What every process's internal catch-up can read, even in a room that keeps no history. */
export const DELIVERY_WINDOW = { events: 64, ageMs: 60_000 }

export function schemaSql (schema: string): string {
  const s = `"${schema}"`
  return `
CREATE SCHEMA IF NOT EXISTS ${s};
CREATE TABLE IF NOT EXISTS ${s}.rooms (
  room text PRIMARY KEY,
  seq bigint NOT NULL DEFAULT 0,
  epoch text NOT NULL,
  hosted boolean NOT NULL DEFAULT false,
  max_events integer NOT NULL DEFAULT 1000,
  max_age_ms bigint NOT NULL DEFAULT 300000,
  expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS rooms_expires_at ON ${s}.rooms (expires_at);
CREATE TABLE IF NOT EXISTS ${s}.events (
  room text NOT NULL,
  seq bigint NOT NULL,
  frame text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (room, seq)
);
CREATE INDEX IF NOT EXISTS events_created_at ON ${s}.events (created_at);
CREATE TABLE IF NOT EXISTS ${s}.idempotency (
  room text NOT NULL,
  key text NOT NULL,
  seq bigint NOT NULL,
  epoch text NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (room, key)
);
CREATE INDEX IF NOT EXISTS idempotency_expires_at ON ${s}.idempotency (expires_at);
CREATE TABLE IF NOT EXISTS ${s}.presence (
  room text NOT NULL,
  connection_id text NOT NULL,
  user_id text NOT NULL,
  process_id text NOT NULL,
  PRIMARY KEY (room, connection_id)
);
CREATE INDEX IF NOT EXISTS presence_process ON ${s}.presence (process_id);
CREATE TABLE IF NOT EXISTS ${s}.presence_users (
  room text NOT NULL,
  user_id text NOT NULL,
  connections integer NOT NULL,
  info text,
  PRIMARY KEY (room, user_id)
);
CREATE TABLE IF NOT EXISTS ${s}.processes (
  process_id text PRIMARY KEY,
  expires_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS ${s}.answers (
  user_id text NOT NULL,
  answer_id text NOT NULL,
  fingerprint text NOT NULL,
  outcome text,
  created_at timestamptz NOT NULL,
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (user_id, answer_id)
);
CREATE INDEX IF NOT EXISTS answers_expires_at ON ${s}.answers (expires_at);
CREATE TABLE IF NOT EXISTS ${s}.messages (
  id bigserial PRIMARY KEY,
  body text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS ${s}.streams (
  room text NOT NULL,
  id text NOT NULL,
  seq bigint NOT NULL,
  frame text NOT NULL,
  units integer NOT NULL DEFAULT 0,
  state text NOT NULL DEFAULT 'streaming',
  reason text,
  updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (room, id)
);
CREATE TABLE IF NOT EXISTS ${s}.stream_chunks (
  room text NOT NULL,
  id text NOT NULL,
  "offset" integer NOT NULL,
  text text NOT NULL,
  PRIMARY KEY (room, id, "offset")
);

-- One publish: idempotency, the next seq (the room row stays locked until the caller's transaction ends),
-- the frame (assembled here around its seq), history, and the notification (sent by PostgreSQL at commit).
-- The frame is in the notification when it fits; otherwise readers fetch it by seq.
CREATE OR REPLACE FUNCTION ${s}.publish(
  p_room text, p_candidate_epoch text, p_head text, p_tail text, p_type text, p_except text,
  p_max_events integer, p_max_age_ms bigint, p_room_ttl_ms bigint, p_idle_room_ttl_ms bigint,
  p_published_at text, p_key text, p_key_window_ms bigint, p_channel text, p_lock_timeout_ms integer
) RETURNS TABLE (seq bigint, epoch text) LANGUAGE plpgsql AS $$
DECLARE
  v_seq bigint;
  v_epoch text;
  v_hosted boolean := p_type <> 'presence';
  v_frame text;
  v_message text;
  v_lock_timeout text;
BEGIN
  -- In the caller's transaction, waiting for another one that holds this room is bounded here, and the
  -- caller's own setting comes back after; the broker's own connections have it set once.
  IF p_lock_timeout_ms IS NOT NULL THEN
    v_lock_timeout := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', p_lock_timeout_ms || 'ms', true);
  END IF;
  IF p_key IS NOT NULL THEN
    INSERT INTO ${s}.idempotency AS i (room, key, seq, epoch, expires_at)
      VALUES (p_room, p_key, 0, '', clock_timestamp() + p_key_window_ms * interval '1 millisecond')
      ON CONFLICT (room, key) DO UPDATE SET seq = 0, epoch = '', expires_at = EXCLUDED.expires_at
      WHERE i.expires_at < clock_timestamp()
      RETURNING i.seq INTO v_seq;
    IF NOT FOUND THEN
      IF p_lock_timeout_ms IS NOT NULL THEN PERFORM set_config('lock_timeout', v_lock_timeout, true); END IF;
      RETURN QUERY SELECT i.seq, i.epoch FROM ${s}.idempotency i WHERE i.room = p_room AND i.key = p_key;
      RETURN;
    END IF;
  END IF;
  -- An UPDATE first: a room that exists (nearly every publish) costs no speculative insert.
  UPDATE ${s}.rooms r SET
      seq = r.seq + 1,
      hosted = r.hosted OR v_hosted,
      max_events = p_max_events,
      max_age_ms = p_max_age_ms,
      -- Moved only once less than half the ttl is left: an unchanged indexed column keeps the update HOT
      -- (no index entries per publish), and a room still outlives its last event by half its ttl or more.
      expires_at = CASE WHEN r.expires_at < clock_timestamp() + (CASE WHEN r.hosted OR v_hosted THEN p_room_ttl_ms ELSE p_idle_room_ttl_ms END) * interval '0.5 millisecond'
        THEN clock_timestamp() + (CASE WHEN r.hosted OR v_hosted THEN p_room_ttl_ms ELSE p_idle_room_ttl_ms END) * interval '1 millisecond'
        ELSE r.expires_at END
    WHERE r.room = p_room
    RETURNING r.seq, r.epoch INTO v_seq, v_epoch;
  IF NOT FOUND THEN
    INSERT INTO ${s}.rooms AS r (room, seq, epoch, hosted, max_events, max_age_ms, expires_at)
      VALUES (p_room, 1, p_candidate_epoch, v_hosted, p_max_events, p_max_age_ms,
        clock_timestamp() + (CASE WHEN v_hosted THEN p_room_ttl_ms ELSE p_idle_room_ttl_ms END) * interval '1 millisecond')
      ON CONFLICT (room) DO UPDATE SET
        seq = r.seq + 1,
        hosted = r.hosted OR EXCLUDED.hosted,
        max_events = EXCLUDED.max_events,
        max_age_ms = EXCLUDED.max_age_ms,
        expires_at = greatest(r.expires_at, EXCLUDED.expires_at)
      RETURNING r.seq, r.epoch INTO v_seq, v_epoch;
  END IF;
  IF p_lock_timeout_ms IS NOT NULL THEN PERFORM set_config('lock_timeout', v_lock_timeout, true); END IF;
  v_frame := p_head || v_seq || p_tail;
  INSERT INTO ${s}.events (room, seq, frame) VALUES (p_room, v_seq, v_frame);
  -- Trimming by count every 16th event; readers apply the limits exactly anyway.
  IF v_seq % 16 = 0 THEN
    DELETE FROM ${s}.events e WHERE e.room = p_room AND e.seq <= v_seq - greatest(p_max_events, ${DELIVERY_WINDOW.events});
  END IF;
  IF p_key IS NOT NULL THEN
    UPDATE ${s}.idempotency i SET seq = v_seq, epoch = v_epoch WHERE i.room = p_room AND i.key = p_key;
  END IF;
  v_message := p_room || E'\\n' || p_except || E'\\n' || p_type || E'\\n' || v_seq || E'\\n' || v_epoch || E'\\n' || p_published_at || E'\\n';
  IF octet_length(v_message) + octet_length(v_frame) <= ${MAX_NOTIFY_BYTES} THEN
    PERFORM pg_notify(p_channel, v_message || v_frame);
  ELSE
    PERFORM pg_notify(p_channel, v_message);
  END IF;
  seq := v_seq;
  epoch := v_epoch;
  RETURN NEXT;
END
$$;

-- Several publishes of one process in one call, in order (each as publish() does it): what queued while
-- the previous call of the same lane ran. Its rows are the publishes' positions, in the same order.
CREATE OR REPLACE FUNCTION ${s}.publish_batch(
  p_rooms text[], p_candidate_epochs text[], p_heads text[], p_tails text[], p_types text[], p_excepts text[],
  p_max_events integer[], p_max_age_ms bigint[], p_room_ttl_ms bigint, p_idle_room_ttl_ms bigint,
  p_published_at text[], p_keys text[], p_key_window_ms bigint, p_channels text[], p_lock_timeout_ms integer
) RETURNS TABLE (seq bigint, epoch text) LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1 .. array_length(p_rooms, 1) LOOP
    RETURN QUERY SELECT * FROM ${s}.publish(p_rooms[i], p_candidate_epochs[i], p_heads[i], p_tails[i], p_types[i], p_excepts[i],
      p_max_events[i], p_max_age_ms[i], p_room_ttl_ms, p_idle_room_ttl_ms, p_published_at[i], p_keys[i], p_key_window_ms,
      p_channels[i], p_lock_timeout_ms);
  END LOOP;
END
$$;

-- A streamed event: refused (seq -1) when the room has p_max_open streams that are open and alive (an
-- append within p_stale_ms), otherwise published as publish() does it, with its stream row in the same
-- transaction. A retried idempotency key publishes nothing and makes no row.
CREATE OR REPLACE FUNCTION ${s}.publish_stream(
  p_room text, p_candidate_epoch text, p_head text, p_tail text, p_type text, p_except text,
  p_max_events integer, p_max_age_ms bigint, p_room_ttl_ms bigint, p_idle_room_ttl_ms bigint,
  p_published_at text, p_key text, p_key_window_ms bigint, p_channel text, p_lock_timeout_ms integer,
  p_id text, p_max_open integer, p_stale_ms bigint
) RETURNS TABLE (seq bigint, epoch text) LANGUAGE plpgsql AS $$
DECLARE
  v_seq bigint;
  v_epoch text;
BEGIN
  IF (SELECT count(*) FROM ${s}.streams x WHERE x.room = p_room AND x.state = 'streaming'
      AND x.updated_at > clock_timestamp() - p_stale_ms * interval '1 millisecond') >= p_max_open THEN
    RETURN QUERY SELECT -1::bigint, ''::text;
    RETURN;
  END IF;
  SELECT p.seq, p.epoch INTO v_seq, v_epoch FROM ${s}.publish(p_room, p_candidate_epoch, p_head, p_tail, p_type, p_except,
    p_max_events, p_max_age_ms, p_room_ttl_ms, p_idle_room_ttl_ms, p_published_at, p_key, p_key_window_ms, p_channel, p_lock_timeout_ms) p;
  -- The event at v_seq is this call's only if it carries this stream's id (a retried key returns the first).
  IF EXISTS (SELECT 1 FROM ${s}.events e WHERE e.room = p_room AND e.seq = v_seq AND e.frame = p_head || v_seq || p_tail) THEN
    INSERT INTO ${s}.streams (room, id, seq, frame) VALUES (p_room, p_id, v_seq, p_head || v_seq || p_tail);
  END IF;
  seq := v_seq;
  epoch := v_epoch;
  RETURN NEXT;
END
$$;

-- One append to a stream (and, with p_state, its end), stored, then announced on the room's channel:
-- 'ok'; 'conflict' when the stream is not streaming or its text is not p_offset long; 'gone' when there is
-- no such stream.
CREATE OR REPLACE FUNCTION ${s}.append_stream(
  p_room text, p_id text, p_offset integer, p_text text, p_units integer, p_state text, p_reason text, p_channel text, p_message text
) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
  UPDATE ${s}.streams x SET units = x.units + p_units, updated_at = clock_timestamp(),
      state = coalesce(p_state, x.state), reason = coalesce(p_reason, x.reason)
    WHERE x.room = p_room AND x.id = p_id AND x.state = 'streaming' AND x.units = p_offset;
  IF NOT FOUND THEN
    IF EXISTS (SELECT 1 FROM ${s}.streams x WHERE x.room = p_room AND x.id = p_id) THEN RETURN 'conflict'; END IF;
    RETURN 'gone';
  END IF;
  IF p_text <> '' THEN
    INSERT INTO ${s}.stream_chunks (room, id, "offset", text) VALUES (p_room, p_id, p_offset, p_text);
  END IF;
  PERFORM pg_notify(p_channel, p_message);
  RETURN 'ok';
END
$$;

-- A room's position, creating its epoch when it has none (a read holds a room for idleRoomTtlMs).
CREATE OR REPLACE FUNCTION ${s}.position(p_room text, p_candidate_epoch text, p_idle_room_ttl_ms bigint)
RETURNS TABLE (seq bigint, epoch text) LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY SELECT r.seq, r.epoch FROM ${s}.rooms r WHERE r.room = p_room;
  IF FOUND THEN RETURN; END IF;
  INSERT INTO ${s}.rooms (room, seq, epoch, expires_at)
    VALUES (p_room, 0, p_candidate_epoch, clock_timestamp() + p_idle_room_ttl_ms * interval '1 millisecond')
    ON CONFLICT (room) DO NOTHING;
  RETURN QUERY SELECT r.seq, r.epoch FROM ${s}.rooms r WHERE r.room = p_room;
END
$$;

-- A room whose events went back (a restore, a crash that lost commits this process delivered) gets a
-- new epoch, once: the first caller renews, the others read what it made.
CREATE OR REPLACE FUNCTION ${s}.renew_epoch(p_room text, p_broken_epoch text, p_epoch text)
RETURNS TABLE (seq bigint, epoch text) LANGUAGE plpgsql AS $$
BEGIN
  UPDATE ${s}.rooms r SET epoch = p_epoch WHERE r.room = p_room AND r.epoch = p_broken_epoch;
  IF FOUND THEN DELETE FROM ${s}.events e WHERE e.room = p_room; END IF;
  RETURN QUERY SELECT r.seq, r.epoch FROM ${s}.rooms r WHERE r.room = p_room;
END
$$;

-- Returns true when the user was not present in the room before.
CREATE OR REPLACE FUNCTION ${s}.presence_join(p_room text, p_user text, p_connection text, p_process text, p_info text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE v_connections integer;
BEGIN
  INSERT INTO ${s}.presence (room, connection_id, user_id, process_id) VALUES (p_room, p_connection, p_user, p_process)
    ON CONFLICT (room, connection_id) DO NOTHING;
  IF NOT FOUND THEN
    IF p_info IS NOT NULL THEN UPDATE ${s}.presence_users u SET info = p_info WHERE u.room = p_room AND u.user_id = p_user; END IF;
    RETURN false;
  END IF;
  INSERT INTO ${s}.presence_users AS u (room, user_id, connections, info) VALUES (p_room, p_user, 1, p_info)
    ON CONFLICT (room, user_id) DO UPDATE SET connections = u.connections + 1, info = coalesce(EXCLUDED.info, u.info)
    RETURNING u.connections INTO v_connections;
  RETURN v_connections = 1;
END
$$;

-- Returns the user id when it was the user's last connection in the room (her data goes), null otherwise.
CREATE OR REPLACE FUNCTION ${s}.presence_leave(p_room text, p_connection text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_user text;
  v_connections integer;
BEGIN
  DELETE FROM ${s}.presence p WHERE p.room = p_room AND p.connection_id = p_connection RETURNING p.user_id INTO v_user;
  IF NOT FOUND THEN RETURN NULL; END IF;
  UPDATE ${s}.presence_users u SET connections = u.connections - 1 WHERE u.room = p_room AND u.user_id = v_user
    RETURNING u.connections INTO v_connections;
  IF v_connections IS NULL OR v_connections > 0 THEN RETURN NULL; END IF;
  DELETE FROM ${s}.presence_users u WHERE u.room = p_room AND u.user_id = v_user;
  RETURN v_user;
END
$$;

-- 'done' with the outcome, 'pending' (running elsewhere) or 'new' (claimed now). Another fingerprint under
-- the same id is a new frame. A user keeps at most p_max answers: the oldest go.
CREATE OR REPLACE FUNCTION ${s}.claim_answer(p_user text, p_id text, p_fingerprint text, p_window_ms bigint, p_max integer)
RETURNS TABLE (state text, outcome text) LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO ${s}.answers AS a (user_id, answer_id, fingerprint, outcome, created_at, expires_at)
    VALUES (p_user, p_id, p_fingerprint, NULL, clock_timestamp(), clock_timestamp() + p_window_ms * interval '1 millisecond')
    ON CONFLICT (user_id, answer_id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, outcome = NULL,
      created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at
    WHERE a.fingerprint <> EXCLUDED.fingerprint OR a.expires_at < clock_timestamp();
  IF NOT FOUND THEN
    RETURN QUERY SELECT CASE WHEN a.outcome IS NULL THEN 'pending' ELSE 'done' END, a.outcome
      FROM ${s}.answers a WHERE a.user_id = p_user AND a.answer_id = p_id;
    RETURN;
  END IF;
  DELETE FROM ${s}.answers a WHERE a.user_id = p_user AND (a.expires_at < clock_timestamp() OR a.answer_id IN (
    SELECT o.answer_id FROM ${s}.answers o WHERE o.user_id = p_user ORDER BY o.created_at DESC, o.answer_id OFFSET p_max));
  RETURN QUERY SELECT 'new'::text, NULL::text;
END
$$;
`
}

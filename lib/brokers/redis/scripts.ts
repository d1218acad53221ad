// The Lua scripts of the Redis broker. Each runs atomically, so seq, history and fan-out always agree.
// Past 300 lines: every script is here, next to the key layout they share (one place to check a slot).
//
// Keys (P = keyPrefix, R = room, U = user id as `<length>:<id>`, so no id can spell another's key):
//   P{R}:meta      hash  seq, epoch, hosted      (outlives processes; expires roomTtlMs after the last event
//                                                once a host event was published, idleRoomTtlMs after it
//                                                while the room only ever carried presence)
//   P{R}:history   stream entries { s: seq, h: frame head, t: frame tail } (before batching { s, f: frame });
//                                                capped by maxEvents in whole nodes, trimmed by age; expires
//                                                with meta, or maxAgeMs after the last event if sooner
//   P{R}:idem:<k>  string "seq epoch" of the publish with idempotencyKey k (expires after the retry window)
//   P{R}:presence  hash  connectionId → userId
//   P{R}:users     hash  userId → connections in the room
//   P{R}:info      hash  userId → the user's presence data (JSON), while the user is present
//   P{R}:streams   sorted set of the room's open streamed events: id → ms of its last append
//   P{R}:stream:<id> hash seq, frame (as published), n (text length, UTF-16 code units), state, reason, at
//   P{R}:text:<id> string, the stream's text (APPEND per batch); both expire with the room's history
//   Prooms         set   rooms with at least one member (single instance only)
//   Pproc:<id>     string, the process heartbeat (expires after processTtlMs)
//   Pprocs         set   process ids
//   Pmember:<id>   hash  JSON [room, connectionId] → userId, a process's presence entries (for cleanup by
//                        survivors; single instance only)
//   P{R}:proc:<id> hash  connectionId → userId, process <id>'s presence entries in room R (Cluster only:
//                        in the room's slot; survivors find a dead process's by SCAN)
//   P{answer:U}:<id>  hash fp, outcome: answers to frames with an id (expire after retryWindow)
//   P{answer:U}:ids   sorted set of that user's answer ids by time: at most maxIdsPerUser, across processes
// Channels: Pev:R (room events, subscribed only where the room has local members), Pusers (user messages,
// JSON arrays). On a Redis Cluster, sharded channels in the slot of their keys: P{R}:ev (room events) and
// P{user:U}:u (one user's messages, subscribed while the user has a socket here); Pusers carries only
// messages for one connection (classic pub/sub: every node).

/** Ensures the room has an epoch (the candidate when new) and returns { seq, epoch }. */
const ENSURE_ROOM = `
local function ensure_room(meta, candidate, ttl)
  if redis.call('HSETNX', meta, 'epoch', candidate) == 1 then
    redis.call('HSETNX', meta, 'seq', 0)
    redis.call('PEXPIRE', meta, ttl)
  end
  return redis.call('HMGET', meta, 'seq', 'epoch')
end
`

const STREAM_LIMIT = `
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now - tonumber(ARGV[16]))
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[15]) then return { -1, '' } end
`

const STREAM_CREATE = `
redis.call('HSET', KEYS[4], 'seq', seq, 'frame', frame, 'n', 0, 'state', 'streaming', 'at', now)
redis.call('SET', KEYS[5], '', 'PX', ARGV[17])
redis.call('PEXPIRE', KEYS[4], ARGV[17])
redis.call('ZADD', KEYS[3], now, ARGV[14])
redis.call('PEXPIRE', KEYS[3], ARGV[17])
`

/**
 * The publishes of one turn in one call (redis/publish-batches.ts): per room, one HINCRBY for its new
 * events, one read of its epoch, one PEXPIRE of each key and one fan-out message carrying all of them; per
 * event, only its history entry and its idempotency key. KEYS: meta and history of each room, then the
 * idempotency keys. ARGV: roomTtlMs, idleRoomTtlMs, idempotency window ms, PUBLISH or SPUBLISH (on a
 * cluster: the room's shard channel, in its keys' slot), the number of rooms; per room: candidate epoch,
 * maxEvents, maxAgeMs, channel, number of events, '1' when one of them is a host event (not presence); per
 * event: its record's prefix (except \n type \n publishedAt \n), frame head, frame tail, the index of its
 * idempotency key in KEYS (0: none). The frame is head .. seq .. tail: serialized once, by the publisher,
 * and never assembled here (Lua interns every string it makes: building ~300-byte strings per event cost
 * more than the XADD); history keeps head and tail, the message is concatenated once per room. It is the
 * events' records joined by a newline, each except \n type \n publishedAt \n seq \n epoch \n frame (every
 * part but the frame is a checked name or a number, and JSON has no raw newline). An event whose
 * idempotency key was used (before, or earlier in the batch) gets the first event's { seq, epoch } and
 * publishes nothing. Returns seq, epoch of each event in order.
 */
export const PUBLISH_BATCH = `
local roomTtl, idleTtl, window, publish = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4]
local replies = {}
local at = 6
for r = 1, tonumber(ARGV[5]) do
  local meta, history = KEYS[2 * r - 1], KEYS[2 * r]
  local candidate, maxEvents, maxAge, channel, count, hostEvent = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3], tonumber(ARGV[at + 4]), ARGV[at + 5]
  at = at + 6
  -- Per event: its new seq, or the position its idempotency key had (positions), or the batch's earlier
  -- event with the same key (earlier).
  local fresh, earlier, claimed, positions, seqs, epoch = 0, {}, {}, {}, {}, nil
  for e = 0, count - 1 do
    local key = tonumber(ARGV[at + e * 4 + 3])
    if key == 0 then
      fresh = fresh + 1
    elseif claimed[KEYS[key]] then
      earlier[e] = claimed[KEYS[key]]
    else
      local first = redis.call('GET', KEYS[key])
      if first then
        local space = string.find(first, ' ', 1, true)
        positions[e] = { tonumber(string.sub(first, 1, space - 1)), string.sub(first, space + 1) }
      else
        claimed[KEYS[key]] = e
        fresh = fresh + 1
      end
    end
  end
  if fresh > 0 then
    local seq = redis.call('HINCRBY', meta, 'seq', fresh) - fresh
    -- The first event of a room (or of a room only ever read) creates its epoch; later ones find it.
    if seq == 0 then redis.call('HSETNX', meta, 'epoch', candidate) end
    local fields = redis.call('HMGET', meta, 'epoch', 'hosted')
    local hosted = fields[2]
    epoch = fields[1]
    local pieces, p, id = {}, 0, nil
    -- Numbers are turned into text once per event (Lua formats a number each time it meets one as text).
    for e = 0, count - 1 do
      if not positions[e] and not earlier[e] then
        local event = at + e * 4
        seq = seq + 1
        local text = tostring(seq)
        -- Trimmed in whole nodes (~): an exact MAXLEN moved the node's other entries on every event
        -- (5.6 against 2.2 µs per XADD); HISTORY reads no more than maxEvents.
        if maxEvents ~= '0' then id = redis.call('XADD', history, 'MAXLEN', '~', maxEvents, '*', 's', text, 'h', ARGV[event + 1], 't', ARGV[event + 2]) end
        if ARGV[event + 3] ~= '0' then redis.call('SET', KEYS[tonumber(ARGV[event + 3])], text .. ' ' .. epoch, 'PX', window) end
        pieces[p + 1] = ARGV[event]
        pieces[p + 2] = text
        pieces[p + 3] = '\\n'
        pieces[p + 4] = epoch
        pieces[p + 5] = '\\n'
        pieces[p + 6] = ARGV[event + 1]
        pieces[p + 7] = text
        pieces[p + 8] = ARGV[event + 2]
        pieces[p + 9] = '\\n'
        p = p + 9
        seqs[e] = seq
      end
    end
    -- Presence alone keeps a room for idleRoomTtlMs only: join/leave churn of fresh names cannot fill Redis.
    local ttl = roomTtl
    if hostEvent == '1' then
      if hosted ~= '1' then redis.call('HSET', meta, 'hosted', '1') end
    elseif hosted ~= '1' then
      ttl = idleTtl
    end
    if id then
      -- Trimming by age each time seq passes a multiple of 16 is enough: readers skip what is older than
      -- maxAgeMs anyway, and the stream's ID is Redis's own clock (no TIME call).
      if math.floor(seq / 16) > math.floor((seq - fresh) / 16) then
        redis.call('XTRIM', history, 'MINID', tonumber(string.match(id, '^(%d+)')) - maxAge)
      end
      redis.call('PEXPIRE', history, math.min(ttl, maxAge + 1000))
    end
    redis.call('PEXPIRE', meta, ttl)
    redis.call(publish, channel, table.concat(pieces, '', 1, p - 1))
  end
  local n = #replies
  for e = 0, count - 1 do
    local first = earlier[e] or e
    if seqs[first] then
      replies[n + 1], replies[n + 2] = seqs[first], epoch
    else
      replies[n + 1], replies[n + 2] = positions[first][1], positions[first][2]
    end
    n = n + 2
  end
  at = at + count * 4
end
return replies
`

/**
 * One streamed event (not batched: one per answer). KEYS: meta, history, the room's open streams, the stream, its text,
 * [idempotency key]. ARGV: candidate epoch, frame head, frame tail, type, except, maxEvents, maxAgeMs,
 * channel, roomTtlMs, publishedAt, idleRoomTtlMs, idempotency window ms, PUBLISH or SPUBLISH (a one-record
 * message, as PUBLISH_BATCH's), then the stream id, the room's limit of open streams, how old an open
 * stream's last append may be before it counts as dead (its writer gone), the stream keys' TTL. Returns
 * { -1, '' } when the room has its limit of open streams (nothing is published).
 */
export const PUBLISH_STREAM = `
local meta, history, idempotency = KEYS[1], KEYS[2], KEYS[6]
if idempotency then
  local first = redis.call('GET', idempotency)
  if first then
    local space = string.find(first, ' ', 1, true)
    return { tonumber(string.sub(first, 1, space - 1)), string.sub(first, space + 1) }
  end
end
${STREAM_LIMIT}
-- The first event of a room (or of a room only ever read) creates its epoch; later ones find it.
local seq = redis.call('HINCRBY', meta, 'seq', 1)
if seq == 1 then redis.call('HSETNX', meta, 'epoch', ARGV[1]) end
local fields = redis.call('HMGET', meta, 'epoch', 'hosted')
local epoch, hosted = fields[1], fields[2]
local frame = ARGV[2] .. seq .. ARGV[3]
-- Presence alone keeps a room for idleRoomTtlMs only: join/leave churn of fresh names cannot fill Redis.
local ttl = tonumber(ARGV[9])
if ARGV[4] == 'presence' then
  if hosted ~= '1' then ttl = tonumber(ARGV[11]) end
elseif hosted ~= '1' then
  redis.call('HSET', meta, 'hosted', '1')
end
if tonumber(ARGV[6]) > 0 then
  local id = redis.call('XADD', history, 'MAXLEN', '~', ARGV[6], '*', 's', seq, 'h', ARGV[2], 't', ARGV[3])
  -- Trimming by age every 16th event is enough: readers skip what is older than maxAgeMs anyway, and the
  -- stream's ID is Redis's own clock (no TIME call).
  if seq % 16 == 0 then
    local now = tonumber(string.match(id, '^(%d+)'))
    redis.call('XTRIM', history, 'MINID', now - tonumber(ARGV[7]))
  end
  redis.call('PEXPIRE', history, math.min(ttl, tonumber(ARGV[7]) + 1000))
end
redis.call('PEXPIRE', meta, ttl)
if idempotency then redis.call('SET', idempotency, seq .. ' ' .. epoch, 'PX', ARGV[12]) end
${STREAM_CREATE}
redis.call(ARGV[13], ARGV[8], ARGV[5] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[10] .. '\\n' .. seq .. '\\n' .. epoch .. '\\n' .. frame)
return { seq, epoch }
`

/**
 * KEYS: the stream, its text, the room's open streams, its ended ones. ARGV: offset, text, its length (UTF-16
 * code units), final state ('' while streaming), reason, channel, PUBLISH or SPUBLISH, the message, TTL, the
 * stream id, how many ended streams the room keeps (its history's maxEvents), the prefix of its keys, the
 * writer's clock (ms; what the other processes compare an open stream's last append with).
 * Appends and publishes only when the stream is streaming and its text is \`offset\` long: 'ok'; 'conflict'
 * otherwise (another process ended it); 'gone' when Redis does not have it (lost with a restart, or
 * expired). Past the room's count, its oldest ended streams go (as their events leave history).
 */
export const APPEND_STREAM = `
local fields = redis.call('HMGET', KEYS[1], 'state', 'n', 'seq')
if not fields[1] then return 'gone' end
if fields[1] ~= 'streaming' or tonumber(fields[2]) ~= tonumber(ARGV[1]) then return 'conflict' end
local now = tonumber(ARGV[13])
redis.call('APPEND', KEYS[2], ARGV[2])
redis.call('HSET', KEYS[1], 'n', tonumber(ARGV[1]) + tonumber(ARGV[3]), 'at', now)
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'state', ARGV[4], 'reason', ARGV[5])
  redis.call('ZREM', KEYS[3], ARGV[10])
  redis.call('ZADD', KEYS[4], tonumber(fields[3]), ARGV[10])
  redis.call('PEXPIRE', KEYS[4], ARGV[9])
  local excess = redis.call('ZCARD', KEYS[4]) - tonumber(ARGV[11])
  if excess > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[4], 0, excess - 1)) do redis.call('DEL', ARGV[12] .. 'stream:' .. id, ARGV[12] .. 'text:' .. id) end
    redis.call('ZREMRANGEBYRANK', KEYS[4], 0, excess - 1)
  end
else
  redis.call('ZADD', KEYS[3], now, ARGV[10])
end
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call(ARGV[7], ARGV[6], ARGV[8])
return 'ok'
`

/**
 * KEYS: the room's open streams. ARGV: the prefix of the room's stream keys (\`P{R}:\`), and the ids of the
 * streams to read ('' for every open one). Returns, per stream found, { id, seq, frame, state, reason, at,
 * text }, read together so the text and the state agree.
 */
export const READ_STREAMS = `
local ids = {}
if ARGV[2] == '' then ids = redis.call('ZRANGE', KEYS[1], 0, -1) else for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end end
local found = {}
for _, id in ipairs(ids) do
  local fields = redis.call('HMGET', ARGV[1] .. 'stream:' .. id, 'seq', 'frame', 'state', 'reason', 'at')
  if fields[1] then
    found[#found + 1] = { id, fields[1], fields[2], fields[3], fields[4] or '', fields[5], redis.call('GET', ARGV[1] .. 'text:' .. id) or '' }
  end
end
return found
`

/** KEYS: meta. ARGV: candidate epoch, idleRoomTtlMs (a room made by a read holds keys this long). */
export const POSITION = `${ENSURE_ROOM}
return ensure_room(KEYS[1], ARGV[1], ARGV[2])
`

/**
 * KEYS: meta, history. ARGV: candidate epoch, idleRoomTtlMs, maxAgeMs, after, maxEvents. Returns { seq,
 * epoch, entries } read together, so "complete" is judged against the same seq the entries end at. Only
 * the entries after `after` are read (newest first, at most seq - after of them): an up-to-date reader
 * reads nothing, however much history the room keeps. Never more than maxEvents: the publish scripts trim
 * in whole stream nodes (MAXLEN ~), so a few older entries may remain, and they count as gone.
 */
export const HISTORY = `${ENSURE_ROOM}
local position = ensure_room(KEYS[1], ARGV[1], ARGV[2])
local wanted = math.min(tonumber(position[1]) - tonumber(ARGV[4]), tonumber(ARGV[5]))
local entries = {}
if wanted > 0 then
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[3])
  entries = redis.call('XREVRANGE', KEYS[2], '+', oldest, 'COUNT', wanted)
end
return { position[1], position[2], entries }
`

/**
 * KEYS: answer, the user's answer index. ARGV: fingerprint, ttlMs, maxIdsPerUser, answer id, the user's
 * answer key prefix. Returns {'done', outcome}, {'pending'} or {'new'} (claimed now). Another fingerprint
 * under the same key is a new frame: the claim replaces it. Past maxIdsPerUser the user's oldest answers
 * are deleted (they share the hash tag of KEYS, so the slot).
 */
export const CLAIM_ANSWER = `
local fingerprint = redis.call('HGET', KEYS[1], 'fp')
if fingerprint == ARGV[1] then
  local outcome = redis.call('HGET', KEYS[1], 'outcome')
  if outcome then return { 'done', outcome } end
  return { 'pending' }
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], now, ARGV[4])
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if excess > 0 then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, excess - 1)) do redis.call('DEL', ARGV[5] .. id) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return { 'new' }
`

/** KEYS: answer. ARGV: fingerprint, outcome, ttlMs. Stores the outcome if the claim is still this frame's. */
export const STORE_ANSWER = `
if redis.call('HGET', KEYS[1], 'fp') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'outcome', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`

/**
 * KEYS: presence, users, rooms set, process members, info. ARGV: connectionId, userId, room ('' on a
 * cluster: no global rooms set there, KEYS[3] is then any key of the room's slot), member field, the user's
 * presence data ('' for none). Returns 1 when the user was not present before.
 */
export const PRESENCE_JOIN = `
if ARGV[5] ~= '' then redis.call('HSET', KEYS[5], ARGV[2], ARGV[5]) end
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[4], ARGV[4], ARGV[2])
if ARGV[3] ~= '' then redis.call('SADD', KEYS[3], ARGV[3]) end
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then return 1 end
return 0
`

/**
 * KEYS: presence, users, rooms set, process members, info. ARGV: connectionId, room ('' on a cluster),
 * member field. Returns the user id when it was that user's last connection in the room (its data goes),
 * false otherwise.
 */
export const PRESENCE_LEAVE = `
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[3])
local left = redis.call('HINCRBY', KEYS[2], user, -1)
if left > 0 then return false end
redis.call('HDEL', KEYS[2], user)
redis.call('HDEL', KEYS[5], user)
if ARGV[2] ~= '' and redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return user
`

/**
 * KEYS: meta, history. ARGV: the epoch a process found the room's stream broken in, a new epoch. A room
 * whose Redis lost acknowledged events (a failover before they reached the replica, a restore from an old
 * snapshot) would hand out their seqs again for other events: it gets a new epoch instead, so every reader
 * resets, and the retained events of the broken run go. Only the first caller renews; later ones (and a
 * room renewed already) get the position as it is. Returns { seq, epoch }.
 */
export const RENEW_EPOCH = `${ENSURE_ROOM}
local fields = redis.call('HMGET', KEYS[1], 'seq', 'epoch')
if fields[2] == ARGV[1] then
  redis.call('HSET', KEYS[1], 'epoch', ARGV[2])
  redis.call('DEL', KEYS[2])
  return { fields[1] or '0', ARGV[2] }
end
return ensure_room(KEYS[1], ARGV[2], ARGV[3])
`

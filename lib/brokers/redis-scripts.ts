// The Lua scripts of the Redis broker. Each runs atomically, so seq, history and fan-out always agree.
//
// Keys (P = keyPrefix, R = room):
//   P{R}:meta      hash  seq, epoch                    (outlives processes; expires after roomTtlMs without events)
//   P{R}:history   stream entries { s: seq, f: frame } (capped by maxEvents, trimmed by age)
//   P{R}:presence  hash  connectionId → userId
//   P{R}:users     hash  userId → connections in the room
//   Prooms         set   rooms with at least one member
//   Pproc:<id>     string, the process heartbeat (expires after processTtlMs)
//   Pprocs         set   process ids
//   Pmember:<id>   hash  "room\nconnectionId" → userId, a process's presence entries (for cleanup by survivors)
//   Panswer:<user>\n<id>  hash fp, outcome: answers to frames with an id (expire after retryWindow)
// Channels: Pev:R (room events, subscribed only where the room has local members), Pusers (user messages).

export const KEY_SEPARATOR = '\n'

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

/**
 * KEYS: meta, history. ARGV: candidate epoch, frame head, frame tail, type, except, maxEvents, maxAgeMs,
 * channel, roomTtlMs, publishedAt. The frame is assembled here (head .. seq .. tail): serialized once, by
 * the publisher. The message is: except \n type \n seq \n epoch \n publishedAt \n frame.
 */
export const PUBLISH = `${ENSURE_ROOM}
local meta, history = KEYS[1], KEYS[2]
ensure_room(meta, ARGV[1], ARGV[9])
local seq = redis.call('HINCRBY', meta, 'seq', 1)
local epoch = redis.call('HGET', meta, 'epoch')
local frame = ARGV[2] .. seq .. ARGV[3]
if tonumber(ARGV[6]) > 0 then
  redis.call('XADD', history, 'MAXLEN', ARGV[6], '*', 's', seq, 'f', frame)
  local now = redis.call('TIME')
  local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[7])
  redis.call('XTRIM', history, 'MINID', oldest)
  redis.call('PEXPIRE', history, ARGV[9])
end
redis.call('PEXPIRE', meta, ARGV[9])
redis.call('PUBLISH', ARGV[8], ARGV[5] .. '\\n' .. ARGV[4] .. '\\n' .. seq .. '\\n' .. epoch .. '\\n' .. ARGV[10] .. '\\n' .. frame)
return { seq, epoch }
`

/** KEYS: meta. ARGV: candidate epoch, roomTtlMs. */
export const POSITION = `${ENSURE_ROOM}
return ensure_room(KEYS[1], ARGV[1], ARGV[2])
`

/**
 * KEYS: meta, history. ARGV: candidate epoch, roomTtlMs, maxAgeMs. Returns { seq, epoch, entries } read
 * together, so "complete" is judged against the same seq the entries end at.
 */
export const HISTORY = `${ENSURE_ROOM}
local position = ensure_room(KEYS[1], ARGV[1], ARGV[2])
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[3])
local entries = redis.call('XRANGE', KEYS[2], oldest, '+')
return { position[1], position[2], entries }
`

/**
 * KEYS: answer. ARGV: fingerprint, ttlMs. Returns {'done', outcome}, {'pending'} or {'new'} (claimed now).
 * Another fingerprint under the same key is a new frame: the claim replaces it.
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
 * KEYS: presence, users, rooms set, process members. ARGV: connectionId, userId, room.
 * Returns 1 when the user was not present before.
 */
export const PRESENCE_JOIN = `
if redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('HSET', KEYS[4], ARGV[3] .. '\\n' .. ARGV[1], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
if redis.call('HINCRBY', KEYS[2], ARGV[2], 1) == 1 then return 1 end
return 0
`

/**
 * KEYS: presence, users, rooms set, process members. ARGV: connectionId, room.
 * Returns the user id when it was that user's last connection in the room, false otherwise.
 */
export const PRESENCE_LEAVE = `
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return false end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[2] .. '\\n' .. ARGV[1])
local left = redis.call('HINCRBY', KEYS[2], user, -1)
if left > 0 then return false end
redis.call('HDEL', KEYS[2], user)
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('SREM', KEYS[3], ARGV[2]) end
return user
`

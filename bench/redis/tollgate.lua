-- tollgate.lua: the reserve -> commit / release flow as teams build it by hand on Redis.
--
-- This is the reference implementation Tollgate is benchmarked against (`tollgate bench`), and
-- a readable answer to "why not a Lua script?". It is one script holding six operations,
-- chosen by ARGV[1]; load it once with SCRIPT LOAD and call it with EVALSHA. Each call runs
-- atomically: Redis executes one script at a time, so there is no lock and no retry loop.
--
-- What it keeps, per user (every key carries the hash tag {user}, so the three keys of a user
-- live in one slot and the script also runs on Redis Cluster):
--
--   KEYS[1]  tg:{user}:c  hash   u<i> / r<i>: units used / reserved against limit i
--                                (i = 0 .. nlimits-1); seq: the last reservation number
--   KEYS[2]  tg:{user}:p  zset   pending reservation id -> expiry, epoch milliseconds
--   KEYS[3]  tg:{user}:q  hash   pending reservation id -> reserved quantity
--
-- A reservation id is "r<n>", n from HINCRBY on the user's own `seq` field. Ids are unique per
-- user, not globally: the handle of a reservation is the pair (user, id), and commit and
-- release take both, so the caller can name the user's keys (as Cluster requires) without
-- parsing the id.
--
-- Every limit of a user has the same quota here and every call charges each limit the same
-- quantity: the point is the cost of checking and updating N counters in one atomic step, the
-- shape of a plan with N limits. A user must always be called with the same nlimits.
--
-- Time is an argument (now_ms), never TIME: tests and benchmarks drive a virtual clock, and
-- the script stays deterministic. A reservation is expired when expiry <= now_ms.
--
-- Operations (ARGV[1], then the arguments in this order; all integers in decimal):
--
--   reserve  quantity quota nlimits ttl_ms now_ms
--       Releases the user's expired reservations, then admits iff
--       used + reserved + quantity <= quota on EVERY limit. Admitted: reserved += quantity on
--       every limit, and the reply is the new id. Denied: nil, and no counter moves.
--   commit   id quantity nlimits now_ms
--       Releases expired reservations, then, if `id` is pending: reserved -= its reserved
--       quantity and used += `quantity` on every limit, and the reservation is gone. The
--       committed quantity may be anything from 0 up; more than was reserved is an overage,
--       recorded in full (used may then exceed the quota: the work was done). Reply
--       "committed", or "not_pending" when the id is unknown, expired (released just now) or
--       already committed / released.
--   release  id nlimits now_ms
--       Releases expired reservations, then, if `id` is pending: reserved -= its quantity and
--       the reservation is gone. Reply "released" or "not_pending".
--   track    quantity quota nlimits now_ms
--       Usage without a reservation: releases expired reservations, then
--       used += quantity on every limit iff used + reserved + quantity <= quota on every
--       limit. Reply 1 (tracked) or 0 (denied).
--   check    quota nlimits now_ms                                            (read-only)
--       Reply: the units still available, min over limits of quota - used - reserved, never
--       below 0. It writes nothing, so it may be sent with EVALSHA_RO (to a replica, too); it
--       cannot release expired reservations, so it subtracts them instead, which gives the
--       same answer the next write would act on.
--   usage    nlimits now_ms                                                  (read-only)
--       Reply: {used, reserved} of limit 0, expired reservations subtracted, as in check.
--
-- Limits (the same as Tollgate's): nlimits 1..100; quantities and quotas 0..2^53-1 (Lua
-- numbers are doubles, exact up to 2^53; the counters stay exact while they stay below it);
-- ttl_ms 1..3 600 000 (one hour); now_ms 0..2^53-1. Anything else is an error reply and
-- nothing is written.
--
-- Cost: O(nlimits) per call, in two hash commands (one HMGET, one HSET), plus O(log P) for the
-- P pending reservations of the user. Releasing k expired reservations costs O(k log P), paid
-- once per reservation, by whichever write comes first after it expired.
--
-- All-or-nothing: Redis does not roll back a script that fails half-way, so every call checks
-- its arguments and reads everything it needs before its first write.

local LIMITS_MAX = 100
local VALUE_MAX = 9007199254740991 -- 2^53 - 1
local TTL_MS_MAX = 3600 * 1000
-- HMGET / HDEL take their fields through unpack(), which Lua bounds (about 8000 values):
-- long lists go in chunks of this many.
local CHUNK = 1000

local counters = KEYS[1]
local pending = KEYS[2]
local quantities = KEYS[3]

local function fail(message)
  error({ err = 'ERR tollgate.lua: ' .. message })
end

-- ARGV[i] as an integer in min..max, or an error reply naming the argument.
local function int_arg(i, name, min, max)
  local value = tonumber(ARGV[i])
  if value == nil or value ~= math.floor(value) or value < min or value > max then
    fail(string.format('%s must be an integer in %d..%d, got %s', name, min, max, tostring(ARGV[i])))
  end
  return value
end

local function id_arg(i)
  local id = ARGV[i]
  if id == nil or not string.match(id, '^r%d+$') then
    fail('id must look like r<number>, got ' .. tostring(id))
  end
  return id
end

-- Calls `command key <items...>` once per CHUNK items, so unpack() never overflows; returns
-- the replies concatenated (for HMGET).
local function chunked(command, key, items)
  local replies = {}
  for first = 1, #items, CHUNK do
    local last = math.min(first + CHUNK - 1, #items)
    local reply = redis.call(command, key, unpack(items, first, last))
    if type(reply) == 'table' then
      -- Not ipairs: HMGET answers false for a missing field, and ipairs would stop there.
      for j = 1, last - first + 1 do
        replies[first + j - 1] = reply[j]
      end
    end
  end
  return replies
end

-- The user's expired reservations (expiry <= now) and the sum of their quantities. Read-only.
local function find_expired(now)
  local ids = redis.call('ZRANGEBYSCORE', pending, '-inf', now)
  local total = 0
  local reserved = chunked('HMGET', quantities, ids)
  for j = 1, #ids do
    local quantity = tonumber(reserved[j])
    if quantity == nil then
      fail('reservation ' .. ids[j] .. ' is pending without a quantity (corrupt state)')
    end
    total = total + quantity
  end
  return ids, total
end

-- Forgets expired reservations found by find_expired. Their quantity leaves `reserved` in
-- the caller's counter write.
local function drop_expired(ids, now)
  if #ids > 0 then
    redis.call('ZREMRANGEBYSCORE', pending, '-inf', now)
    chunked('HDEL', quantities, ids)
  end
end

-- used[i], reserved[i] for i = 1..n (limit i-1), in one HMGET; absent fields count as 0.
local function load_counters(n)
  local fields = {}
  for i = 0, n - 1 do
    fields[2 * i + 1] = 'u' .. i
    fields[2 * i + 2] = 'r' .. i
  end
  local values = redis.call('HMGET', counters, unpack(fields))
  local used, reserved = {}, {}
  for i = 1, n do
    used[i] = tonumber(values[2 * i - 1]) or 0
    reserved[i] = tonumber(values[2 * i]) or 0
  end
  return used, reserved
end

-- Writes field <prefix><i-1> = values[i] for i = 1..n, in one HSET.
local function store_counters(n, prefix, values)
  local args = {}
  for i = 1, n do
    args[2 * i - 1] = prefix .. (i - 1)
    args[2 * i] = values[i]
  end
  redis.call('HSET', counters, unpack(args))
end

-- Whether `quantity` more units fit under `quota` on every limit.
local function fits(n, used, reserved, quantity, quota)
  for i = 1, n do
    if used[i] + reserved[i] + quantity > quota then
      return false
    end
  end
  return true
end

-- reserved[i] -= amount on every limit.
local function take_reserved(n, reserved, amount)
  for i = 1, n do
    reserved[i] = reserved[i] - amount
  end
end

local function reserve()
  local quantity = int_arg(2, 'quantity', 0, VALUE_MAX)
  local quota = int_arg(3, 'quota', 0, VALUE_MAX)
  local n = int_arg(4, 'nlimits', 1, LIMITS_MAX)
  local ttl = int_arg(5, 'ttl_ms', 1, TTL_MS_MAX)
  local now = int_arg(6, 'now_ms', 0, VALUE_MAX)

  local expired_ids, expired = find_expired(now)
  local used, reserved = load_counters(n)
  take_reserved(n, reserved, expired)
  local admit = fits(n, used, reserved, quantity, quota)

  drop_expired(expired_ids, now)
  if not admit then
    if expired > 0 then
      store_counters(n, 'r', reserved)
    end
    return false -- nil reply: denied
  end
  take_reserved(n, reserved, -quantity)
  store_counters(n, 'r', reserved)
  local id = string.format('r%d', redis.call('HINCRBY', counters, 'seq', 1))
  redis.call('HSET', quantities, id, quantity)
  redis.call('ZADD', pending, now + ttl, id)
  return id
end

-- The shared end of commit and release: if `id` is pending, `reserved` drops by its quantity
-- and `used` grows by `used_delta` (nil for release), and the reservation is gone.
local function settle(id, n, now, used_delta)
  local expired_ids, expired = find_expired(now)
  -- Everything is read before the first write. An expired `id` is among expired_ids, so it is
  -- released with them and is not pending.
  local expiry = redis.call('ZSCORE', pending, id)
  local is_pending = expiry and tonumber(expiry) > now
  local quantity = 0
  if is_pending then
    quantity = tonumber(redis.call('HGET', quantities, id))
    if quantity == nil then
      fail('reservation ' .. id .. ' is pending without a quantity (corrupt state)')
    end
  end
  if expired == 0 and not is_pending then
    return false
  end
  local used, reserved = load_counters(n)

  drop_expired(expired_ids, now)
  take_reserved(n, reserved, expired + quantity)
  store_counters(n, 'r', reserved)
  if is_pending then
    redis.call('ZREM', pending, id)
    redis.call('HDEL', quantities, id)
    if used_delta ~= nil and used_delta > 0 then
      for i = 1, n do
        used[i] = used[i] + used_delta
      end
      store_counters(n, 'u', used)
    end
  end
  return is_pending
end

local function commit()
  local id = id_arg(2)
  local quantity = int_arg(3, 'quantity', 0, VALUE_MAX)
  local n = int_arg(4, 'nlimits', 1, LIMITS_MAX)
  local now = int_arg(5, 'now_ms', 0, VALUE_MAX)
  if settle(id, n, now, quantity) then
    return 'committed'
  end
  return 'not_pending'
end

local function release()
  local id = id_arg(2)
  local n = int_arg(3, 'nlimits', 1, LIMITS_MAX)
  local now = int_arg(4, 'now_ms', 0, VALUE_MAX)
  if settle(id, n, now, nil) then
    return 'released'
  end
  return 'not_pending'
end

local function track()
  local quantity = int_arg(2, 'quantity', 0, VALUE_MAX)
  local quota = int_arg(3, 'quota', 0, VALUE_MAX)
  local n = int_arg(4, 'nlimits', 1, LIMITS_MAX)
  local now = int_arg(5, 'now_ms', 0, VALUE_MAX)

  local expired_ids, expired = find_expired(now)
  local used, reserved = load_counters(n)
  take_reserved(n, reserved, expired)
  local admit = fits(n, used, reserved, quantity, quota)

  drop_expired(expired_ids, now)
  if expired > 0 then
    store_counters(n, 'r', reserved)
  end
  if not admit then
    return 0
  end
  if quantity > 0 then
    for i = 1, n do
      used[i] = used[i] + quantity
    end
    store_counters(n, 'u', used)
  end
  return 1
end

local function check()
  local quota = int_arg(2, 'quota', 0, VALUE_MAX)
  local n = int_arg(3, 'nlimits', 1, LIMITS_MAX)
  local now = int_arg(4, 'now_ms', 0, VALUE_MAX)

  local _, expired = find_expired(now)
  local used, reserved = load_counters(n)
  local remaining = quota
  for i = 1, n do
    remaining = math.min(remaining, quota - used[i] - (reserved[i] - expired))
  end
  return math.max(remaining, 0)
end

local function usage()
  -- nlimits is checked but only limit 0 is read: every limit moves by the same amounts.
  int_arg(2, 'nlimits', 1, LIMITS_MAX)
  local now = int_arg(3, 'now_ms', 0, VALUE_MAX)

  local _, expired = find_expired(now)
  local used, reserved = load_counters(1)
  return { used[1], reserved[1] - expired }
end

local operations = {
  reserve = reserve,
  commit = commit,
  release = release,
  track = track,
  check = check,
  usage = usage,
}

if #KEYS ~= 3 then
  fail('expects 3 keys (tg:{user}:c, tg:{user}:p, tg:{user}:q), got ' .. #KEYS)
end
local operation = operations[ARGV[1]]
if operation == nil then
  fail('unknown operation ' .. tostring(ARGV[1]))
end
return operation()

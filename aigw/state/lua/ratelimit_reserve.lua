-- Check every charge against its quota's sliding log and, only if all fit, record them all.
-- KEYS: per charge 3 keys: log (ZSET request id -> time in us), amounts (HASH request id ->
--       units), sum (STRING: the units now in the log).
-- ARGV: request id, then per charge: limit, window (us), amount.
-- Returns {allowed (0/1), index of the refusing charge (0: none), retry after (us, -1: never),
--          then per charge: remaining, reset (us)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rid = ARGV[1]
local n = #KEYS / 3
local BATCH = 500

-- Drop the entries that have left the window; return the sum of those left.
local function prune(log, amounts, sumkey, cutoff)
  local sum = tonumber(redis.call('GET', sumkey) or '0')
  while true do
    local old = redis.call('ZRANGEBYSCORE', log, '-inf', cutoff, 'LIMIT', 0, BATCH)
    if #old == 0 then break end
    local amts = redis.call('HMGET', amounts, unpack(old))
    for i = 1, #amts do sum = sum - (tonumber(amts[i]) or 0) end
    redis.call('ZREM', log, unpack(old))
    redis.call('HDEL', amounts, unpack(old))
    if #old < BATCH then break end
  end
  if redis.call('ZCARD', log) == 0 then
    redis.call('DEL', sumkey)
    return 0
  end
  redis.call('SET', sumkey, sum, 'KEEPTTL')
  return sum
end

-- Microseconds until the oldest entries free `need` units by leaving the window.
local function retry_after(log, amounts, need, window)
  local freed, start = 0, 0
  while true do
    local rows = redis.call('ZRANGE', log, start, start + BATCH - 1, 'WITHSCORES')
    if #rows == 0 then return 0 end
    local ids = {}
    for i = 1, #rows, 2 do ids[#ids + 1] = rows[i] end
    local amts = redis.call('HMGET', amounts, unpack(ids))
    for i = 1, #ids do
      freed = freed + (tonumber(amts[i]) or 0)
      if freed >= need then return math.max(0, tonumber(rows[2 * i]) + window - now) end
    end
    start = start + BATCH
  end
end

local sums = {}
local refused, retry = 0, -1
for i = 1, n do
  local log, amounts, sumkey = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  local limit, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local amount = tonumber(ARGV[3 * i + 1])
  sums[i] = prune(log, amounts, sumkey, now - window)
  if refused == 0 then
    if amount > limit then
      refused = i
    else
      local need = sums[i] + math.max(amount, 1) - limit
      if need > 0 then
        refused = i
        retry = retry_after(log, amounts, need, window)
      end
    end
  end
end

if refused == 0 then
  for i = 1, n do
    local amount = tonumber(ARGV[3 * i + 1])
    if amount > 0 then
      local log, amounts, sumkey = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
      local ttl = math.max(1, math.ceil(tonumber(ARGV[3 * i]) / 1000))
      local old = redis.call('HGET', amounts, rid)
      if old then sums[i] = sums[i] - tonumber(old) end
      redis.call('ZADD', log, now, rid)
      redis.call('HSET', amounts, rid, amount)
      sums[i] = sums[i] + amount
      redis.call('SET', sumkey, sums[i], 'PX', ttl)
      redis.call('PEXPIRE', log, ttl)
      redis.call('PEXPIRE', amounts, ttl)
    end
  end
end

local reply = {refused == 0 and 1 or 0, refused, retry}
for i = 1, n do
  local limit, window = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
  local newest = redis.call('ZRANGE', KEYS[3 * i - 2], -1, -1, 'WITHSCORES')
  local reset = 0
  if #newest > 0 then reset = math.max(0, tonumber(newest[2]) + window - now) end
  reply[#reply + 1] = math.max(0, limit - sums[i])
  reply[#reply + 1] = reset
end
return reply

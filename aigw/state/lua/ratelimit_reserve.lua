-- Check every charge against its quota's bucketed window and, only if all fit, record them
-- all (the algorithm and its proof: aigw/state/windows.py).
-- KEYS: per charge, the quota's HASH: 'h' the newest bucket, 's' the units in buckets
--       h-60 .. h, and one field per bucket index (decimal) -> units.
-- ARGV: per charge: limit, bucket width (us), amount.
-- Returns {index of the refusing charge (0: none), retry after (us, -1: never), stamp (now, us),
--          then per charge: remaining, reset (us)}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local SPAN = 61
local n = #KEYS

local function field(k) return string.format('%d', k) end

-- Move a quota's head to now's bucket, taking the buckets that leave the span out of the sum.
-- Returns the head and the sum; an all-zero quota is deleted (idle quotas cost nothing).
local function advance(key, width)
  local b = math.floor(now / width)
  local hs = redis.call('HMGET', key, 'h', 's')
  local h, s = tonumber(hs[1]), tonumber(hs[2]) or 0
  if h == nil then return b, 0 end
  if b <= h then return h, s end -- the same bucket (or Redis's clock stepped back)
  if s > 0 and b - h < SPAN then
    local gone = {}
    for k = h - SPAN + 1, b - SPAN do gone[#gone + 1] = field(k) end
    local vals = redis.call('HMGET', key, unpack(gone))
    for i = 1, #vals do s = s - (tonumber(vals[i]) or 0) end
    if s > 0 then
      redis.call('HDEL', key, unpack(gone))
      redis.call('HSET', key, 'h', field(b), 's', field(s))
      return b, s
    end
  end
  redis.call('DEL', key) -- every bucket left is 0 (none is ever negative)
  return b, 0
end

-- The units of buckets head-60 .. head, oldest first.
local function span(key, head)
  local fields = {}
  for k = head - SPAN + 1, head do fields[#fields + 1] = field(k) end
  return redis.call('HMGET', key, unpack(fields))
end

local function retry_after(key, head, width, need)
  local vals, freed = span(key, head), 0
  for i = 1, SPAN do
    freed = freed + (tonumber(vals[i]) or 0)
    if freed >= need then return math.max(0, (head - SPAN + i + SPAN) * width - now) end
  end
  return math.max(0, (head + SPAN) * width - now)
end

local function reset(key, head, width, sum)
  if sum <= 0 then return 0 end
  local vals = span(key, head)
  for i = SPAN, 1, -1 do
    if (tonumber(vals[i]) or 0) > 0 then
      return math.max(0, (head - SPAN + i + SPAN) * width - now)
    end
  end
  return 0
end

local heads, sums = {}, {}
local refused, retry = 0, -1
for i = 1, n do
  local limit, width = tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  heads[i], sums[i] = advance(KEYS[i], width)
  if refused == 0 then
    if amount > limit then
      refused = i
    else
      local need = sums[i] + math.max(amount, 1) - limit
      if need > 0 then
        refused = i
        retry = retry_after(KEYS[i], heads[i], width, need)
      end
    end
  end
end

local reply = {refused, retry, now}
for i = 1, n do
  local key, limit, width = KEYS[i], tonumber(ARGV[3 * i - 2]), tonumber(ARGV[3 * i - 1])
  local amount = tonumber(ARGV[3 * i])
  local reset_us
  if refused == 0 and amount > 0 then
    redis.call('HINCRBY', key, field(heads[i]), amount)
    sums[i] = sums[i] + amount
    redis.call('HSET', key, 'h', field(heads[i]), 's', field(sums[i]))
    -- The last bucket written leaves the span SPAN widths after it began.
    redis.call('PEXPIRE', key, math.ceil(SPAN * width / 1000))
    reset_us = math.max(0, (heads[i] + SPAN) * width - now)
  else
    reset_us = reset(key, heads[i], width, sums[i])
  end
  reply[#reply + 1] = math.max(0, limit - sums[i])
  reply[#reply + 1] = reset_us
end
return reply

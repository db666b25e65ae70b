-- Reconcile or refund: add units to the bucket a reservation was recorded in, while that
-- bucket is still in the span (else nothing: the charge aged out as reserved); never below 0.
-- KEYS: per change, the quota's HASH (as in ratelimit_reserve.lua).
-- ARGV: the reservation's stamp (us), then per change: bucket width (us), units to add
--       (negative to take back).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local SPAN = 61
local stamp = tonumber(ARGV[1])
for i = 1, #KEYS do
  local key, width, delta = KEYS[i], tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
  local hs = redis.call('HMGET', key, 'h', 's')
  local h, s = tonumber(hs[1]), tonumber(hs[2]) or 0
  local bucket = math.floor(stamp / width)
  -- 's' sums buckets h-60 .. h; one that has left since (now's bucket is past h) is not
  -- counted any more, though 's' still holds it until the next reserve moves the head.
  if h ~= nil and bucket <= h and bucket > math.max(h, math.floor(now / width)) - SPAN then
    local name = string.format('%d', bucket)
    local old = tonumber(redis.call('HGET', key, name) or '0')
    local new = math.max(0, old + delta)
    if new ~= old then
      redis.call('HSET', key, name, new, 's', string.format('%d', s + new - old))
    end
  end
end
return 0

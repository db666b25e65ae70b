-- Remove a request's entries from quotas, as if they had never been made.
-- KEYS: per quota: log, amounts, sum (as in ratelimit_reserve.lua). ARGV: request id.
local rid = ARGV[1]
for i = 1, #KEYS / 3 do
  local log, amounts, sumkey = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  if redis.call('ZREM', log, rid) == 1 then
    local old = tonumber(redis.call('HGET', amounts, rid) or '0')
    redis.call('HDEL', amounts, rid)
    redis.call('DECRBY', sumkey, old)
  end
end
return 0

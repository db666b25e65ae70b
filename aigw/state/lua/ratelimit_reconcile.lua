-- Replace the amount a request charged to one quota; the entry keeps its time.
-- KEYS: log, amounts, sum (as in ratelimit_reserve.lua). ARGV: request id, amount, window (us).
-- Returns 1 when the entry was still in the window and changed, else 0.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rid, amount, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local made = redis.call('ZSCORE', KEYS[1], rid)
if not made or tonumber(made) <= now - window then return 0 end
local old = tonumber(redis.call('HGET', KEYS[2], rid) or '0')
redis.call('HSET', KEYS[2], rid, amount)
redis.call('INCRBY', KEYS[3], amount - old)
return 1

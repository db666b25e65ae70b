-- One instance's periodic upkeep: renew the leases it holds, return the slots of leases
-- nobody renewed (dead instances) to waiting tickets, and read its queues' depths.
-- ARGV: 3 number of leases, then triples (lease, pool, tenant pool or ''); then the number of
--       pools, then pairs (pool, size); then queue names.
-- Returns {leases no longer held..., '', microseconds until the earliest lease of those pools
--          expires (-1: none), depth of each queue...}.
local lost = {}
local i = 4
for _ = 1, tonumber(ARGV[3]) do
  local lease, pool, tenant_pool = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if not redis.call('ZSCORE', slots(pool), lease) then
    lost[#lost + 1] = lease -- reaped: this instance was cut off for longer than the TTL
  else
    redis.call('ZADD', slots(pool), 'XX', NOW + TTL, lease)
    if tenant_pool ~= '' then redis.call('ZADD', slots(tenant_pool), 'XX', NOW + TTL, lease) end
  end
  i = i + 3
end
local pools = tonumber(ARGV[i])
local earliest = -1
i = i + 1
for _ = 1, pools do
  reap(ARGV[i], tonumber(ARGV[i + 1]))
  local first = redis.call('ZRANGE', slots(ARGV[i]), 0, 0, 'WITHSCORES')
  if #first > 0 then
    local left = tonumber(first[2]) - NOW
    if earliest < 0 or left < earliest then earliest = left end
  end
  i = i + 2
end
lost[#lost + 1] = ''
lost[#lost + 1] = earliest
for j = i, #ARGV do
  prune_dead(ARGV[j])
  lost[#lost + 1] = redis.call('ZCARD', P .. 'q:' .. ARGV[j])
end
return lost

-- Give a lease back and hand its slot to the best waiting ticket.
-- ARGV: 3 lease id, 4 pool, 5 its size, 6 tenant pool ('' none), 7 its size.
local lease, pool, size = ARGV[3], ARGV[4], tonumber(ARGV[5])
local tenant_pool, tenant_size = ARGV[6], tonumber(ARGV[7])
local held = redis.call('ZREM', slots(pool), lease)
if tenant_pool ~= '' then redis.call('ZREM', slots(tenant_pool), lease) end
hand_off(pool, size)
if tenant_pool ~= '' then unblock(tenant_pool, tenant_size) end
return held

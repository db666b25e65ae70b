-- Undo whatever an acquire left behind (its caller was cancelled, or lost the answer): the
-- ticket leaves its queue, and any slot it holds goes to the next ticket.
-- ARGV: 3 queue, 4 ticket, 5 tenant pool ('' none), 6 its size, then pairs: pool, size.
-- Returns the queue's depth.
local queue, ticket, tenant_pool = ARGV[3], ARGV[4], ARGV[5]
local data = load_ticket(queue, ticket)
if data then remove_ticket(queue, ticket, data) end
redis.call('DEL', P .. 'grant:' .. ticket)
local freed_tenant = tenant_pool ~= '' and redis.call('ZREM', slots(tenant_pool), ticket) == 1
for i = 7, #ARGV, 2 do
  if redis.call('ZREM', slots(ARGV[i]), ticket) == 1 then hand_off(ARGV[i], tonumber(ARGV[i + 1])) end
end
if freed_tenant then unblock(tenant_pool, tonumber(ARGV[6])) end
return redis.call('ZCARD', P .. 'q:' .. queue)

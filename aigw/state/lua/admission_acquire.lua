-- A slot of the first pool among the choices with room, or a place in the queue.
-- ARGV: 3 queue, 4 tenant, 5 priority rank (10 digits, smaller first), 6 max queue,
--       7 ticket (= lease id), 8 instance, 9 timeout (us), 10 tenant pool ('' none),
--       11 its size, then pairs: pool, size.
-- Returns {'lease', index of the pool} | {'max_parallel'} | {'full', depth} |
--         {'queued', depth}.
local queue, tenant, ticket = ARGV[3], ARGV[4], ARGV[7]
local tenant_pool, tenant_size = ARGV[10], tonumber(ARGV[11])
if tenant_pool == '' then tenant_pool = nil end
local choices = {}
for i = 12, #ARGV, 2 do choices[#choices + 1] = {ARGV[i], tonumber(ARGV[i + 1])} end

for _, choice in ipairs(choices) do reap(choice[1], choice[2]) end
if tenant_pool then
  reap(tenant_pool, tenant_size)
  if not has_room(tenant_pool, tenant_size) then return {'max_parallel'} end
end
for i, choice in ipairs(choices) do
  if has_room(choice[1], choice[2]) then
    take(choice[1], tenant_pool, ticket)
    return {'lease', i}
  end
end

prune_dead(queue)
local qkey = P .. 'q:' .. queue
local depth = redis.call('ZCARD', qkey)
if depth >= tonumber(ARGV[6]) then return {'full', depth} end
local seq = redis.call('INCR', P .. 'seq')
local vtime = math.max(
  tonumber(redis.call('GET', P .. 'qv:' .. queue) or '0'),
  tonumber(redis.call('HGET', P .. 'qf:' .. queue, tenant) or '0')) + 1
redis.call('HSET', P .. 'qf:' .. queue, tenant, vtime)
local member = string.format('%s|%016d|%016d|', ARGV[5], vtime, seq) .. ticket
redis.call('ZADD', qkey, 0, member)
local data = {m = member, c = choices, t = false, i = ARGV[8]}
if tenant_pool then data.t = {tenant_pool, tenant_size} end
redis.call('HSET', P .. 'qt:' .. queue, ticket, cjson.encode(data))
redis.call('ZADD', P .. 'qd:' .. queue, NOW + tonumber(ARGV[9]), ticket)
for _, choice in ipairs(choices) do redis.call('HINCRBY', P .. 'pq:' .. choice[1], queue, 1) end
return {'queued', depth + 1}

-- Shared by every admission script (prepended to each when loaded).
-- ARGV[1]: key prefix; ARGV[2]: lease time to live (us). Keys, after the prefix:
--   slots:<pool>    ZSET lease id -> expiry (us, server time): the pool's held slots
--   q:<queue>       ZSET, all scores 0, members "<priority>|<vtime>|<seq>|<ticket>" (fixed
--                   width numbers: lexicographic order = service order)
--   qt:<queue>      HASH ticket -> JSON {m: member, c: [[pool, size]...], t: [pool, size] or
--                   false, i: instance}
--   qd:<queue>      ZSET ticket -> deadline (us): tickets of dead instances are dropped
--   qv:<queue>      STRING the virtual time of the last grant (start-time fair queuing)
--   qf:<queue>      HASH tenant -> the tenant's last virtual time
--   pq:<pool>       HASH queue -> tickets in it that list the pool (who to wake on release)
--   tblocked        HASH tenant pool -> a queue where a ticket was skipped for it
--   grant:<ticket>  STRING the pool granted to a waiting ticket (read on timeout)
--   inst:<instance> pub/sub channel: "<ticket>\n<pool>" for each grant
local P = ARGV[1]
local TTL = tonumber(ARGV[2])
local SCAN = 64 -- tickets looked at per queue for one free slot
local GRACE = 2000000 -- a ticket this long past its deadline belongs to a dead instance
local clock = redis.call('TIME')
local NOW = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local function slots(pool) return P .. 'slots:' .. pool end

local function has_room(pool, size) return redis.call('ZCARD', slots(pool)) < size end

local function take(pool, tenant_pool, lease)
  redis.call('ZADD', slots(pool), NOW + TTL, lease)
  if tenant_pool then redis.call('ZADD', slots(tenant_pool), NOW + TTL, lease) end
end

local function remove_ticket(queue, ticket, data)
  redis.call('ZREM', P .. 'q:' .. queue, data.m)
  redis.call('HDEL', P .. 'qt:' .. queue, ticket)
  redis.call('ZREM', P .. 'qd:' .. queue, ticket)
  for _, choice in ipairs(data.c) do
    local key = P .. 'pq:' .. choice[1]
    if redis.call('HINCRBY', key, queue, -1) <= 0 then redis.call('HDEL', key, queue) end
  end
  if redis.call('EXISTS', P .. 'q:' .. queue) == 0 then
    redis.call('DEL', P .. 'qf:' .. queue) -- everyone is idle: nobody carries credit or debt
  end
end

local function load_ticket(queue, ticket)
  local raw = redis.call('HGET', P .. 'qt:' .. queue, ticket)
  if raw then return cjson.decode(raw) end
  return nil
end

local function prune_dead(queue)
  local dead = redis.call('ZRANGEBYSCORE', P .. 'qd:' .. queue, '-inf', NOW - GRACE, 'LIMIT', 0, SCAN)
  for _, ticket in ipairs(dead) do
    local data = load_ticket(queue, ticket)
    if data then remove_ticket(queue, ticket, data) else redis.call('ZREM', P .. 'qd:' .. queue, ticket) end
  end
end

local function grant(queue, ticket, data, pool)
  remove_ticket(queue, ticket, data)
  local vtime = tonumber(string.sub(data.m, 12, 27))
  local vkey = P .. 'qv:' .. queue
  if vtime > tonumber(redis.call('GET', vkey) or '0') then redis.call('SET', vkey, vtime) end
  take(pool, data.t and data.t[1], ticket)
  redis.call('SET', P .. 'grant:' .. ticket, pool, 'PX', math.max(1, math.ceil(TTL / 1000)))
  redis.call('PUBLISH', P .. 'inst:' .. data.i, ticket .. '\n' .. pool)
end

local function lists(data, pool)
  for _, choice in ipairs(data.c) do
    if choice[1] == pool then return true end
  end
  return false
end

-- The best waiting ticket that may take a slot of `pool`: per queue the first one listing it
-- whose tenant pool has room, then across queues the highest priority, earliest arrival.
local function find_waiter(pool)
  local best, best_rank = nil, nil
  for _, queue in ipairs(redis.call('HKEYS', P .. 'pq:' .. pool)) do
    prune_dead(queue)
    for _, member in ipairs(redis.call('ZRANGE', P .. 'q:' .. queue, 0, SCAN - 1)) do
      local ticket = string.sub(member, 46)
      local data = load_ticket(queue, ticket)
      if data and lists(data, pool) then
        if (not data.t) or has_room(data.t[1], data.t[2]) then
          local rank = string.sub(member, 1, 10) .. string.sub(member, 29, 44)
          if best_rank == nil or rank < best_rank then
            best, best_rank = {queue, ticket, data}, rank
          end
          break
        end
        redis.call('HSET', P .. 'tblocked', data.t[1], queue)
      end
    end
  end
  return best
end

-- Hand `pool`'s free slots to waiting tickets.
local function hand_off(pool, size)
  for _ = 1, SCAN do
    if not has_room(pool, size) then return end
    local found = find_waiter(pool)
    if not found then return end
    grant(found[1], found[2], found[3], pool)
  end
end

-- A tenant slot freed: a ticket skipped for it may now take a pool that has room.
local function unblock(tenant_pool, size)
  local queue = redis.call('HGET', P .. 'tblocked', tenant_pool)
  if not queue then return end
  redis.call('HDEL', P .. 'tblocked', tenant_pool)
  for _, member in ipairs(redis.call('ZRANGE', P .. 'q:' .. queue, 0, SCAN - 1)) do
    if not has_room(tenant_pool, size) then return end
    local ticket = string.sub(member, 46)
    local data = load_ticket(queue, ticket)
    if data and data.t and data.t[1] == tenant_pool then
      for _, choice in ipairs(data.c) do
        if has_room(choice[1], choice[2]) then
          grant(queue, ticket, data, choice[1])
          break
        end
      end
    end
  end
end

-- Return the slots of leases nobody renewed (their instance died) and hand them on.
local function reap(pool, size)
  if redis.call('ZREMRANGEBYSCORE', slots(pool), '-inf', NOW) > 0 then hand_off(pool, size) end
end


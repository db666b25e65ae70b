-- A ticket's deadline passed: take it out of its queue, or, if a slot was handed to it in the
-- meantime, return that grant for the caller to use.
-- ARGV: 3 queue, 4 ticket. Returns {'removed', depth} | {'granted', pool} | {'gone', depth}.
local queue, ticket = ARGV[3], ARGV[4]
local data = load_ticket(queue, ticket)
if data then
  remove_ticket(queue, ticket, data)
  return {'removed', redis.call('ZCARD', P .. 'q:' .. queue)}
end
local pool = redis.call('GET', P .. 'grant:' .. ticket)
if pool then
  redis.call('DEL', P .. 'grant:' .. ticket)
  return {'granted', pool}
end
return {'gone', redis.call('ZCARD', P .. 'q:' .. queue)}

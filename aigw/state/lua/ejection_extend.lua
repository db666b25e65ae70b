-- Share an ejection: KEYS[1] = the deployment's ejection key, ARGV[1] = milliseconds it
-- is ejected for from now, ARGV[2] = the instance that noticed. Never shortens one already
-- there (another instance may have ejected it for longer). Returns 1 if it was written.
local ms = tonumber(ARGV[1])
local left = redis.call('PTTL', KEYS[1])
if left >= ms then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ms)
return 1

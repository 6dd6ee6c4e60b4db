-- fence.lua: Redlock only; give an owner's live lease on this node the
-- token the client chose (the highest its quorum handed out) and raise the
-- node's counter to at least that token, so that every later acquisition
-- on this node gets a greater one.
--
-- KEYS[1]  lock key     <prefix>:{<key>}; a string "<token>:<owner>"
-- KEYS[2]  counter key  <prefix>:{<key>}:token
-- ARGV[1]  owner        non-empty string
-- ARGV[2]  token        the lease's fencing token, an integer >= 1
--
-- Returns an integer:
--   1  owner holds a live lease here; its token is now ARGV[2] (expiry
--      unchanged) and the counter is at least ARGV[2]
--   0  the key is free or held by another owner; nothing changed
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local sep = string.find(v, ':', 1, true)
if not sep or string.sub(v, sep + 1) ~= ARGV[1] then
  return 0
end
local token = tonumber(ARGV[2])
local counter = tonumber(redis.call('GET', KEYS[2]) or '0')
if counter < token then
  redis.call('SET', KEYS[2], ARGV[2])
end
local pttl = redis.call('PTTL', KEYS[1])
if pttl > 0 then
  redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[1], 'PX', pttl)
else
  redis.call('SET', KEYS[1], ARGV[2] .. ':' .. ARGV[1], 'KEEPTTL')
end
return 1

-- transfer.lua: pass an owner's live lease straight to another owner, with a
-- fresh TTL and a new fencing token; the key is never free in between, so
-- nothing is published.
--
-- KEYS[1]  lock key     <prefix>:{<key>}; a string "<token>:<owner>" with a
--                       PX expiry
-- KEYS[2]  counter key  <prefix>:{<key>}:token; the counter acquire.lua
--                       draws from, so tokens increase across acquisitions
--                       and transfers alike
-- ARGV[1]  from         the current owner, a non-empty string
-- ARGV[2]  to           the new owner, a non-empty string
-- ARGV[3]  ttl          the new lease length in milliseconds, an integer >= 1
--
-- Returns an integer:
--   >= 1  from held a live lease; key is now held by to for ttl ms and the
--         value is the new fencing token, strictly greater than every token
--         handed out for the key before
--   0     the key is free or held by another owner; nothing changed
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local sep = string.find(v, ':', 1, true)
if not sep or string.sub(v, sep + 1) ~= ARGV[1] then
  return 0
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d:%s', token, ARGV[2]), 'PX', ARGV[3])
return token

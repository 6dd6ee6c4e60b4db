-- refresh.lua: extend an owner's live lease, keeping its fencing token.
--
-- KEYS[1]  lock key  <prefix>:{<key>}; a string "<token>:<owner>"
-- ARGV[1]  owner     non-empty string
-- ARGV[2]  ttl       new lease length in milliseconds from now, an integer >= 1
--
-- Returns an integer:
--   >= 1  owner held a live lease; it now ends ttl ms from now and the value
--         is its (unchanged) fencing token
--   0     the key is free or held by another owner; nothing changed
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local sep = string.find(v, ':', 1, true)
if not sep or string.sub(v, sep + 1) ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return tonumber(string.sub(v, 1, sep - 1))

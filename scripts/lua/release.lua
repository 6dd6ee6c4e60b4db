-- release.lua: free a key held by an owner, and tell waiters.
--
-- KEYS[1]  lock key  <prefix>:{<key>}; a string "<token>:<owner>"
-- ARGV[1]  owner     non-empty string
--
-- Returns an integer:
--   1  owner held a live lease; the lock key is deleted (the token counter
--      is kept) and the released token is published on the channel
--      "<lock key>:released" (costs next to nothing when nobody listens;
--      skipped when the user may not publish there)
--   0  the key is free or held by another owner; nothing changed
local v = redis.call('GET', KEYS[1])
if not v then
  return 0
end
local sep = string.find(v, ':', 1, true)
if not sep or string.sub(v, sep + 1) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
-- pcall: a user whose ACL denies the channel (Redis 7's default for new
-- users) still releases; waiters then poll.
redis.pcall('PUBLISH', KEYS[1] .. ':released', string.sub(v, 1, sep - 1))
return 1

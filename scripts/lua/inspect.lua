-- inspect.lua: report who holds a key.
--
-- KEYS[1]  lock key  <prefix>:{<key>}; a string "<token>:<owner>"
--
-- Returns an array:
--   {}                     the key is free (never locked, released or expired)
--   {owner, token, pttl}   a live lease: owner (bulk string), its fencing
--                          token (integer) and its remaining time in
--                          milliseconds by this server's clock (integer)
-- A lock key that dlock did not write is an error reply.
local v = redis.call('GET', KEYS[1])
if not v then
  return {}
end
local sep = string.find(v, ':', 1, true)
if not sep then
  return redis.error_reply('dlock: malformed lock value at ' .. KEYS[1])
end
return {string.sub(v, sep + 1), tonumber(string.sub(v, 1, sep - 1)), redis.call('PTTL', KEYS[1])}

-- acquire.lua: take a free lock for an owner and hand out a fencing token.
--
-- KEYS[1]  lock key     <prefix>:{<key>}; a string "<token>:<owner>" with a
--                       PX expiry, absent while the key is free
-- KEYS[2]  counter key  <prefix>:{<key>}:token; an integer with no expiry,
--                       never deleted by dlock, so tokens survive release
--                       and expiry
-- ARGV[1]  owner        non-empty string
-- ARGV[2]  ttl          lease length in milliseconds, an integer >= 1
--
-- Returns
--   an integer >= 1  the key was free (never locked, released or expired);
--                    it is now held by owner for ttl ms and the value is the
--                    new fencing token, strictly greater than every token
--                    handed out for the key before
--   a bulk string    the key is held by a live lease (owner's own included:
--                    a lock is not re-entrant); the value is the holder's
--                    owner ("" if the lock key was not written by dlock);
--                    nothing changed
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, ':', 1, true)
  if not sep then
    return ''
  end
  return string.sub(held, sep + 1)
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], string.format('%d:%s', token, ARGV[1]), 'PX', ARGV[2])
return token

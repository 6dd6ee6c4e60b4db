// Package lua holds the Redis Lua scripts of dlock's Redis driver, one file
// per operation, embedded at build time. Each script opens with a comment
// stating its KEYS, ARGV and return values.
//
// Key layout, for a prefix P and a lock key K:
//
//	P:{K}        the lock: a string "<token>:<owner>" with a PX expiry
//	P:{K}:token  the key's fencing-token counter: an integer without expiry
//
// and the pub/sub channel P:{K}:released, on which a release publishes.
//
// The braces make both keys share a Redis Cluster hash slot. Every script
// returns an integer, a bulk string or an array, never a nil-versus-OK
// status, so callers can tell each outcome apart by its type and value.
package lua

import _ "embed"

var (
	// Acquire takes a free key: KEYS lock, counter; ARGV owner, ttl in ms.
	// It returns the new fencing token (an integer), or the holder's owner
	// (a bulk string) when the key is held.
	//
	//go:embed acquire.lua
	Acquire string

	// Refresh extends an owner's live lease: KEYS lock; ARGV owner, ttl in ms.
	// It returns the lease's token, or 0 when owner holds no live lease.
	//
	//go:embed refresh.lua
	Refresh string

	// Release deletes an owner's live lease: KEYS lock; ARGV owner. It
	// returns 1 when it deleted the lease, and then publishes the released
	// token on the channel "<lock key>:released" for waiters; 0 when owner
	// held none.
	//
	//go:embed release.lua
	Release string

	// Inspect reports a key's holder: KEYS lock. It returns an empty array
	// for a free key, else {owner, token, remaining ms}.
	//
	//go:embed inspect.lua
	Inspect string

	// Fence, for Redlock, sets an owner's live lease to a given token and
	// raises the counter to it: KEYS lock, counter; ARGV owner, token. It
	// returns 1 when done, 0 when owner holds no live lease.
	//
	//go:embed fence.lua
	Fence string

	// Transfer passes an owner's live lease to another owner with a fresh
	// TTL and a new token from the counter: KEYS lock, counter; ARGV from,
	// to, ttl in ms. It returns the new token, or 0 when from holds no live
	// lease. It publishes nothing: the key is never free.
	//
	//go:embed transfer.lua
	Transfer string
)

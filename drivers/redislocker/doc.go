// Package redislocker is dlock's Redis storage: a [locker.Locker] over one
// Redis server, or over a Redlock group of independent servers, through
// redigo.
//
//	pool := &redis.Pool{DialContext: ..., MaxIdle: 16}
//	storage, err := redislocker.New(pool)             // single server
//	storage, err := redislocker.NewRedlock(pools)      // Redlock, 3 or 5 servers
//	storage, err := redislocker.Open("redis://:secret@host:6379/0") // own pool; Close it
//	f, err := locker.NewFactory(storage)
//
// # Storage
//
// A lock on key K lives at the Redis key "<prefix>:{K}" (the prefix defaults
// to [DefaultPrefix]) as the string "<token>:<owner>" with a PX expiry, and
// its fencing-token counter at "<prefix>:{K}:token", with no expiry. The
// braces put both in one Redis Cluster hash slot (except for keys beginning
// with "}", whose hash tag is empty). Every operation is one Lua script from
// scripts/lua per server (a Redlock acquisition whose nodes disagree on the
// token adds fence.lua), run with EVALSHA and falling back to EVAL when the
// server does not know it yet (after a restart or SCRIPT FLUSH). The counter keys
// stay after their locks are released: one small integer per key ever
// locked, which is what keeps fencing tokens increasing; delete them only
// when no lock of that key can ever be taken again.
//
// The release script publishes the released token on the channel
// "<prefix>:{K}:released"; with no subscriber this costs next to nothing.
//
// # Wake-on-release
//
// Locker implements [locker.Watcher]: a [locker.Lock] call waiting for a
// held key subscribes to its channel and makes its next attempt as soon as
// the key is released, instead of at its next poll. All keys watched
// through one Locker share one subscription connection per server, which
// the Locker dials itself on the first wait — with the pool's DialContext
// or Dial when the pool is a *redis.Pool (as with [Open] and
// [OpenRedlock]), or with the functions given to [Subscriber] — and keeps
// until [Locker.Close]; it takes no connection from the pool. On
// Redlock, any node's notification wakes the waiter, and a watch is in
// place once enough nodes confirmed it that every quorum includes one.
// Notifications are hints: an expiry sends none, and while the connection
// is down (it is redialled with backoff) or when the Locker cannot dial (a
// pool other than *redis.Pool without [Subscriber]), waiters simply poll at
// their interval. Close a Locker from [New] or [NewRedlock] too when done
// with it, to end its subscription connections.
//
// # Hand-off
//
// On one server, Locker implements [locker.Transferer]: transfer.lua moves
// a live lease from its owner to another in one step, with a fresh PX and
// a new token from the key's counter, and publishes nothing (the key is
// never free). A [locker.Factory] uses it to hand a lock its Unlock ends
// straight to a Lock call of its own that waits for the key. On Redlock,
// Transfer reports [errors.ErrUnsupported] (a transfer would need a quorum
// of its own), and Unlock releases as usual.
//
// # Contexts
//
// Acquire and Release on one server apply a context's deadline as the
// connection's read timeout, which costs nothing; a context that can be
// cancelled but has no deadline is watched by a goroutine per request
// (redigo's DoContext), which costs about as much as the request itself
// on a busy machine, so pass a context with a deadline, or none, on hot
// paths. Cancelling a context that has a deadline ends an Acquire or
// Release in flight when its reply arrives, or at the deadline if the
// server stops answering.
// Refresh, Inspect and every Redlock request end as soon as the context
// is done.
//
// # Guarantees on one server
//
// Redis's own expiry (PX, PEXPIRE) decides when a lease ends, by the
// server's clock, with millisecond resolution; a lease's validity is its
// TTL counted from when the request was sent. Acquire, refresh and release
// are atomic scripts, so for one key at most one owner holds a live lease at
// a time, release and refresh are owner-checked, and fencing tokens (from
// INCR on the counter) strictly increase across acquisitions, releases,
// expiries and takeovers. Tokens are exact up to 2^53 (Lua numbers).
//
// These guarantees hold as long as the server keeps its data. A server that
// restarts without persistence, or a failover to a replica that had not yet
// received the latest writes (Redis replication is asynchronous), can
// forget a live lease, so that a second owner gets the key, and can forget
// the counter, so that tokens start again from 1. Run the server with
// appendonly yes and appendfsync always if that matters, or use Redlock with
// delayed restarts (below), or a storage with synchronous durability.
//
// # Redlock
//
// [NewRedlock] and [OpenRedlock] implement the Redlock algorithm over N
// independent servers (not replicas of one another). An acquisition asks
// every node at once, taking the start time on Go's monotonic clock before
// the first request leaves; it succeeds when a quorum of N/2+1 nodes grant
// the key and time is left: Redlock's validity, TTL − elapsed − drift, must
// be positive, where drift is 0.01×TTL + 2ms by default ([Drift]). The
// returned Lease.Validity is counted from the call, as [locker.Lease]
// says: TTL − drift, of which the elapsed time is already gone when
// Acquire returns ([locker.Lock] counts from its send time, so it trusts
// the lease for exactly Redlock's validity). Requests still unanswered when
// the TTL has passed are abandoned, so a slow node cannot stretch a lease
// past its validity; a slow minority does not delay the answer. Without a quorum
// or with no validity left, the attempt is released on every node that may
// have granted it, and Acquire returns [locker.ErrNotObtained] — unless a
// majority of nodes failed with errors, which is a backend error. When
// contenders for a free key split the nodes so that none has a quorum (the
// classic Redlock split vote), the one holding the most nodes (ties: the
// lowest-numbered node) keeps its grants and asks again, for a few round
// trips, for the nodes the others release; so a race has a winner. It never
// waits for a key that another owner holds on a quorum. Refresh
// needs a quorum too (validity is counted the same way); Release deletes
// the owner's lease on every node it can reach; Inspect reports the lease a
// quorum of nodes agrees on.
//
// Fencing tokens under Redlock: each node keeps its own counter. The
// lease's token is the highest token the granting nodes handed out; when
// they disagree, a second round (fence.lua) writes that token into the lease
// on every granting node and raises their counters to it, and a quorum must
// confirm. Since any two quorums share a node, and that node granted the
// later lease only after the earlier one ended there, the later token is
// strictly greater — as long as no node loses its data. A node that
// restarts without persistence (or is flushed) forgets both its live leases
// and its counter: mutual exclusion can then be broken (another client can
// win a quorum including the amnesiac node while the first still believes
// it holds the lock) and tokens can go backwards. Keep a restarted node out
// of the group for longer than the longest TTL ("delayed restart"), or run
// the nodes with fsync'ed AOF, to avoid both.
//
// What Redlock cannot promise: its safety rests on timing assumptions —
// bounded network delay, bounded process pauses and clocks that run at
// about the same rate on every node (the drift allowance). Martin
// Kleppmann's critique, "How to do distributed locking" (2016), shows that a
// client paused (by garbage collection, say) after acquiring can keep
// believing it holds a lock that has expired, and that a node whose clock
// jumps forward expires leases early; he argues a lock for correctness needs
// fencing tokens checked by the protected resource and a consensus system
// to issue them. Salvatore Sanfilippo's reply, "Is Redlock safe?" (2016),
// holds that Redlock is safe under its stated assumptions when clocks are
// monotonic enough (no large steps, e.g. no ntpd jumps), that the client
// checks elapsed time after acquiring, and that any unique, comparable
// token can serve for check-and-set. dlock takes both seriously: it counts
// validity from before the request on the monotonic clock, hands out
// tokens that increase under the assumptions above, and says plainly that a
// pause longer than the validity, a clock step on a node, or a node losing
// its data voids the guarantee. Use a single Redis with durable persistence,
// or PostgreSQL, where that is not acceptable, and make the protected
// resource reject stale tokens.
//
// # Errors
//
// Contention is [locker.ErrNotObtained] (Acquire) or [locker.ErrNotHeld]
// (Refresh, Release). Anything else — refused connections, bad credentials,
// script errors, a Redlock majority failing — is a backend error prefixed
// "redislocker:", never ErrNotObtained. An Acquire cut short by its context
// matches both ErrNotObtained and the context's error. Bad arguments and bad
// options are reported before any I/O.
package redislocker

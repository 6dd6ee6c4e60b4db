package locker

import (
	"context"
	"time"
)

// Locker is the storage seam: the one interface every dlock driver implements.
// Each method is atomic per key on the storage side and makes a single attempt;
// retries, waiting, owner generation, lease tracking and argument validation
// live in this package, once, not in drivers.
//
// Drivers may assume that key passes [ValidateKey], that owner is non-empty and
// that ttl is at least [MinTTL]; they should still reject bad input with an
// error rather than panic.
//
// Expiry decisions are taken by the storage's clock, never the client's.
type Locker interface {
	// Acquire makes one attempt to take key for owner for ttl. It succeeds
	// only if key is free or its lease has expired; a takeover starts a fresh
	// TTL and hands out a new fencing token, strictly greater than every token
	// handed out for key before.
	//
	// Acquire returns ErrNotObtained (possibly wrapped) when another owner
	// holds a live lease or a concurrent acquirer won the race, and a wrapped
	// backend error for anything else.
	Acquire(ctx context.Context, key, owner string, ttl time.Duration) (Lease, error)

	// Refresh extends owner's live lease on key to ttl from now, keeping its
	// token. It returns ErrNotHeld if owner holds no live lease on key.
	Refresh(ctx context.Context, key, owner string, ttl time.Duration) (Lease, error)

	// Release frees key if owner holds it. It returns ErrNotHeld, changing
	// nothing, if owner is not the current holder of key.
	Release(ctx context.Context, key, owner string) error

	// Inspect reports who holds key. A free key (never locked, released or
	// expired) yields an Info whose Held method reports false and a nil error.
	Inspect(ctx context.Context, key string) (Info, error)
}

// Lease is what the storage granted to an Acquire or Refresh.
type Lease struct {
	// Token is the fencing token of this acquisition. Refresh keeps it.
	Token int64
	// Validity is how long the caller may trust the lease, counted from the
	// moment the request was sent. Single-node drivers return the requested
	// TTL; Redlock subtracts the time it took to reach a quorum and the clock
	// drift allowance. Zero or negative means the lease must not be trusted.
	Validity time.Duration
}

// Info describes the holder of a key, as returned by [Locker.Inspect].
type Info struct {
	Key   string
	Owner string        // empty when the key is free
	Token int64         // fencing token of the live lease; 0 when free
	TTL   time.Duration // remaining lease time by the storage's clock
}

// Held reports whether the key has a live holder.
func (i Info) Held() bool { return i.Owner != "" }

// Purger is implemented by drivers whose storage keeps expired records (rows,
// documents) until they are deleted. Purge deletes the records of keys whose
// lease expired more than olderThan ago and returns how many it deleted.
// Purging never resets fencing tokens.
type Purger interface {
	Purge(ctx context.Context, olderThan time.Duration) (int64, error)
}

// Watcher is implemented by drivers that can tell a waiting Lock call that a
// key was released (Redis pub/sub, PostgreSQL LISTEN/NOTIFY), so that the
// lock changes hands as soon as it is free instead of at the next poll.
//
// Watch subscribes to releases of key until stop is called; it returns once
// the subscription is in place. The channel receives a value (sent without
// blocking, so a buffer of one is enough) whenever key may have become free.
// Notifications are hints: a waiter still makes an attempt that may fail,
// and still polls at its interval, so a lost notification or an expiry that
// sends none costs latency, never correctness.
type Watcher interface {
	Watch(ctx context.Context, key string) (released <-chan struct{}, stop func(), err error)
}

// Transferer is implemented by drivers that can pass a live lease from one
// owner straight to another in one atomic step. A [Factory] uses it to hand
// a released lock to a Lock call of its own that is waiting for the same key
// (see [Handoff]): one round trip instead of a release, a wake-up and an
// acquire, and the key is never free in between.
//
// Transfer gives key, held by from, to owner to for ttl: a fresh TTL from
// now by the storage's clock and a new fencing token, strictly greater than
// every token handed out for key before, exactly as if from had released and
// to had acquired. Its Lease's Validity is counted from the moment the
// request was sent, as for Acquire. Release notifications are not sent: the
// key is never free.
//
// Transfer returns ErrNotHeld (possibly wrapped), changing nothing, if from
// holds no live lease on key; an error matching [errors.ErrUnsupported],
// before any I/O, if this Locker cannot transfer (the caller then releases
// and lets the next owner acquire); and a wrapped backend error for
// anything else, after which key may be held by from, by to, or by no one.
type Transferer interface {
	Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (Lease, error)
}

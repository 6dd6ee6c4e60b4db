// Package locker is dlock's public API: one lock abstraction over any storage
// that implements [Locker].
//
// A [Factory] wraps a Locker (PostgreSQL, Redis, MongoDB or the in-process
// reference driver) and hands out [Lock] handles, one per critical section:
//
//	f, err := locker.NewFactory(storage)
//	if err != nil { ... }
//	l := f.NewLock("billing-report")
//	if err := l.Lock(ctx, locker.TTL(30*time.Second)); err != nil {
//		if errors.Is(err, locker.ErrNotObtained) { ... } // someone else has it
//		return err
//	}
//	defer l.Unlock(context.Background())
//
// # Guarantees
//
// For one key, at most one owner holds a live lease at any instant of the
// storage's clock. A lease that is not refreshed ends after its TTL, so a crashed
// holder never blocks the key for longer than that. Unlock and Refresh are
// owner-checked: a holder whose lease ran out and was taken over gets
// [ErrNotHeld] and changes nothing. Every acquisition carries a fencing token
// that strictly increases per key; pass it to the resource you protect so that
// a stale holder's late write can be refused.
//
// A client trusts its lease for TTL measured on Go's monotonic clock from the
// moment it sent the acquire request, less whatever the driver reports as
// clock drift. [Lock.Done] and [Lock.Context] report when that trust ends,
// whether by Unlock, by a failed refresh, or by simple expiry.
//
// # Waiting and hand-off
//
// A Lock call that finds the key held waits and tries again, by default
// three more times a second apart ([Retries], [Interval], [WithBackoff]).
// Drivers that are a [Watcher] wake it as soon as the key is released.
// Drivers that are a [Transferer] let Unlock hand the lock straight to a
// waiting Lock call of the same Factory, in one atomic storage operation
// with a new fencing token, so goroutines of one process take turns in
// one round trip each, in the order they started waiting; while a lock of
// the Factory holds the key, its other Lock calls for that key wait without
// asking the storage. After [Handoff] hand-offs in a row (16 by default)
// the lock is released to the storage, so that other processes get a turn.
//
// # Errors
//
// Errors are matched with [errors.Is]: [ErrNotObtained] when the lock is held
// elsewhere (including a cancelled wait, which also matches the context's
// error), [ErrNotHeld] when the caller does not hold the lock it releases or
// refreshes, [ErrAlreadyHeld] when a handle that holds its lock is locked again,
// and [ErrInvalidKey] / [ErrInvalidOption] for bad input, reported before any
// I/O. Any other error is the storage's, wrapped with the driver's name.
package locker

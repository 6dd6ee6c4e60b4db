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
// # Errors
//
// Errors are matched with [errors.Is]: [ErrNotObtained] when the lock is held
// elsewhere (including a cancelled wait, which also matches the context's
// error), [ErrNotHeld] when the caller does not hold the lock it releases or
// refreshes, [ErrAlreadyHeld] when a handle that holds its lock is locked again,
// and [ErrInvalidKey] / [ErrInvalidOption] for bad input, reported before any
// I/O. Any other error is the storage's, wrapped with the driver's name.
package locker

// Package mongolocker stores dlock's locks in MongoDB through the official
// Go driver, go.mongodb.org/mongo-driver/v2.
//
//	ml, err := mongolocker.Open(ctx, "mongodb://db.example:27017/", "app")
//	if err != nil { ... }
//	defer ml.Close(ctx)
//	if err := ml.EnsureIndexes(ctx); err != nil { ... }
//	f, err := locker.NewFactory(ml)
//
// [New] takes the application's own *mongo.Collection instead and uses it as
// is; [Open] creates a client of its own and uses the collection "locks".
//
// # Documents
//
// Each lock is one document whose _id is the key:
//
//	{_id: key, owner: "…", expiresAt: ISODate(…), ttlMs: 10000, token: 42}
//
// and each key ever locked has a small token counter document,
// {_id: key, seq: 42}, in a sibling collection named after the first with
// ".tokens" appended ("locks.tokens"), as GridFS names its collections.
//
// # Guarantees
//
// Mutual exclusion rests on the unique index on _id that every collection
// has. Acquire is one upsert whose filter matches only an expired lock
// document, {_id: key, expiresAt: {$lte: now}}: when the key is free the
// upsert inserts the document; when its lease has expired it overwrites it
// (MongoDB updates one document atomically); when a lease is live the filter
// misses, the upsert tries to insert a second document with the same _id and
// the server refuses it with a duplicate key error (E11000), which Acquire
// reports as [locker.ErrNotObtained]. The filter is not a pure equality on
// _id, so the server does not retry such an upsert on its own. Every other
// error is a wrapped backend error, never ErrNotObtained.
//
// Release deletes the owner's document (findOneAndDelete by _id and owner),
// even an expired one, but reports [locker.ErrNotHeld] unless the lease was
// still live; Refresh extends the owner's live lease. Neither ever touches
// another owner's document.
//
// Fencing tokens come from the key's counter document, incremented with $inc
// only after the acquiring upsert succeeded, then recorded in the lock
// document (if the lease was lost in between, Acquire reports
// ErrNotObtained). Because only the holder draws, each token is above every
// token an earlier holder was granted. Counter documents are never deleted,
// so tokens keep increasing across release, expiry, takeover and
// [Locker.Purge]; the price is one small document per key ever locked.
// Acquire therefore makes three requests and Release one.
//
// Write and read concerns are the collection's. The guarantees assume
// MongoDB's defaults: writes acknowledged by a majority (w: "majority") and
// reads from the primary, so that a lock granted survives a failover.
//
// # The server's clock
//
// No expiry is decided by the client's wall clock. The driver reads the
// server's clock with the hello command (its localTime field, whole
// milliseconds), notes Go's monotonic clock when the request left and when
// the reply came back, and from then on knows the server's time within an
// interval [lo, hi]:
//
//	lo = localTime + elapsed − drift − 1ms
//	hi = localTime + elapsed + round trip + 1ms + drift
//
// where elapsed is the monotonic time since the reply, and drift is 1000 ppm
// of it (twice the fastest rate NTP slews a clock). The 1ms in hi is
// localTime's truncation to the millisecond; the 1ms in lo allows for a
// server that rounds instead. A Locker re-reads the clock every 5 seconds by
// default ([ClockSync]) and keeps whichever sample gives the narrower
// interval, so the interval's width is one round trip plus 2ms plus up to
// 10ms of drift allowance (2ms per second of the sample's age).
//
// The interval is used conservatively: a lease is written to end at
// hi + ttl, and a lease counts as expired only when its end is at or before
// lo. A lease can thus outlive its TTL by up to the width of the two
// clients' intervals, but is never taken over early. Inspect reports the
// remaining time from the middle of the interval, capped at the lease's TTL.
//
// The bound assumes the server's clock is not stepped (set by hand, or
// stepped by NTP) while a sample is in use; a step forward ends leases early
// by its size, a step back lengthens them, until the next sample. MongoDB's
// $$NOW would avoid the estimate, but MongoDB-compatible servers such as
// FerretDB lack it, pipeline updates and $expr, and the estimate works on
// both. On a sharded cluster, clients must talk to routers whose clocks agree
// within the bound.
//
// # FerretDB and other compatible servers
//
// FerretDB 1.x (tested: v1.24.2 with its SQLite backend) speaks the MongoDB
// wire protocol but runs findAndModify, update and delete as a read followed
// by a write by _id without a re-check. Inserts are still protected by the
// unique _id, so locks that are released before the next acquisition are
// mutually exclusive. But when several clients take over one expired lease at
// the same moment, several can win, and a Release or Refresh racing with a
// takeover can act on the new owner's document. [Locker.ServerIsFerretDB]
// detects such a server through buildInfo. Use MongoDB where expired leases
// are taken over under contention.
//
// # Cleanup
//
// [Locker.Purge] deletes lock documents whose lease expired more than a
// given time ago, with the index that [Locker.EnsureIndexes] creates on
// expiresAt; it keeps the token counters. TTL indexes are not used: they
// would delete documents on the server's own schedule and are not available
// on FerretDB.
package mongolocker

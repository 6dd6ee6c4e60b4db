package mongolocker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/dlock-go/dlock/locker"
)

var (
	_ locker.Locker = (*Locker)(nil)
	_ locker.Purger = (*Locker)(nil)
)

const (
	// DefaultCollection is the collection Open uses unless [Collection] says
	// otherwise.
	DefaultCollection = "locks"
	// DefaultClockSync is how often a Locker re-reads the server's clock
	// unless [ClockSync] says otherwise.
	DefaultClockSync = 5 * time.Second
)

// Field names of a lock document.
const (
	fOwner   = "owner"     // holder; absent when released
	fExpires = "expiresAt" // end of the lease by the server's clock
	fTTL     = "ttlMs"     // the lease's length, for Inspect
	fToken   = "token"     // fencing token, set once the counter is drawn
	fSeq     = "seq"       // last token drawn, in a key's counter document
)

// TokensSuffix is appended to the lock collection's name to name the
// collection of token counters: "locks" keeps its counters in "locks.tokens".
const TokensSuffix = ".tokens"

// A Locker stores locks in one MongoDB collection. It is safe for concurrent
// use by many goroutines; create it with [New] or [Open].
type Locker struct {
	coll   *mongo.Collection
	tokens *mongo.Collection // <coll>.tokens: one counter document per key
	client *mongo.Client     // set by Open: closed by Close
	clock  *serverClock

	ferretMu    sync.Mutex
	ferretKnown bool
	ferret      bool
}

// An Option configures [New] or [Open].
type Option func(*config)

type config struct {
	collection string
	clockSync  time.Duration
	err        error
}

func (c *config) fail(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("mongolocker: %w: "+format, append([]any{locker.ErrInvalidOption}, args...)...)
	}
}

// Collection sets the name of the collection [Open] stores locks in
// (default "locks"). It must be a valid MongoDB collection name: not empty,
// without '$' or NUL, and not starting with "system." or a dot. [New] takes
// the collection itself and rejects this option.
func Collection(name string) Option {
	return func(c *config) {
		if err := validCollection(name); err != nil {
			c.fail("%v", err)
			return
		}
		c.collection = name
	}
}

// ClockSync sets how often the Locker re-reads the server's clock with the
// hello command (default 5s). Shorter periods keep the error bound of the
// clock estimate small (it grows by 2 ms per second of a sample's age); the
// period must be between 100ms and one minute.
func ClockSync(d time.Duration) Option {
	return func(c *config) {
		if d < 100*time.Millisecond || d > maxSampleAge {
			c.fail("clock sync period %v is not between 100ms and %v", d, maxSampleAge)
			return
		}
		c.clockSync = d
	}
}

func buildConfig(opts []Option) config {
	c := config{collection: DefaultCollection, clockSync: DefaultClockSync}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	return c
}

func validCollection(name string) error {
	switch {
	case name == "":
		return errors.New("empty collection name")
	case strings.ContainsAny(name, "$\x00"):
		return fmt.Errorf("collection name %q contains '$' or NUL", name)
	case strings.HasPrefix(name, "system.") || strings.HasPrefix(name, ".") || strings.HasSuffix(name, "."):
		return fmt.Errorf("collection name %q is reserved or starts or ends with a dot", name)
	case len(name) > 200-len(TokensSuffix):
		return fmt.Errorf("collection name of %d bytes is too long", len(name))
	}
	return nil
}

func validDatabase(name string) error {
	switch {
	case name == "":
		return errors.New("empty database name")
	case strings.ContainsAny(name, "/\\. \"$*<>:|?\x00"):
		return fmt.Errorf("database name %q contains a character MongoDB forbids", name)
	case len(name) > 63:
		return fmt.Errorf("database name of %d bytes is too long", len(name))
	}
	return nil
}

// New returns a Locker that stores locks in coll, the caller's collection,
// used as is with its own read and write concerns (MongoDB's defaults,
// primary reads and majority writes, are what the guarantees assume), and
// token counters in the collection of the same database named coll's name
// plus [TokensSuffix], with the database's concerns. It
// does no I/O; call [Locker.EnsureIndexes] once to create the index Purge
// uses. New returns an error matching [locker.ErrInvalidOption] for a nil
// collection or a bad option, including [Collection], which only Open takes.
func New(coll *mongo.Collection, opts ...Option) (*Locker, error) {
	if coll == nil {
		return nil, fmt.Errorf("mongolocker: %w: nil collection", locker.ErrInvalidOption)
	}
	c := buildConfig(opts)
	if c.err != nil {
		return nil, c.err
	}
	if c.collection != DefaultCollection {
		return nil, fmt.Errorf("mongolocker: %w: the Collection option applies to Open; New takes the collection itself", locker.ErrInvalidOption)
	}
	if err := validCollection(coll.Name()); err != nil {
		return nil, fmt.Errorf("mongolocker: %w: %v", locker.ErrInvalidOption, err)
	}
	return newLocker(coll, c), nil
}

func newLocker(coll *mongo.Collection, c config) *Locker {
	return &Locker{
		coll:   coll,
		tokens: coll.Database().Collection(coll.Name() + TokensSuffix),
		clock:  &serverClock{db: coll.Database(), period: c.clockSync},
	}
}

// Open connects to the MongoDB server at url (a mongodb:// or
// mongodb+srv:// connection string), checks that it answers a ping within
// ctx, and returns a Locker on the collection "locks" (see [Collection]) of
// database. The Locker owns its client: call [Locker.Close] when done.
//
// Open returns an error matching [locker.ErrInvalidOption] for a malformed
// URL, a bad database name or a bad option, and a wrapped backend error when
// the server does not answer.
func Open(ctx context.Context, url, database string, opts ...Option) (*Locker, error) {
	c := buildConfig(opts)
	if c.err != nil {
		return nil, c.err
	}
	if !strings.HasPrefix(url, "mongodb://") && !strings.HasPrefix(url, "mongodb+srv://") {
		return nil, fmt.Errorf("mongolocker: %w: url must start with mongodb:// or mongodb+srv://", locker.ErrInvalidOption)
	}
	if err := validDatabase(database); err != nil {
		return nil, fmt.Errorf("mongolocker: %w: %v", locker.ErrInvalidOption, err)
	}
	client, err := mongo.Connect(options.Client().ApplyURI(url))
	if err != nil {
		return nil, fmt.Errorf("mongolocker: open: %w: %w", locker.ErrInvalidOption, err)
	}
	if err := client.Ping(ctx, nil); err != nil {
		_ = client.Disconnect(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("mongolocker: open: %w", err)
	}
	l := newLocker(client.Database(database).Collection(c.collection), c)
	l.client = client
	return l, nil
}

// Close disconnects the client that [Open] created, waiting within ctx for
// operations in flight. For a Locker made by [New] it does nothing: the
// caller's client is the caller's to close.
func (l *Locker) Close(ctx context.Context) error {
	if l.client == nil {
		return nil
	}
	if err := l.client.Disconnect(ctx); err != nil && !errors.Is(err, mongo.ErrClientDisconnected) {
		return fmt.Errorf("mongolocker: close: %w", err)
	}
	return nil
}

// Collection returns the collection the Locker stores locks in.
func (l *Locker) Collection() *mongo.Collection { return l.coll }

// EnsureIndexes creates the index on expiresAt that [Locker.Purge] uses. It
// is idempotent: calling it again, from any number of clients, changes
// nothing. The unique index on _id, which mutual exclusion rests on, exists
// in every collection already. It returns a wrapped backend error on failure.
func (l *Locker) EnsureIndexes(ctx context.Context) error {
	_, err := l.coll.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: fExpires, Value: 1}},
		Options: options.Index().SetName("dlock_expiresAt"),
	})
	if err != nil {
		return fmt.Errorf("mongolocker: ensure indexes: %w", err)
	}
	return nil
}

// ServerIsFerretDB reports whether the server is FerretDB (its buildInfo
// reply carries a ferretdbVersion field). FerretDB 1.x runs updates as a
// read followed by a write without a re-check, so it cannot guarantee
// mutual exclusion when several clients take over one expired lease at
// once; see the package documentation. The answer is cached after the
// first successful call; errors are wrapped backend errors.
func (l *Locker) ServerIsFerretDB(ctx context.Context) (bool, error) {
	l.ferretMu.Lock()
	defer l.ferretMu.Unlock()
	if l.ferretKnown {
		return l.ferret, nil
	}
	var reply bson.M
	err := l.coll.Database().RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&reply)
	if err != nil {
		return false, fmt.Errorf("mongolocker: buildInfo: %w", err)
	}
	_, l.ferret = reply["ferretdbVersion"]
	l.ferretKnown = true
	return l.ferret, nil
}

// lockDoc is a lock document as the driver reads it.
type lockDoc struct {
	Owner     string        `bson:"owner"`
	ExpiresAt bson.DateTime `bson:"expiresAt"`
	TTLMs     int64         `bson:"ttlMs"`
	Token     int64         `bson:"token"`
}

// ceilMs and floorMs turn a time into a BSON date, rounding up or down to
// the millisecond (BSON dates have no finer precision).
func ceilMs(t time.Time) bson.DateTime {
	ms := t.UnixMilli()
	if t.Sub(time.UnixMilli(ms)) > 0 {
		ms++
	}
	return bson.DateTime(ms)
}

func floorMs(t time.Time) bson.DateTime { return bson.DateTime(t.UnixMilli()) }

func ttlMs(ttl time.Duration) int64 {
	return int64((ttl + time.Millisecond - 1) / time.Millisecond)
}

// Acquire takes key for owner for ttl if the key is free or its lease has
// expired by the server's clock. It makes three requests:
//
//  1. The acquisition, one upsert whose filter matches only an expired
//     document: {_id: key, expiresAt: {$lte: <server now, low bound>}} with
//     {$set: {owner, expiresAt: <server now, high bound> + ttl, ttlMs}}.
//     A live lease makes the filter miss, so the upsert tries to insert a
//     second document with the same _id and fails on the unique index: that
//     duplicate key error, and only that, is reported as
//     [locker.ErrNotObtained] (wrapping the server's error).
//  2. The fencing token: $inc of the key's counter document, drawn only now
//     that the lock is held, so it is above every token drawn by earlier
//     holders. Counter documents are never deleted.
//  3. The token is recorded in the lock document, if owner still holds it;
//     if the lease expired and was taken over in between, the result is
//     ErrNotObtained.
//
// Any other failure is a wrapped backend error; a lease taken in step 1 is
// then given back.
func (l *Locker) Acquire(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, fmt.Errorf("mongolocker: acquire: %w", err)
	}
	lo, hi, err := l.clock.bounds(ctx)
	if err != nil {
		return locker.Lease{}, fmt.Errorf("mongolocker: acquire: %w", err)
	}
	_, err = l.coll.UpdateOne(ctx,
		bson.D{
			{Key: "_id", Value: key},
			{Key: fExpires, Value: bson.D{{Key: "$lte", Value: floorMs(lo)}}},
		},
		bson.D{
			{Key: "$set", Value: bson.D{
				{Key: fOwner, Value: owner},
				{Key: fExpires, Value: ceilMs(hi.Add(ttl))},
				{Key: fTTL, Value: ttlMs(ttl)},
			}},
			{Key: "$unset", Value: bson.D{{Key: fToken, Value: ""}}},
		},
		options.UpdateOne().SetUpsert(true))
	switch {
	case mongo.IsDuplicateKeyError(err):
		return locker.Lease{}, fmt.Errorf("mongolocker: acquire %q: %w: %w", key, locker.ErrNotObtained, err)
	case err != nil:
		return locker.Lease{}, fmt.Errorf("mongolocker: acquire: %w", err)
	}
	token, err := l.recordToken(ctx, key, owner)
	if err != nil {
		if !errors.Is(err, locker.ErrNotObtained) {
			// The lease cannot be vouched for: give it back.
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			_, _ = l.coll.DeleteOne(rctx, bson.D{{Key: "_id", Value: key}, {Key: fOwner, Value: owner}})
			cancel()
		}
		return locker.Lease{}, fmt.Errorf("mongolocker: acquire %q: %w", key, err)
	}
	return locker.Lease{Token: token, Validity: ttl}, nil
}

// recordToken draws the next token of key from its counter document and
// records it in owner's lock document.
func (l *Locker) recordToken(ctx context.Context, key, owner string) (int64, error) {
	var c struct {
		Seq int64 `bson:"seq"`
	}
	err := l.tokens.FindOneAndUpdate(ctx,
		bson.D{{Key: "_id", Value: key}},
		bson.D{{Key: "$inc", Value: bson.D{{Key: fSeq, Value: int64(1)}}}},
		options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After)).Decode(&c)
	if err != nil {
		return 0, fmt.Errorf("draw token: %w", err)
	}
	res, err := l.coll.UpdateOne(ctx,
		bson.D{{Key: "_id", Value: key}, {Key: fOwner, Value: owner}},
		bson.D{{Key: "$set", Value: bson.D{{Key: fToken, Value: c.Seq}}}})
	switch {
	case err != nil:
		return 0, fmt.Errorf("record token: %w", err)
	case res.MatchedCount == 0:
		return 0, fmt.Errorf("%w: the lease expired and was taken over before its token was recorded", locker.ErrNotObtained)
	}
	return c.Seq, nil
}

// Refresh extends owner's live lease on key to ttl from now by the server's
// clock, keeping its token. It returns an error matching [locker.ErrNotHeld]
// if owner holds no lease on key that is live by the server's clock, and a
// wrapped backend error on failure.
func (l *Locker) Refresh(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, fmt.Errorf("mongolocker: refresh: %w", err)
	}
	lo, hi, err := l.clock.bounds(ctx)
	if err != nil {
		return locker.Lease{}, fmt.Errorf("mongolocker: refresh: %w", err)
	}
	var doc lockDoc
	err = l.coll.FindOneAndUpdate(ctx,
		bson.D{
			{Key: "_id", Value: key},
			{Key: fOwner, Value: owner},
			{Key: fExpires, Value: bson.D{{Key: "$gt", Value: floorMs(lo)}}},
		},
		bson.D{{Key: "$set", Value: bson.D{
			{Key: fExpires, Value: ceilMs(hi.Add(ttl))},
			{Key: fTTL, Value: ttlMs(ttl)},
		}}},
		options.FindOneAndUpdate().
			SetReturnDocument(options.After)).Decode(&doc)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return locker.Lease{}, fmt.Errorf("mongolocker: refresh %q: %w", key, locker.ErrNotHeld)
	case err != nil:
		return locker.Lease{}, fmt.Errorf("mongolocker: refresh: %w", err)
	}
	return locker.Lease{Token: doc.Token, Validity: ttl}, nil
}

// Release frees key if owner holds it, deleting its lock document (the
// key's token counter stays). It returns an error matching
// [locker.ErrNotHeld] if owner's lease had already expired by the server's
// clock (its document is deleted all the same) or owner does not hold key
// (nothing is changed), and a wrapped backend error on failure.
func (l *Locker) Release(ctx context.Context, key, owner string) error {
	if err := locker.CheckOwner(key, owner); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("mongolocker: release: %w", err)
	}
	lo, _, err := l.clock.bounds(ctx)
	if err != nil {
		return fmt.Errorf("mongolocker: release: %w", err)
	}
	var doc lockDoc
	err = l.coll.FindOneAndDelete(ctx, bson.D{{Key: "_id", Value: key}, {Key: fOwner, Value: owner}}).Decode(&doc)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return fmt.Errorf("mongolocker: release %q: %w", key, locker.ErrNotHeld)
	case err != nil:
		return fmt.Errorf("mongolocker: release: %w", err)
	case doc.ExpiresAt <= floorMs(lo):
		return fmt.Errorf("mongolocker: release %q: lease had expired: %w", key, locker.ErrNotHeld)
	}
	return nil
}

// Inspect reports who holds key: for a lease live by the server's clock, the
// owner, fencing token and remaining TTL (at most the lease's TTL, rounded to
// the millisecond); for a free, released or expired key, Info{Key: key}. It
// returns a wrapped backend error on failure.
func (l *Locker) Inspect(ctx context.Context, key string) (locker.Info, error) {
	if err := locker.ValidateKey(key); err != nil {
		return locker.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Info{}, fmt.Errorf("mongolocker: inspect: %w", err)
	}
	lo, hi, err := l.clock.bounds(ctx)
	if err != nil {
		return locker.Info{}, fmt.Errorf("mongolocker: inspect: %w", err)
	}
	var doc lockDoc
	err = l.coll.FindOne(ctx, bson.D{{Key: "_id", Value: key}}).Decode(&doc)
	switch {
	case errors.Is(err, mongo.ErrNoDocuments):
		return locker.Info{Key: key}, nil
	case err != nil:
		return locker.Info{}, fmt.Errorf("mongolocker: inspect: %w", err)
	}
	if doc.ExpiresAt <= floorMs(lo) {
		return locker.Info{Key: key}, nil
	}
	mid := lo.Add(hi.Sub(lo) / 2)
	left := doc.ExpiresAt.Time().Sub(mid).Round(time.Millisecond)
	if max := time.Duration(doc.TTLMs) * time.Millisecond; doc.TTLMs > 0 && left > max {
		left = max
	}
	if left < time.Millisecond {
		left = time.Millisecond
	}
	return locker.Info{Key: key, Owner: doc.Owner, Token: doc.Token, TTL: left}, nil
}

// Purge deletes the lock documents whose lease expired more than olderThan
// ago by the server's clock, in one deleteMany, and returns how many it
// deleted. Token counters are kept, so purging never resets fencing tokens.
// A negative olderThan is an error matching [locker.ErrInvalidOption];
// failures are wrapped backend errors.
func (l *Locker) Purge(ctx context.Context, olderThan time.Duration) (int64, error) {
	if olderThan < 0 {
		return 0, fmt.Errorf("mongolocker: purge: %w: olderThan %v is negative", locker.ErrInvalidOption, olderThan)
	}
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("mongolocker: purge: %w", err)
	}
	lo, _, err := l.clock.bounds(ctx)
	if err != nil {
		return 0, fmt.Errorf("mongolocker: purge: %w", err)
	}
	res, err := l.coll.DeleteMany(ctx, bson.D{
		{Key: fExpires, Value: bson.D{{Key: "$lte", Value: floorMs(lo.Add(-olderThan))}}},
	})
	if err != nil {
		return 0, fmt.Errorf("mongolocker: purge: %w", err)
	}
	return res.DeletedCount, nil
}

package mongolocker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/drivers/mongolocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.MongoCleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// ferretReason is what the suite reports for the one case FerretDB cannot
// prove.
const ferretReason = "the server is FerretDB (detected through buildInfo): FerretDB 1.x runs " +
	"findAndModify and update as a read followed by a write by _id without a re-check, so " +
	"several clients can take over one expired lease at once. On MongoDB the upsert is atomic " +
	"per document and this case runs."

// connect returns a client of its own for the test server, disconnected
// when the test ends.
func connect(t testing.TB, url string) *mongo.Client {
	t.Helper()
	c, err := mongo.Connect(options.Client().ApplyURI(url))
	if err != nil {
		t.Fatalf("mongo.Connect: %v", err)
	}
	t.Cleanup(func() { _ = c.Disconnect(context.Background()) })
	return c
}

var indexed sync.Map // collection name -> *sync.Once

// newLocker returns a Locker over a client of its own on collection name of
// the test database, with its indexes ensured once per process.
func newLocker(t testing.TB, name string) *mongolocker.Locker {
	t.Helper()
	url, db := testutil.MongoDatabase(t)
	l, err := mongolocker.New(connect(t, url).Database(db).Collection(name))
	if err != nil {
		t.Fatalf("mongolocker.New: %v", err)
	}
	v, _ := indexed.LoadOrStore(name, &sync.Once{})
	var ierr error
	v.(*sync.Once).Do(func() { ierr = l.EnsureIndexes(testCtx(t)) })
	if ierr != nil {
		t.Fatalf("EnsureIndexes: %v", ierr)
	}
	return l
}

// brokenLocker returns a Locker whose client points at a closed port, with
// a short server-selection timeout so each call fails quickly.
func brokenLocker(t testing.TB) *mongolocker.Locker {
	t.Helper()
	url := fmt.Sprintf("mongodb://127.0.0.1:%d/?serverSelectionTimeoutMS=300&connectTimeoutMS=300", testutil.FreePort(t))
	l, err := mongolocker.New(connect(t, url).Database("dlock_broken").Collection("locks"))
	if err != nil {
		t.Fatalf("mongolocker.New: %v", err)
	}
	return l
}

func driver(t *testing.T) testutil.Driver {
	d := testutil.Driver{
		Name:         "mongolocker",
		New:          func(t testing.TB) locker.Locker { return newLocker(t, mongolocker.DefaultCollection) },
		NewNamespace: func(t testing.TB, ns string) locker.Locker { return newLocker(t, "ns_"+ns) },
		Broken:       func(t testing.TB) locker.Locker { return brokenLocker(t) },
	}
	ferret, err := newLocker(t, mongolocker.DefaultCollection).ServerIsFerretDB(testCtx(t))
	if err != nil {
		t.Fatalf("ServerIsFerretDB: %v", err)
	}
	if ferret {
		d.TakeoverRaceUnsafe = ferretReason
	}
	return d
}

func TestConformance(t *testing.T) {
	testutil.RunConformance(t, driver(t))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// rawColl returns the test database's collection name through a client of
// its own, for looking at documents behind the driver's back.
func rawColl(t testing.TB, name string) *mongo.Collection {
	t.Helper()
	url, db := testutil.MongoDatabase(t)
	return connect(t, url).Database(db).Collection(name)
}

// waitFree polls until the server reports key free.
func waitFree(t testing.TB, l *mongolocker.Locker, key string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := l.Inspect(testCtx(t), key)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		if !info.Held() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still held after 10s", key)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A live document makes the upsert's insert fail on the unique _id: that is
// ErrNotObtained, and it still carries the server's duplicate key error.
func TestDuplicateKeyIsNotObtained(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	key := testutil.Key(t)
	a, b := newLocker(t, mongolocker.DefaultCollection), newLocker(t, mongolocker.DefaultCollection)
	if _, err := a.Acquire(ctx, key, "a", 10*time.Second); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	_, err := b.Acquire(ctx, key, "b", 10*time.Second)
	if !errors.Is(err, locker.ErrNotObtained) || !mongo.IsDuplicateKeyError(err) {
		t.Fatalf("Acquire of a live lease = %v, want ErrNotObtained wrapping E11000", err)
	}

	// A document written by someone else entirely, live by its expiresAt.
	key2 := testutil.Key(t)
	_, err = rawColl(t, mongolocker.DefaultCollection).InsertOne(ctx, bson.D{
		{Key: "_id", Value: key2}, {Key: "owner", Value: "raw"},
		{Key: "expiresAt", Value: time.Now().Add(time.Hour)}, {Key: "token", Value: int64(1)},
	})
	if err != nil {
		t.Fatalf("InsertOne: %v", err)
	}
	if _, err := b.Acquire(ctx, key2, "b", time.Second); !errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("Acquire of a raw live document = %v, want ErrNotObtained", err)
	}
	if info, err := b.Inspect(ctx, key2); err != nil || info.Owner != "raw" {
		t.Fatalf("Inspect = %+v, %v; want owner raw", info, err)
	}
}

// A backend failure is a wrapped error, never ErrNotObtained or ErrNotHeld.
func TestBackendErrorIsNotContention(t *testing.T) {
	t.Parallel()
	l := brokenLocker(t)
	ctx := testCtx(t)
	_, err := l.Acquire(ctx, "k", "o", time.Second)
	if err == nil || errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("Acquire on a closed port = %v", err)
	}
	if err := l.Release(ctx, "k", "o"); err == nil || errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Release on a closed port = %v", err)
	}
	if _, err := l.Refresh(ctx, "k", "o", time.Second); err == nil || errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Refresh on a closed port = %v", err)
	}
	if _, err := l.Purge(ctx, 0); err == nil {
		t.Fatal("Purge on a closed port succeeded")
	}
	if _, err := l.ServerIsFerretDB(ctx); err == nil {
		t.Fatal("ServerIsFerretDB on a closed port succeeded")
	}
}

// Fencing tokens survive release and Purge: they come from a counter
// document per key that nothing deletes.
func TestTokensSurvivePurge(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const coll = "purge"
	key := testutil.Key(t)
	a := newLocker(t, coll)
	raw := rawColl(t, coll)
	var last int64
	next := func(how string, lease locker.Lease, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("Acquire after %s: %v", how, err)
		}
		if lease.Token <= last {
			t.Fatalf("token after %s = %d, not above %d", how, lease.Token, last)
		}
		last = lease.Token
	}
	for i := 0; i < 3; i++ {
		lease, err := a.Acquire(ctx, key, "a", time.Minute)
		next("release", lease, err)
		if err := a.Release(ctx, key, "a"); err != nil {
			t.Fatalf("Release: %v", err)
		}
		if n, _ := raw.CountDocuments(ctx, bson.D{{Key: "_id", Value: key}}); n != 0 {
			t.Fatal("Release kept the lock document")
		}
	}
	// An expired lease: Purge with a long horizon keeps it, Purge(0) deletes it.
	lease, err := a.Acquire(ctx, key, "a", 20*time.Millisecond)
	next("release", lease, err)
	waitFree(t, a, key)
	if n, err := newLocker(t, coll).Purge(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("Purge(1h) = %d, %v; want nothing deleted", n, err)
	}
	live := testutil.Key(t)
	if _, err := a.Acquire(ctx, live, "a", time.Minute); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	n, err := newLocker(t, coll).Purge(ctx, 0)
	if err != nil || n < 1 {
		t.Fatalf("Purge(0) = %d, %v; want at least 1 deleted", n, err)
	}
	if n, _ := raw.CountDocuments(ctx, bson.D{{Key: "_id", Value: key}}); n != 0 {
		t.Fatal("Purge(0) kept an expired document")
	}
	if info, err := a.Inspect(ctx, live); err != nil || info.Owner != "a" {
		t.Fatalf("Purge touched a live lease: %+v, %v", info, err)
	}
	// A fresh client inserts the key again.
	c := newLocker(t, coll)
	lease, err = c.Acquire(ctx, key, "c", time.Minute)
	next("expiry and purge", lease, err)
	if info, _ := c.Inspect(ctx, key); info.Token != lease.Token {
		t.Fatalf("Inspect token %d, lease token %d", info.Token, lease.Token)
	}
	// Takeover of an expired lease.
	if _, err := c.Refresh(ctx, key, "c", 20*time.Millisecond); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	waitFree(t, c, key)
	lease, err = newLocker(t, coll).Acquire(ctx, key, "d", time.Minute)
	next("expiry and takeover", lease, err)
	if _, err := c.Purge(ctx, -time.Second); !errors.Is(err, locker.ErrInvalidOption) {
		t.Fatalf("Purge(-1s) = %v, want ErrInvalidOption", err)
	}
}

// Release of an expired lease deletes it but reports ErrNotHeld.
func TestReleaseAfterExpiry(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	key := testutil.Key(t)
	l := newLocker(t, mongolocker.DefaultCollection)
	if _, err := l.Acquire(ctx, key, "a", 20*time.Millisecond); err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	waitFree(t, l, key)
	if err := l.Release(ctx, key, "a"); !errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Release after expiry = %v, want ErrNotHeld", err)
	}
	n, err := rawColl(t, mongolocker.DefaultCollection).CountDocuments(ctx, bson.D{{Key: "_id", Value: key}})
	if err != nil || n != 0 {
		t.Fatalf("expired lease not deleted by its owner's Release: %d, %v", n, err)
	}
}

func TestEnsureIndexesIsIdempotent(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	const coll = "indexes"
	for i := 0; i < 3; i++ {
		if err := newLocker(t, coll).EnsureIndexes(ctx); err != nil {
			t.Fatalf("EnsureIndexes #%d: %v", i+1, err)
		}
	}
	cur, err := rawColl(t, coll).Indexes().List(ctx)
	if err != nil {
		t.Fatalf("list indexes: %v", err)
	}
	var specs []bson.M
	if err := cur.All(ctx, &specs); err != nil {
		t.Fatalf("list indexes: %v", err)
	}
	n := 0
	for _, s := range specs {
		if s["name"] == "dlock_expiresAt" {
			n++
		}
	}
	if n != 1 || len(specs) != 2 {
		t.Fatalf("indexes after three EnsureIndexes: %v; want _id_ and dlock_expiresAt once", specs)
	}
}

func TestServerIsFerretDB(t *testing.T) {
	t.Parallel()
	ferret, err := newLocker(t, mongolocker.DefaultCollection).ServerIsFerretDB(testCtx(t))
	if err != nil {
		t.Fatalf("ServerIsFerretDB: %v", err)
	}
	t.Logf("server is FerretDB: %v", ferret)
}

// Bad configuration fails at construction with ErrInvalidOption, before any
// I/O; odd but legal collection names are stored as plain BSON strings, never
// interpreted.
func TestBadConfiguration(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	if _, err := mongolocker.New(nil); !errors.Is(err, locker.ErrInvalidOption) {
		t.Fatalf("New(nil) = %v", err)
	}
	// A client that is never used: New does no I/O.
	idle, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:1/"))
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Disconnect(context.Background())
	db := idle.Database("x")
	for name, opts := range map[string][]mongolocker.Option{
		"Collection option":  {mongolocker.Collection("other")},
		"ClockSync zero":     {mongolocker.ClockSync(0)},
		"ClockSync too long": {mongolocker.ClockSync(time.Hour)},
	} {
		if _, err := mongolocker.New(db.Collection("locks"), opts...); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("New with %s = %v, want ErrInvalidOption", name, err)
		}
	}
	for _, name := range []string{"", "a$b", "system.locks", ".x", "x.", "nul\x00"} {
		if _, err := mongolocker.New(db.Collection(name)); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("New on collection %q = %v, want ErrInvalidOption", name, err)
		}
		if _, err := mongolocker.Open(ctx, "mongodb://127.0.0.1:1/", "x", mongolocker.Collection(name)); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("Open with Collection(%q) = %v, want ErrInvalidOption", name, err)
		}
	}
	for _, url := range []string{"", "postgres://x/y", "mongodb://[::1", "mongodb://h/?connectTimeoutMS=abc"} {
		if _, err := mongolocker.Open(ctx, url, "x"); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("Open(%q) = %v, want ErrInvalidOption", url, err)
		}
	}
	for _, name := range []string{"", "a.b", "a b", "a/b", "a$b", `a"b`} {
		if _, err := mongolocker.Open(ctx, "mongodb://127.0.0.1:1/", name); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("Open with database %q = %v, want ErrInvalidOption", name, err)
		}
	}
	// Nobody listening: a backend error, not a configuration error.
	url := fmt.Sprintf("mongodb://127.0.0.1:%d/?serverSelectionTimeoutMS=300", testutil.FreePort(t))
	if _, err := mongolocker.Open(ctx, url, "x"); err == nil || errors.Is(err, locker.ErrInvalidOption) {
		t.Errorf("Open of a closed port = %v, want a backend error", err)
	}
}

// Open, with odd collection names that are legal in MongoDB.
func TestOpen(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	url, db := testutil.MongoDatabase(t)
	names := []string{"semi;colon", "with space", "dotted.name", "ключ"}
	ferret, err := newLocker(t, mongolocker.DefaultCollection).ServerIsFerretDB(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !ferret {
		// FerretDB's SQLite backend fails on a double quote in a collection
		// name (a server bug: it splices the name into its SQL); MongoDB
		// accepts it, and the driver only ever sends it as a BSON string.
		names = append(names, `we"ird 'name`)
	}
	for _, name := range names {
		l, err := mongolocker.Open(ctx, url, db, mongolocker.Collection(name), mongolocker.ClockSync(time.Second))
		if err != nil {
			t.Fatalf("Open(collection %q): %v", name, err)
		}
		if l.Collection().Name() != name {
			t.Fatalf("collection %q, want %q", l.Collection().Name(), name)
		}
		key := testutil.Key(t)
		if _, err := l.Acquire(ctx, key, "o", time.Minute); err != nil {
			t.Fatalf("Acquire in %q: %v", name, err)
		}
		if info, err := l.Inspect(ctx, key); err != nil || info.Owner != "o" {
			t.Fatalf("Inspect in %q = %+v, %v", name, info, err)
		}
		if err := l.Release(ctx, key, "o"); err != nil {
			t.Fatalf("Release in %q: %v", name, err)
		}
		if err := l.Close(ctx); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if _, err := l.Inspect(ctx, key); err == nil {
			t.Fatal("Inspect after Close succeeded")
		}
	}
	l, err := mongolocker.Open(ctx, url, db)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(ctx)
	if got := l.Collection().Name(); got != mongolocker.DefaultCollection {
		t.Fatalf("default collection %q", got)
	}
}

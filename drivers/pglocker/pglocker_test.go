package pglocker_test

import (
	"context"
	"database/sql"
	"os"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers "pgx"
	_ "github.com/lib/pq"              // registers "postgres"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.PostgresCleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			os.Stderr.WriteString("goroutine leak: " + err.Error() + "\n")
			code = 1
		}
	}
	os.Exit(code)
}

// sqlDrivers are the database/sql drivers every test runs with.
var sqlDrivers = []string{"postgres", "pgx"}

// driver describes pglocker over the database/sql driver sqlDriver to the
// conformance suite: every client gets a pool of its own, connected before it
// is handed out, so that a short lease's first acquire does not include
// dialling and authentication. mode adds options: notify turns on
// wake-on-release (the Notify option, on the pool's URL).
func driver(name, sqlDriver string, mode ...string) testutil.Driver {
	var notify bool
	var opts []pglocker.Option
	for _, m := range mode {
		switch m {
		case "notify":
			notify = true
		case "single":
			opts = append(opts, pglocker.SingleStatement(true))
		default:
			panic("unknown mode " + m)
		}
	}
	newOne := func(t testing.TB, url, table string) locker.Locker {
		o := append(opts[:len(opts):len(opts)], pglocker.Table(table))
		if notify {
			o = append(o, pglocker.Notify(url))
		}
		l, err := pglocker.New(connectedDB(t, sqlDriver, url), o...)
		if err != nil {
			t.Fatalf("pglocker.New: %v", err)
		}
		t.Cleanup(func() { l.Close() })
		if !notify {
			// Without Notify, Watch fails at once and waiting Lock calls
			// poll: hide it from the suite, whose wake-on-release test is
			// for Lockers that wake.
			return polling{l, l, l}
		}
		return l
	}
	return testutil.Driver{
		Name: name,
		New: func(t testing.TB) locker.Locker {
			url, schema := testutil.PostgresSchema(t)
			return newOne(t, url, schema+".dlock_locks")
		},
		NewNamespace: func(t testing.TB, ns string) locker.Locker {
			url, _ := testutil.PostgresSchema(t)
			return newOne(t, url, testutil.PostgresTable(t, "ns_"+ns))
		},
		Broken: func(t testing.TB) locker.Locker {
			// A table that does not exist: every statement fails with 42P01.
			url, schema := testutil.PostgresSchema(t)
			return newLocker(t, openDB(t, sqlDriver, url), schema+".no_such_table")
		},
	}
}

// The schema is set up before the suite starts, so that the child processes
// it re-executes find it in the environment and share it.

func TestConformanceLibPQ(t *testing.T) {
	setUp(t)
	testutil.RunConformance(t, driver("pglocker/lib/pq", "postgres"))
}

func TestConformancePgx(t *testing.T) {
	setUp(t)
	testutil.RunConformance(t, driver("pglocker/pgx", "pgx"))
}

// Wake-on-release: the suite's WakeOnRelease test runs, with a waiter that
// polls once an hour.
func TestConformanceLibPQNotify(t *testing.T) {
	setUp(t)
	testutil.RunConformance(t, driver("pglocker/lib/pq/notify", "postgres", "notify"))
}

// Acquire as a single autocommit statement at READ COMMITTED.
func TestConformanceLibPQSingleStatement(t *testing.T) {
	setUp(t)
	testutil.RunConformance(t, driver("pglocker/lib/pq/single-statement", "postgres", "single"))
}

// polling is a Locker without Watch: the suite sees a driver that polls
// (and still transfers).
type polling struct {
	locker.Locker
	locker.Purger
	locker.Transferer
}

// openDB opens a pool with sqlDriver that the test closes when it ends.
func openDB(t testing.TB, sqlDriver, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open(sqlDriver, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// connectedDB is openDB with one connection already made.
func connectedDB(t testing.TB, sqlDriver, url string) *sql.DB {
	t.Helper()
	db := openDB(t, sqlDriver, url)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		t.Fatalf("connect: %v", err)
	}
	return db
}

func newLocker(t testing.TB, db pglocker.DB, table string) *pglocker.Locker {
	t.Helper()
	l, err := pglocker.New(db, pglocker.Table(table))
	if err != nil {
		t.Fatalf("pglocker.New: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// fixture is a test's view of the test schema: its URL and lock table.
type fixture struct {
	url, schema, table string
}

func setUp(t testing.TB) fixture {
	t.Helper()
	url, schema := testutil.PostgresSchema(t)
	return fixture{url: url, schema: schema, table: schema + ".dlock_locks"}
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// waitFree waits until the server reports key free.
func waitFree(t testing.TB, l *pglocker.Locker, key string) {
	t.Helper()
	waitFor(t, key+" to expire", 10*time.Second, func() bool {
		info, err := l.Inspect(context.Background(), key)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		return !info.Held()
	})
}

// waitBlocked waits until a statement naming table waits for a lock on the
// server.
func waitBlocked(t testing.TB, db *sql.DB, table string) {
	t.Helper()
	waitFor(t, "a statement on "+table+" to wait for a lock", 10*time.Second, func() bool {
		var n int
		err := db.QueryRow(`SELECT count(*) FROM pg_stat_activity
			WHERE wait_event_type = 'Lock' AND strpos(query, $1) > 0`, table).Scan(&n)
		if err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		return n > 0
	})
}

package pglocker_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
	"github.com/dlock-go/dlock/testutil"
)

// Bad configuration is an error matching ErrInvalidOption at construction,
// never a panic.
func TestNewRejectsBadConfig(t *testing.T) {
	t.Parallel()
	for name, db := range map[string]pglocker.DB{
		"nil":           nil,
		"nil *sql.DB":   (*sql.DB)(nil),
		"nil *sql.Tx":   (*sql.Tx)(nil),
		"nil *sql.Conn": (*sql.Conn)(nil),
	} {
		if _, err := pglocker.New(db); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("New(%s) = %v; want ErrInvalidOption", name, err)
		}
	}
	db, err := sql.Open("postgres", "postgres://127.0.0.1:1/none?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, name := range []string{"", `lo"cks`, `"locks"`, "lo'cks", `lo\cks`, "a.b.c", ".locks", "locks.", "x\x00y", "a\nb", strings.Repeat("x", 50)} {
		if _, err := pglocker.New(db, pglocker.Table(name)); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("New(Table(%q)) = %v; want ErrInvalidOption", name, err)
		}
		if _, err := pglocker.Open("postgres://127.0.0.1:1/none", pglocker.Table(name)); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("Open(Table(%q)) = %v; want ErrInvalidOption", name, err)
		}
	}
}

// Table names with spaces, semicolons, dashes, capitals and non-ASCII letters
// are quoted, never spliced: every operation works on exactly that table.
func TestTableNameQuoting(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	for _, sqlDriver := range sqlDrivers {
		for _, name := range []string{"Locks; DROP TABLE x --", "my locks", "Verrous-ü", "UPPER"} {
			t.Run(sqlDriver+"/"+name, func(t *testing.T) {
				t.Parallel()
				ctx := testCtx(t)
				table := testutil.PostgresTable(t, name)
				db := openDB(t, sqlDriver, fx.url)
				l := newLocker(t, db, table)
				key := testutil.Key(t)
				lease, err := l.Acquire(ctx, key, "me", time.Minute)
				if err != nil {
					t.Fatalf("Acquire: %v", err)
				}
				if _, err := l.Refresh(ctx, key, "me", time.Minute); err != nil {
					t.Fatalf("Refresh: %v", err)
				}
				if info, err := l.Inspect(ctx, key); err != nil || info.Owner != "me" || info.Token != lease.Token {
					t.Fatalf("Inspect = %+v, %v", info, err)
				}
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Fence(ctx, tx, key, lease.Token); err != nil {
					t.Fatalf("Fence: %v", err)
				}
				tx.Rollback()
				if err := l.Release(ctx, key, "me"); err != nil {
					t.Fatalf("Release: %v", err)
				}
				if _, err := l.Purge(ctx, time.Hour); err != nil {
					t.Fatalf("Purge: %v", err)
				}
				// The row went to the quoted table and nowhere else.
				n, _ := migrations.ParseTable(table)
				var rows int
				if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+n.Table+` WHERE key = $1`, key).Scan(&rows); err != nil || rows != 0 {
					t.Fatalf("rows left in %s: %d, %v", n.Table, rows, err)
				}
				var x bool
				if err := db.QueryRowContext(ctx, `SELECT to_regclass('x') IS NOT NULL`).Scan(&x); err != nil || x {
					t.Fatalf("a table x exists: %v, %v", x, err)
				}
			})
		}
	}
}

// A table name is case-sensitive: "Upper" and "upper" are different tables.
func TestTableNamesAreDistinct(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	a := newLocker(t, db, testutil.PostgresTable(t, "Case"))
	b := newLocker(t, db, testutil.PostgresTable(t, "case"))
	key := testutil.Key(t)
	if _, err := a.Acquire(ctx, key, "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Acquire(ctx, key, "b", time.Minute); err != nil {
		t.Fatalf("Acquire on the other table: %v", err)
	}
}

// Neither New nor any operation changes a session setting of the caller's
// connection: the acquire transaction's isolation level is its own.
func TestCallerSessionUntouched(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	for _, sqlDriver := range sqlDrivers {
		t.Run(sqlDriver, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			db := openDB(t, sqlDriver, fx.url)
			db.SetMaxOpenConns(1) // every statement on one session
			settings := func() (pid int, s string) {
				t.Helper()
				err := db.QueryRowContext(ctx, `SELECT pg_backend_pid(),
					string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_settings`).Scan(&pid, &s)
				if err != nil {
					t.Fatal(err)
				}
				return pid, s
			}
			pid, before := settings()
			l := newLocker(t, db, fx.table)
			key := testutil.Key(t)
			lease, err := l.Acquire(ctx, key, "me", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := l.Acquire(ctx, key, "other", time.Minute); !errors.Is(err, locker.ErrNotObtained) {
				t.Fatalf("second Acquire = %v", err)
			}
			if _, err := l.Refresh(ctx, key, "me", time.Minute); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Inspect(ctx, key); err != nil {
				t.Fatal(err)
			}
			if err := l.Release(ctx, key, "me"); err != nil {
				t.Fatal(err)
			}
			if _, err := l.Purge(ctx, time.Hour); err != nil {
				t.Fatal(err)
			}
			_ = lease
			pid2, after := settings()
			if pid2 != pid {
				t.Fatalf("the pool changed sessions (%d, %d); the check needs one", pid, pid2)
			}
			if after != before {
				t.Fatalf("session settings changed:\nbefore %s\nafter  %s", before, after)
			}
			var iso string
			if err := db.QueryRowContext(ctx, `SHOW transaction_isolation`).Scan(&iso); err != nil || iso != "read committed" {
				t.Fatalf("transaction_isolation after Acquire = %q, %v", iso, err)
			}
		})
	}
}

// A serialization failure (40001) in the REPEATABLE READ acquire is reported
// as ErrNotObtained, wrapping the server's error. The failure is provoked
// deterministically: another transaction changes the lock row after the
// acquire took its snapshot and while it waits for the row.
func TestSerializationFailureIsNotObtained(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	for _, sqlDriver := range sqlDrivers {
		t.Run(sqlDriver, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			table := testutil.PostgresTable(t, "serial_"+sqlDriver)
			n, _ := migrations.ParseTable(table)
			db := openDB(t, sqlDriver, fx.url)
			l := newLocker(t, db, table)
			key := testutil.Key(t)
			if _, err := l.Acquire(ctx, key, "old", 10*time.Millisecond); err != nil {
				t.Fatal(err)
			}
			waitFree(t, l, key)

			// Another session holds the expired row: it renews the old
			// owner's lease but has not committed yet.
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, `UPDATE `+n.Table+` SET expires_at = now() + interval '1 minute' WHERE key = $1`, key); err != nil {
				t.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() {
				_, err := l.Acquire(ctx, key, "new", time.Minute)
				errc <- err
			}()
			waitBlocked(t, db, n.Table)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			err = <-errc
			if !errors.Is(err, locker.ErrNotObtained) {
				t.Fatalf("Acquire = %v; want ErrNotObtained", err)
			}
			var state interface{ SQLState() string }
			if !errors.As(err, &state) || state.SQLState() != "40001" {
				t.Fatalf("Acquire = %v; want it to wrap the server's 40001", err)
			}
			if !strings.HasPrefix(err.Error(), "pglocker: acquire: ") {
				t.Errorf("error %q lacks the package prefix", err)
			}
		})
	}
}

// Goroutines with pools of their own race to take over one expiring key: the
// losers' serialization failures are ErrNotObtained and never anything else,
// and the winners never overlap.
func TestGoroutineRaceErrors(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	const workers, rounds = 8, 40
	key := testutil.Key(t)
	var holders, overlaps, wins, serialization atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		l := newLocker(t, openDB(t, sqlDrivers[w%2], fx.url), fx.table)
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := fmt.Sprintf("w%d", w)
			for i := 0; i < rounds; i++ {
				_, err := l.Acquire(ctx, key, owner, 5*time.Millisecond)
				switch {
				case err == nil:
					wins.Add(1)
					if holders.Add(1) > 1 {
						overlaps.Add(1)
					}
					holders.Add(-1)
					// Let the lease expire instead of releasing it, so
					// that the next acquirers race for a takeover.
				case errors.Is(err, locker.ErrNotObtained):
					var s interface{ SQLState() string }
					if errors.As(err, &s) {
						serialization.Add(1)
					}
				default:
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("Acquire: %v (want nil or ErrNotObtained)", err)
	}
	if overlaps.Load() > 0 {
		t.Errorf("%d overlapping holders", overlaps.Load())
	}
	if wins.Load() == 0 {
		t.Error("no acquisition succeeded")
	}
	t.Logf("%d grants, %d lost races reported by the server (40001/23505) among %d attempts",
		wins.Load(), serialization.Load(), workers*rounds)
}

// Tokens keep increasing when rows are purged: they come from a sequence.
func TestTokensSurvivePurge(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	l := newLocker(t, openDB(t, "postgres", fx.url), testutil.PostgresTable(t, "purge"))
	key, other := testutil.Key(t), testutil.Key(t)+"-live"
	if _, err := l.Acquire(ctx, other, "live", time.Minute); err != nil {
		t.Fatal(err)
	}
	var last int64
	for i := 0; i < 3; i++ {
		lease, err := l.Acquire(ctx, key, "me", 5*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		if lease.Token <= last {
			t.Fatalf("token %d after %d", lease.Token, last)
		}
		last = lease.Token
		waitFree(t, l, key)
		if n, err := l.Purge(ctx, time.Hour); err != nil || n != 0 {
			t.Fatalf("Purge(1h) of a lease that just expired = %d, %v; want 0", n, err)
		}
		if n, err := l.Purge(ctx, 0); err != nil || n != 1 {
			t.Fatalf("Purge(0) = %d, %v; want 1", n, err)
		}
	}
	if info, err := l.Inspect(ctx, other); err != nil || info.Owner != "live" {
		t.Fatalf("Purge touched a live lease: %+v, %v", info, err)
	}
	if _, err := l.Purge(ctx, -time.Second); !errors.Is(err, locker.ErrInvalidOption) {
		t.Fatalf("Purge(-1s) = %v; want ErrInvalidOption", err)
	}
}

// Release of one's own expired lease deletes the row but reports ErrNotHeld.
func TestReleaseExpiredCleansUp(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	l := newLocker(t, db, fx.table)
	key := testutil.Key(t)
	if _, err := l.Acquire(ctx, key, "me", 5*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	waitFree(t, l, key)
	if err := l.Release(ctx, key, "me"); !errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Release of an expired lease = %v; want ErrNotHeld", err)
	}
	n, _ := migrations.ParseTable(fx.table)
	var rows int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM `+n.Table+` WHERE key = $1`, key).Scan(&rows); err != nil || rows != 0 {
		t.Fatalf("rows left: %d, %v; want the expired row deleted", rows, err)
	}
}

// With a *sql.Tx, statements run inside the caller's transaction; with a
// *sql.Conn, on that connection.
func TestCallerTransactionAndConn(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	outside := newLocker(t, db, fx.table)
	key := testutil.Key(t)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	inside := newLocker(t, tx, fx.table)
	if _, err := inside.Acquire(ctx, key, "tx", time.Minute); err != nil {
		t.Fatalf("Acquire in tx: %v", err)
	}
	if info, err := inside.Inspect(ctx, key); err != nil || info.Owner != "tx" {
		t.Fatalf("Inspect in tx = %+v, %v", info, err)
	}
	if info, err := outside.Inspect(ctx, key); err != nil || info.Held() {
		t.Fatalf("Inspect outside before commit = %+v, %v; want free", info, err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if info, err := outside.Inspect(ctx, key); err != nil || info.Held() {
		t.Fatalf("Inspect after rollback = %+v, %v; want free", info, err)
	}

	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	onConn := newLocker(t, conn, fx.table)
	if _, err := onConn.Acquire(ctx, key, "conn", time.Minute); err != nil {
		t.Fatalf("Acquire on conn: %v", err)
	}
	if info, err := outside.Inspect(ctx, key); err != nil || info.Owner != "conn" {
		t.Fatalf("Inspect = %+v, %v", info, err)
	}
	if err := onConn.Release(ctx, key, "conn"); err != nil {
		t.Fatal(err)
	}
}

// A server that cannot be reached is a wrapped backend error, not contention.
func TestUnreachableServer(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	l, err := pglocker.Open(fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", testutil.FreePort(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = l.Acquire(ctx, "k", "o", time.Second)
	if err == nil || errors.Is(err, locker.ErrNotObtained) || !strings.HasPrefix(err.Error(), "pglocker: acquire: ") {
		t.Fatalf("Acquire on a closed port = %v; want a wrapped connection error", err)
	}
	if err := l.Release(ctx, "k", "o"); err == nil || errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Release on a closed port = %v; want a connection error", err)
	}
}

// A context that has ended does no I/O and its error shows through.
func TestDoneContext(t *testing.T) {
	t.Parallel()
	l, err := pglocker.Open("postgres://postgres@127.0.0.1:1/none?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Acquire(ctx, "k", "o", time.Second); !errors.Is(err, context.Canceled) || errors.Is(err, locker.ErrNotObtained) {
		t.Errorf("Acquire = %v", err)
	}
	if _, err := l.Refresh(ctx, "k", "o", time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Refresh = %v", err)
	}
	if err := l.Release(ctx, "k", "o"); !errors.Is(err, context.Canceled) {
		t.Errorf("Release = %v", err)
	}
	if _, err := l.Inspect(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Inspect = %v", err)
	}
	if _, err := l.Purge(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("Purge = %v", err)
	}
}

// TTLs are sent as whole milliseconds rounded up, so the server never grants
// less than the client trusts; Inspect reports the remaining time.
func TestSubMillisecondTTLRoundsUp(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	l := newLocker(t, openDB(t, "postgres", fx.url), fx.table)
	key := testutil.Key(t)
	lease, err := l.Acquire(ctx, key, "me", 1500*time.Millisecond+time.Microsecond)
	if err != nil {
		t.Fatal(err)
	}
	if lease.Validity != 1500*time.Millisecond+time.Microsecond {
		t.Fatalf("Validity = %v", lease.Validity)
	}
	info, err := l.Inspect(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if info.TTL <= time.Second || info.TTL > 1501*time.Millisecond {
		t.Fatalf("Inspect TTL = %v; want about 1.501s", info.TTL)
	}
	if err := l.Release(ctx, key, "me"); err != nil {
		t.Fatal(err)
	}
}

// Prepared statements survive the table being dropped and created again, and
// a missing table is a backend error, not contention. Close releases the
// statements of a Locker from New, which goes on working unprepared.
func TestPreparedStatements(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	for _, sqlDriver := range sqlDrivers {
		t.Run(sqlDriver, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			table := testutil.PostgresTable(t, "prepared_"+sqlDriver)
			db := openDB(t, sqlDriver, fx.url)
			l, err := pglocker.New(db, pglocker.Table(table), pglocker.Prepared(true))
			if err != nil {
				t.Fatal(err)
			}
			key := testutil.Key(t)
			cycle := func(what string) int64 {
				t.Helper()
				lease, err := l.Acquire(ctx, key, "me", time.Minute)
				if err != nil {
					t.Fatalf("%s: Acquire: %v", what, err)
				}
				if _, err := l.Refresh(ctx, key, "me", time.Minute); err != nil {
					t.Fatalf("%s: Refresh: %v", what, err)
				}
				if info, err := l.Inspect(ctx, key); err != nil || info.Token != lease.Token {
					t.Fatalf("%s: Inspect = %+v, %v", what, info, err)
				}
				if err := l.Release(ctx, key, "me"); err != nil {
					t.Fatalf("%s: Release: %v", what, err)
				}
				return lease.Token
			}
			cycle("first")
			if err := migrations.Down(ctx, db, migrations.Table(table)); err != nil {
				t.Fatal(err)
			}
			_, err = l.Acquire(ctx, key, "me", time.Minute)
			if err == nil || errors.Is(err, locker.ErrNotObtained) || !strings.Contains(err.Error(), "does not exist") {
				t.Fatalf("Acquire on a dropped table = %v; want a backend error", err)
			}
			if err := migrations.Up(ctx, db, migrations.Table(table)); err != nil {
				t.Fatal(err)
			}
			if tok := cycle("after down and up"); tok != 1 {
				t.Errorf("first token after down and up = %d; want 1", tok)
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			cycle("after Close")
			if err := db.PingContext(ctx); err != nil {
				t.Fatalf("Close closed the caller's pool: %v", err)
			}
		})
	}
}

// Close of a Locker from Open closes its pool.
func TestOpenClose(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	l, err := pglocker.Open(fx.url, pglocker.Table(fx.table))
	if err != nil {
		t.Fatal(err)
	}
	key := testutil.Key(t)
	if _, err := l.Acquire(ctx, key, "me", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, key, "me"); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Acquire(ctx, key, "me", time.Minute); err == nil || errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("Acquire after Close = %v; want an error", err)
	}
}

// An acquirer draws its token only once it holds the key's transaction-level
// advisory lock, so a token drawn meanwhile by anyone holding that lock is
// smaller: acquirers of one key draw tokens in the order they may insert.
// That holds for the single-statement Acquire as well: its implicit
// transaction holds the advisory lock.
func TestTokenDrawnUnderKeyLock(t *testing.T) {
	t.Parallel()
	for _, single := range []bool{false, true} {
		t.Run(fmt.Sprintf("single=%v", single), func(t *testing.T) {
			t.Parallel()
			testTokenDrawnUnderKeyLock(t, single)
		})
	}
}

func testTokenDrawnUnderKeyLock(t *testing.T, single bool) {
	fx := setUp(t)
	ctx := testCtx(t)
	table := testutil.PostgresTable(t, fmt.Sprintf("keylock_%v", single))
	n, _ := migrations.ParseTable(table)
	db := openDB(t, "postgres", fx.url)
	l, err := pglocker.New(db, pglocker.Table(table), pglocker.SingleStatement(single))
	if err != nil {
		t.Fatal(err)
	}
	key := testutil.Key(t)

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, key); err != nil {
		t.Fatal(err)
	}
	done := make(chan locker.Lease, 1)
	go func() {
		lease, err := l.Acquire(ctx, key, "me", time.Minute)
		if err != nil {
			t.Errorf("Acquire: %v", err)
		}
		done <- lease
	}()
	waitBlocked(t, db, n.Table)
	var drawn int64
	if err := tx.QueryRowContext(ctx, `SELECT nextval('`+n.Sequence+`')`).Scan(&drawn); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if lease := <-done; lease.Token <= drawn {
		t.Fatalf("token %d drawn before the key lock was free (another drew %d under it)", lease.Token, drawn)
	}
}

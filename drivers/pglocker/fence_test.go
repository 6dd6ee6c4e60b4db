package pglocker_test

import (
	"context"
	"database/sql"
	"errors"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

// guardedWrite writes token into the writes table of schema inside a
// transaction guarded by Fence, recording when the write began and ended by
// the server's clock. It returns Fence's error, if any, having rolled back.
func guardedWrite(ctx context.Context, l *pglocker.Locker, db *sql.DB, schema, key string, token int64) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := l.Fence(ctx, tx, key, token); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO `+schema+`.fence_writes (key, token, began)
		VALUES ($1, $2, clock_timestamp())`, key, token); err != nil {
		return err
	}
	// Stay in the critical section a little, so that an overlap would show.
	if _, err := tx.ExecContext(ctx, `SELECT pg_sleep(0.002)`); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `UPDATE `+schema+`.fence_writes SET ended = clock_timestamp()
		WHERE key = $1 AND token = $2`, key, token); err != nil {
		return err
	}
	return tx.Commit()
}

var writesTable sync.Once

// createWrites creates the writes table once per process: concurrent
// CREATE TABLE IF NOT EXISTS statements can collide in the catalog.
func createWrites(t *testing.T, db *sql.DB, schema string) {
	t.Helper()
	var err error
	writesTable.Do(func() { err = createWritesTable(db, schema) })
	if err != nil {
		t.Fatal(err)
	}
}

func createWritesTable(db *sql.DB, schema string) error {
	_, err := db.Exec(`CREATE TABLE IF NOT EXISTS ` + schema + `.fence_writes (
		key text NOT NULL, token bigint NOT NULL,
		began timestamptz NOT NULL, ended timestamptz)`)
	return err
}

// A stale holder's guarded write is rejected after its lease expired and was
// taken over; the new holder's guarded write succeeds.
func TestFenceRejectsStaleHolder(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	for _, sqlDriver := range sqlDrivers {
		t.Run(sqlDriver, func(t *testing.T) {
			t.Parallel()
			ctx := testCtx(t)
			db := openDB(t, sqlDriver, fx.url)
			createWrites(t, db, fx.schema)
			stale := newLocker(t, db, fx.table)
			fresh := newLocker(t, openDB(t, sqlDriver, fx.url), fx.table)
			key := testutil.Key(t)

			old, err := stale.Acquire(ctx, key, "stale", 500*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			if err := guardedWrite(ctx, stale, db, fx.schema, key, old.Token); err != nil {
				t.Fatalf("guarded write while holding: %v", err)
			}
			waitFree(t, stale, key)
			if err := guardedWrite(ctx, stale, db, fx.schema, key, old.Token); !errors.Is(err, locker.ErrNotHeld) {
				t.Fatalf("guarded write after expiry = %v; want ErrNotHeld", err)
			}
			cur, err := fresh.Acquire(ctx, key, "fresh", time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := guardedWrite(ctx, stale, db, fx.schema, key, old.Token); !errors.Is(err, locker.ErrNotHeld) {
				t.Fatalf("stale guarded write after takeover = %v; want ErrNotHeld", err)
			}
			if err := guardedWrite(ctx, fresh, db, fx.schema, key, cur.Token); err != nil {
				t.Fatalf("new holder's guarded write: %v", err)
			}
			var tokens []int64
			rows, err := db.QueryContext(ctx, `SELECT token FROM `+fx.schema+`.fence_writes WHERE key = $1 ORDER BY began`, key)
			if err != nil {
				t.Fatal(err)
			}
			for rows.Next() {
				var tok int64
				if err := rows.Scan(&tok); err != nil {
					t.Fatal(err)
				}
				tokens = append(tokens, tok)
			}
			rows.Close()
			if len(tokens) != 2 || tokens[0] != old.Token || tokens[1] != cur.Token {
				t.Fatalf("committed writes %v; want [%d %d]", tokens, old.Token, cur.Token)
			}

			if err := fresh.Release(ctx, key, "fresh"); err != nil {
				t.Fatal(err)
			}
			if err := guardedWrite(ctx, fresh, db, fx.schema, key, cur.Token); !errors.Is(err, locker.ErrNotHeld) {
				t.Fatalf("guarded write after release = %v; want ErrNotHeld", err)
			}
		})
	}
}

// While a guarded transaction is open, a takeover of the (by now expired)
// lease waits for it, and succeeds only once it has committed.
func TestFenceHoldsOffTakeover(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	table := testutil.PostgresTable(t, "fence_hold")
	db := openDB(t, "postgres", fx.url)
	holder := newLocker(t, db, table)
	taker := newLocker(t, openDB(t, "pgx", fx.url), table)
	key := testutil.Key(t)

	lease, err := holder.Acquire(ctx, key, "holder", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	if err := holder.Fence(ctx, tx, key, lease.Token); err != nil {
		t.Fatalf("Fence: %v", err)
	}
	waitFree(t, taker, key) // expired by the server's clock, still row-locked
	var committed atomic.Bool
	type result struct {
		lease locker.Lease
		err   error
		after bool
	}
	done := make(chan result, 1)
	go func() {
		l, err := taker.Acquire(ctx, key, "taker", time.Minute)
		done <- result{l, err, committed.Load()}
	}()
	waitBlocked(t, db, `"fence_hold"`)
	committed.Store(true)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if r.err != nil {
		t.Fatalf("takeover after the guarded commit: %v", r.err)
	}
	if !r.after {
		t.Fatal("the takeover returned before the guarded transaction committed")
	}
	if r.lease.Token <= lease.Token {
		t.Fatalf("takeover token %d not above %d", r.lease.Token, lease.Token)
	}
}

// Contenders with pools of their own take one key with short leases, pause
// (sometimes past their TTL) and then write under Fence: stale writes are
// rejected and the committed writes never overlap, in token order.
func TestFencedWritesNeverOverlap(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	admin := openDB(t, "postgres", fx.url)
	createWrites(t, admin, fx.schema)
	key := testutil.Key(t)
	const workers, rounds = 6, 8
	const ttl = 80 * time.Millisecond
	var rejected, written atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		db := openDB(t, sqlDrivers[w%2], fx.url)
		l := newLocker(t, db, fx.table)
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner := testutil.Key(t)
			for i := 0; i < rounds; i++ {
				var lease locker.Lease
				for {
					var err error
					lease, err = l.Acquire(ctx, key, owner, ttl)
					if err == nil {
						break
					}
					if !errors.Is(err, locker.ErrNotObtained) {
						errs <- err
						return
					}
					time.Sleep(time.Millisecond) // back off, then retry
				}
				if (w+i)%3 == 0 {
					// A pause past the lease: this holder is stale.
					time.Sleep(2 * ttl)
				}
				switch err := guardedWrite(ctx, l, db, fx.schema, key, lease.Token); {
				case err == nil:
					written.Add(1)
				case errors.Is(err, locker.ErrNotHeld):
					rejected.Add(1)
				default:
					errs <- err
					return
				}
				if err := l.Release(ctx, key, owner); err != nil && !errors.Is(err, locker.ErrNotHeld) {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	type write struct {
		token        int64
		began, ended time.Time
	}
	var ws []write
	rows, err := admin.QueryContext(ctx, `SELECT token, began, ended FROM `+fx.schema+`.fence_writes WHERE key = $1`, key)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var w write
		if err := rows.Scan(&w.token, &w.began, &w.ended); err != nil {
			t.Fatal(err)
		}
		ws = append(ws, w)
	}
	rows.Close()
	if int64(len(ws)) != written.Load() {
		t.Fatalf("%d writes committed, %d reported", len(ws), written.Load())
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].began.Before(ws[j].began) })
	for i := 1; i < len(ws); i++ {
		prev, cur := ws[i-1], ws[i]
		if !cur.began.After(prev.ended) {
			t.Errorf("guarded writes overlap: token %d [%v, %v] and token %d [%v, %v]",
				prev.token, prev.began, prev.ended, cur.token, cur.began, cur.ended)
		}
		if cur.token <= prev.token {
			t.Errorf("write with token %d committed after one with token %d", cur.token, prev.token)
		}
	}
	if rejected.Load() == 0 || written.Load() == 0 {
		t.Fatalf("%d writes, %d rejected: the test needs both", written.Load(), rejected.Load())
	}
	t.Logf("%d guarded writes committed, %d stale writes rejected", written.Load(), rejected.Load())
}

func TestFenceBadArguments(t *testing.T) {
	t.Parallel()
	l, err := pglocker.Open("postgres://127.0.0.1:1/none?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := context.Background()
	if err := l.Fence(ctx, nil, "k", 1); !errors.Is(err, locker.ErrInvalidOption) {
		t.Errorf("Fence(nil tx) = %v; want ErrInvalidOption", err)
	}
	if err := l.Fence(ctx, nil, "", 1); !errors.Is(err, locker.ErrInvalidKey) {
		t.Errorf("Fence(empty key) = %v; want ErrInvalidKey", err)
	}
}

package pglocker_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
	"github.com/dlock-go/dlock/testutil"
)

type transferLocker interface {
	locker.Locker
	locker.Transferer
}

// transferConfig is a Locker configuration Transfer is tested in. Every one
// uses a schema-qualified table, so its statements go through the rewriter.
type transferConfig struct {
	name      string
	sqlDriver string
	opts      []pglocker.Option
	notify    bool
}

var transferConfigs = []transferConfig{
	{name: "lib/pq/tx", sqlDriver: "postgres"}, // prepared: lib/pq's default
	{name: "lib/pq/tx/unprepared", sqlDriver: "postgres", opts: []pglocker.Option{pglocker.Prepared(false)}},
	{name: "lib/pq/single", sqlDriver: "postgres", opts: []pglocker.Option{pglocker.SingleStatement(true)}},
	{name: "lib/pq/single/notify", sqlDriver: "postgres", opts: []pglocker.Option{pglocker.SingleStatement(true)}, notify: true},
	{name: "pgx/tx", sqlDriver: "pgx"},
	{name: "pgx/single/prepared", sqlDriver: "pgx", opts: []pglocker.Option{pglocker.SingleStatement(true), pglocker.Prepared(true)}},
}

// newTransferLocker returns a Locker of configuration c on a pool of its
// own, connected already.
func (c transferConfig) newLocker(t testing.TB, table string) *pglocker.Locker {
	t.Helper()
	url, _ := testutil.PostgresSchema(t)
	opts := append(c.opts[:len(c.opts):len(c.opts)], pglocker.Table(table))
	if c.notify {
		opts = append(opts, pglocker.Notify(url))
	}
	l, err := pglocker.New(connectedDB(t, c.sqlDriver, url), opts...)
	if err != nil {
		t.Fatalf("pglocker.New: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestTransfer: a transfer hands a live lease to a new owner with a new,
// greater token and a fresh TTL (guarantee 4 across transfers); the old
// owner no longer holds it; a stranger, an expired owner or a transfer of a
// free key gets ErrNotHeld and changes nothing (guarantee 3). In every
// configuration: both drivers, both acquire modes, prepared or not.
func TestTransfer(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	for _, c := range transferConfigs {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			testTransfer(t, c.newLocker(t, fx.table))
		})
	}
}

func testTransfer(t *testing.T, l transferLocker) {
	ctx := testCtx(t)
	key := testutil.Key(t)
	inspect := func() locker.Info {
		t.Helper()
		info, err := l.Inspect(ctx, key)
		if err != nil {
			t.Fatalf("Inspect: %v", err)
		}
		return info
	}

	a, err := l.Acquire(ctx, key, "A", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 30 * time.Second
	b, err := l.Transfer(ctx, key, "A", "B", ttl)
	if err != nil {
		t.Fatalf("Transfer A→B: %v", err)
	}
	if b.Token <= a.Token || b.Validity != ttl {
		t.Fatalf("Transfer A→B = %+v; want a token above A's %d and validity %v", b, a.Token, ttl)
	}
	if info := inspect(); info.Owner != "B" || info.Token != b.Token || info.TTL <= 0 || info.TTL > ttl {
		t.Fatalf("Inspect after transfer = %+v; want B, token %d, TTL in (0, %v]", info, b.Token, ttl)
	}
	if err := l.Release(ctx, key, "A"); !errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Release by the old owner: %v; want ErrNotHeld", err)
	}
	r, err := l.Refresh(ctx, key, "B", 45*time.Second)
	if err != nil || r.Token != b.Token {
		t.Fatalf("Refresh by B = %+v, %v; want token %d", r, err, b.Token)
	}
	if info := inspect(); info.Owner != "B" || info.Token != b.Token || info.TTL <= ttl {
		t.Fatalf("Inspect after refresh = %+v; want B, token %d, TTL above %v", info, b.Token, ttl)
	}

	// Neither a stranger nor the old owner can move B's lease.
	for _, from := range []string{"X", "A"} {
		if _, err := l.Transfer(ctx, key, from, "C", ttl); !errors.Is(err, locker.ErrNotHeld) {
			t.Fatalf("Transfer by %s: %v; want ErrNotHeld", from, err)
		}
		if info := inspect(); info.Owner != "B" || info.Token != b.Token {
			t.Fatalf("Inspect after a refused transfer = %+v; want B's lease unchanged", info)
		}
	}

	// A chain of transfers keeps raising the token.
	last := b.Token
	owner := "B"
	for i := 0; i < 3; i++ {
		next := fmt.Sprintf("C%d", i)
		lease, err := l.Transfer(ctx, key, owner, next, ttl)
		if err != nil || lease.Token <= last {
			t.Fatalf("Transfer %s→%s = %+v, %v; want a token above %d", owner, next, lease, err, last)
		}
		owner, last = next, lease.Token
	}
	if err := l.Release(ctx, key, owner); err != nil {
		t.Fatalf("Release by the last owner: %v", err)
	}

	// A free key cannot be transferred.
	if _, err := l.Transfer(ctx, key, owner, "D", ttl); !errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Transfer of a free key: %v; want ErrNotHeld", err)
	}
	if info := inspect(); info.Held() {
		t.Fatalf("Inspect after transferring a free key = %+v; want free", info)
	}

	// Nor can an expired lease, whose row is still there.
	e, err := l.Acquire(ctx, key, "E", 30*time.Millisecond)
	if err != nil || e.Token <= last {
		t.Fatalf("Acquire after transfers = %+v, %v; want a token above %d", e, err, last)
	}
	waitFor(t, key+" to expire", 10*time.Second, func() bool { return !inspect().Held() })
	if _, err := l.Transfer(ctx, key, "E", "F", ttl); !errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Transfer by an expired owner: %v; want ErrNotHeld", err)
	}
	if info := inspect(); info.Held() {
		t.Fatalf("Inspect after an expired owner's transfer = %+v; want free", info)
	}
	g, err := l.Acquire(ctx, key, "G", time.Minute)
	if err != nil || g.Token <= e.Token {
		t.Fatalf("Acquire after expiry = %+v, %v; want a token above %d", g, err, e.Token)
	}
	if err := l.Release(ctx, key, "G"); err != nil {
		t.Fatal(err)
	}
}

// TestTransferBadInput: bad arguments are the locker's errors and a done
// context is the context's error, before any I/O (the pool is closed: any
// I/O would fail differently).
func TestTransferBadInput(t *testing.T) {
	t.Parallel()
	db, err := sql.Open("postgres", "postgres://postgres@127.0.0.1:1/none?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	l, err := pglocker.New(db)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := []struct {
		name          string
		key, from, to string
		ttl           time.Duration
		want          error
	}{
		{"empty key", "", "a", "b", time.Second, locker.ErrInvalidKey},
		{"long key", strings.Repeat("k", locker.MaxKeyLen+1), "a", "b", time.Second, locker.ErrInvalidKey},
		{"key not UTF-8", "k\xff", "a", "b", time.Second, locker.ErrInvalidKey},
		{"empty from", "k", "", "b", time.Second, locker.ErrInvalidOption},
		{"empty to", "k", "a", "", time.Second, locker.ErrInvalidOption},
		{"zero ttl", "k", "a", "b", 0, locker.ErrInvalidOption},
		{"negative ttl", "k", "a", "b", -time.Second, locker.ErrInvalidOption},
		{"ttl under 1ms", "k", "a", "b", 999 * time.Microsecond, locker.ErrInvalidOption},
	}
	for _, c := range cases {
		if _, err := l.Transfer(ctx, c.key, c.from, c.to, c.ttl); !errors.Is(err, c.want) {
			t.Errorf("%s: %v; want %v", c.name, err, c.want)
		}
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := l.Transfer(done, "k", "a", "b", time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Transfer with a done context: %v; want context.Canceled", err)
	}
	// The closed pool shows what I/O would have returned.
	if _, err := l.Transfer(ctx, "k", "a", "b", time.Second); err == nil || errors.Is(err, locker.ErrNotHeld) ||
		!strings.HasPrefix(err.Error(), "pglocker: transfer: ") {
		t.Errorf("Transfer on a closed pool: %v; want a wrapped backend error", err)
	}
}

// TestTransferInCallerTransaction: on a *sql.Tx, Transfer runs in the
// caller's transaction, as Acquire does: invisible outside until commit,
// undone by a rollback.
func TestTransferInCallerTransaction(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	outside := newLocker(t, db, fx.table)
	key := testutil.Key(t)
	a, err := outside.Acquire(ctx, key, "A", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, commit := range []bool{false, true} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		inside := newLocker(t, tx, fx.table)
		b, err := inside.Transfer(ctx, key, "A", "B", time.Minute)
		if err != nil || b.Token <= a.Token {
			t.Fatalf("Transfer in tx = %+v, %v; want a token above %d", b, err, a.Token)
		}
		if info, err := inside.Inspect(ctx, key); err != nil || info.Owner != "B" || info.Token != b.Token {
			t.Fatalf("Inspect in tx = %+v, %v; want B with token %d", info, err, b.Token)
		}
		if info, err := outside.Inspect(ctx, key); err != nil || info.Owner != "A" || info.Token != a.Token {
			t.Fatalf("Inspect outside before commit = %+v, %v; want A's lease", info, err)
		}
		if !commit {
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if info, err := outside.Inspect(ctx, key); err != nil || info.Owner != "A" || info.Token != a.Token {
				t.Fatalf("Inspect after rollback = %+v, %v; want A's lease", info, err)
			}
			continue
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if info, err := outside.Inspect(ctx, key); err != nil || info.Owner != "B" || info.Token != b.Token {
			t.Fatalf("Inspect after commit = %+v, %v; want B with token %d", info, err, b.Token)
		}
	}
	if err := outside.Release(ctx, key, "B"); err != nil {
		t.Fatal(err)
	}
}

// TestTransferSendsNoNotification: with Notify, a transfer wakes no waiter
// (the key is never free). Notifications are delivered, and dispatched to
// waiters, in commit order: once a release of another key, committed after
// the transfer, has woken its waiter, a notification of the transfer would
// already have woken the transferred key's.
func TestTransferSendsNoNotification(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	l := newNotifyLocker(t, openDB(t, "postgres", fx.url), fx.url, fx.table, pglocker.SingleStatement(true))
	key, other := testutil.Key(t), testutil.Key(t)
	for _, k := range []string{key, other} {
		if _, err := l.Acquire(ctx, k, "A", time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	transferred, stop, err := l.Watch(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	released, stopOther, err := l.Watch(ctx, other)
	if err != nil {
		t.Fatal(err)
	}
	defer stopOther()
	// The first Watch waited for the listener to connect, so its channel
	// holds a wake-up already (a release may have gone unheard): drop it.
	received(transferred, 0)
	received(released, 0)

	if _, err := l.Transfer(ctx, key, "A", "B", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, other, "A"); err != nil {
		t.Fatal(err)
	}
	if !received(released, 10*time.Second) {
		t.Fatal("the release of the other key woke no waiter")
	}
	if received(transferred, 0) {
		t.Fatal("the transfer woke the key's waiter")
	}
	// The same waiter is woken by the release that follows.
	if err := l.Release(ctx, key, "B"); err != nil {
		t.Fatal(err)
	}
	if !received(transferred, 10*time.Second) {
		t.Fatal("the release after the transfer woke no waiter")
	}
}

// TestTransferTokenDrawnUnderKeyLock: Transfer draws its token under the
// key's advisory lock, as Acquire does, so it cannot store a token smaller
// than one drawn by a concurrent acquirer of the key (here: a session that
// holds the advisory lock and draws from the sequence while the transfer
// waits).
func TestTransferTokenDrawnUnderKeyLock(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	table := testutil.PostgresTable(t, "transfer_keylock")
	n, _ := migrations.ParseTable(table)
	db := openDB(t, "postgres", fx.url)
	l := newLocker(t, db, table)
	key := testutil.Key(t)
	a, err := l.Acquire(ctx, key, "A", time.Minute)
	if err != nil {
		t.Fatal(err)
	}

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
		lease, err := l.Transfer(ctx, key, "A", "B", time.Minute)
		if err != nil {
			t.Errorf("Transfer: %v", err)
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
	lease := <-done
	if lease.Token <= drawn || lease.Token <= a.Token {
		t.Fatalf("token %d drawn before the key lock was free (another drew %d under it; A had %d)", lease.Token, drawn, a.Token)
	}
	if err := l.Release(ctx, key, "B"); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkTransfer compares one Transfer with one Acquire on a single
// connection, per driver and acquire mode: acquire takes a fresh key each
// time (nothing to release), transfer passes one key back and forth between
// two owners, and acquire+release is the lock cycle a transfer replaces.
// Transfer is one autocommit statement, as Acquire is with SingleStatement.
func BenchmarkTransfer(b *testing.B) {
	for _, sqlDriver := range sqlDrivers {
		for _, single := range []bool{false, true} {
			mode := map[bool]string{false: "tx", true: "single"}[single]
			b.Run(fmt.Sprintf("driver=%s/mode=%s", sqlDriver, mode), func(b *testing.B) {
				fx := setUp(b)
				db := openDB(b, sqlDriver, fx.url)
				db.SetMaxOpenConns(1)
				l, err := pglocker.New(db, pglocker.SingleStatement(single), pglocker.Table(fx.table))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { l.Close() })
				benchTransfer(b, l)
			})
		}
	}
}

func benchTransfer(b *testing.B, l transferLocker) {
	const ttl = 10 * time.Second
	ctx := context.Background()
	b.Run("op=acquire", func(b *testing.B) {
		key := testutil.Key(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := l.Acquire(ctx, key+"/"+strconv.Itoa(i), "bench", ttl); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("op=transfer", func(b *testing.B) {
		key := testutil.Key(b)
		if _, err := l.Acquire(ctx, key, "o0", ttl); err != nil {
			b.Fatal(err)
		}
		owners := [2]string{"o0", "o1"}
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := l.Transfer(ctx, key, owners[i%2], owners[(i+1)%2], ttl); err != nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		if err := l.Release(ctx, key, owners[b.N%2]); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("op=acquire+release", func(b *testing.B) {
		key := testutil.Key(b)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := l.Acquire(ctx, key, "bench", ttl); err != nil {
				b.Fatal(err)
			}
			if err := l.Release(ctx, key, "bench"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

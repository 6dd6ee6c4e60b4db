package pglocker_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

// appURL returns the fixture's URL with a unique application_name, which
// names the listener's session in pg_stat_activity.
func appURL(t testing.TB, base string) (string, string) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	name := "dlock-listener-" + hex.EncodeToString(b[:])
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	return u.String(), name
}

// listenerPIDs returns the backend pids of the sessions named app.
func listenerPIDs(t testing.TB, db *sql.DB, app string) []int {
	t.Helper()
	rows, err := db.Query(`SELECT pid FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid`, app)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var pids []int
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	return pids
}

// waitListening waits until a session named app (other than the one with pid
// not) has run LISTEN and is idle: its LISTEN is in place. It returns the
// session's pid.
func waitListening(t testing.TB, db *sql.DB, app string, not ...int) int {
	t.Helper()
	exclude := 0
	if len(not) > 0 {
		exclude = not[0]
	}
	var pid int
	waitFor(t, app+" to LISTEN", 10*time.Second, func() bool {
		err := db.QueryRow(`SELECT pid FROM pg_stat_activity
			WHERE application_name = $1 AND state = 'idle' AND starts_with(query, 'LISTEN ')
			  AND pid <> $2`, app, exclude).Scan(&pid)
		if errors.Is(err, sql.ErrNoRows) {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		return true
	})
	return pid
}

func newNotifyLocker(t testing.TB, db pglocker.DB, dsn, table string, opts ...pglocker.Option) *pglocker.Locker {
	t.Helper()
	l, err := pglocker.New(db, append(opts, pglocker.Table(table), pglocker.Notify(dsn))...)
	if err != nil {
		t.Fatalf("pglocker.New: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// received reports whether ch has a value within d.
func received(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	default:
	}
	if d <= 0 {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
		return true
	case <-t.C:
		return false
	}
}

func TestNotifyOptionChecks(t *testing.T) {
	t.Parallel()
	db, err := sql.Open("postgres", "postgres://127.0.0.1:1/none?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, dsn := range []string{"", "postgres://[::1", "host='unterminated"} {
		if _, err := pglocker.New(db, pglocker.Notify(dsn)); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("New(Notify(%q)) = %v; want ErrInvalidOption", dsn, err)
		}
	}
	// With Open, the empty string means Open's own connection string.
	l, err := pglocker.Open("postgres://127.0.0.1:1/none?sslmode=disable", pglocker.Notify(""))
	if err != nil {
		t.Fatalf("Open(Notify(\"\")) = %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Without Notify, Watch fails at once: waiting Lock calls poll.
	p, err := pglocker.New(db)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Watch(context.Background(), "k"); err == nil {
		t.Fatal("Watch without Notify succeeded")
	}
	if _, _, err := p.Watch(context.Background(), ""); !errors.Is(err, locker.ErrInvalidKey) {
		t.Fatalf("Watch(\"\") = %v; want ErrInvalidKey", err)
	}
}

// A waiter that polls once an hour gets the lock as soon as it is released,
// on a table whose long non-ASCII name makes a hashed channel name, with
// either database/sql driver (the listener is lib/pq's either way).
func TestNotifyWakesHourlyPoller(t *testing.T) {
	t.Parallel()
	for _, sqlDriver := range sqlDrivers {
		t.Run(sqlDriver, func(t *testing.T) {
			t.Parallel()
			testNotifyWakesHourlyPoller(t, sqlDriver)
		})
	}
}

func testNotifyWakesHourlyPoller(t *testing.T, sqlDriver string) {
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	table := testutil.PostgresTable(t, strings.Repeat("ü", 23)+sqlDriver[:1]) // 47 bytes, schema-qualified
	dsn, app := appURL(t, fx.url)
	holder := newNotifyLocker(t, openDB(t, sqlDriver, fx.url), fx.url, table)
	waiting := newNotifyLocker(t, openDB(t, sqlDriver, fx.url), dsn, table)
	fh, err := locker.NewFactory(holder)
	if err != nil {
		t.Fatal(err)
	}
	fw, err := locker.NewFactory(waiting)
	if err != nil {
		t.Fatal(err)
	}
	key := testutil.Key(t)
	a, b := fh.NewLock(key), fw.NewLock(key)
	if err := a.TryLock(ctx); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		got <- b.Lock(ctx, locker.Retries(1), locker.Interval(time.Hour))
	}()
	waitListening(t, db, app)
	released := time.Now()
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-got:
		if err != nil {
			t.Fatalf("b.Lock = %v", err)
		}
		t.Logf("hand-off %v after Unlock", time.Since(released))
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter was not woken by the release")
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// Many keys and waiters share one listener connection; a release wakes the
// waiters of its key and no others, a release that deletes nothing wakes
// nobody, and stopping one waiter leaves the others of its key watching.
func TestNotifyManyKeysOneListener(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	dsn, app := appURL(t, fx.url)
	w := newNotifyLocker(t, openDB(t, "postgres", fx.url), dsn, fx.table)
	rel := newNotifyLocker(t, openDB(t, "postgres", fx.url), fx.url, fx.table)
	const keys, perKey = 40, 4
	type watch struct {
		ch   <-chan struct{}
		stop func()
	}
	names := make([]string, keys)
	watches := make([][]watch, keys)
	for k := range names {
		names[k] = fmt.Sprintf("%s-%d", testutil.Key(t), k)
		if _, err := rel.Acquire(ctx, names[k], "holder", time.Minute); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < perKey; i++ {
			ch, stop, err := w.Watch(ctx, names[k])
			if err != nil {
				t.Fatalf("Watch: %v", err)
			}
			defer stop()
			watches[k] = append(watches[k], watch{ch, stop})
		}
	}
	// The first Watch waited for the connection and was woken once for it.
	for _, ws := range watches {
		for _, wt := range ws {
			received(wt.ch, 0)
		}
	}
	if pids := listenerPIDs(t, db, app); len(pids) != 1 {
		t.Fatalf("%d listener sessions, want 1", len(pids))
	}
	// Nothing is deleted: no notification.
	if err := rel.Release(ctx, names[0], "not-the-holder"); !errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("Release by another = %v", err)
	}
	// One waiter of key 1 stops watching; the others still hear.
	watches[1][0].stop()
	watches[1][0].stop() // idempotent
	for k := 1; k < keys; k += 2 {
		if err := rel.Release(ctx, names[k], "holder"); err != nil {
			t.Fatal(err)
		}
	}
	for k := 1; k < keys; k += 2 {
		for i, wt := range watches[k] {
			if k == 1 && i == 0 {
				continue
			}
			if !received(wt.ch, 10*time.Second) {
				t.Fatalf("waiter %d of released key %d not woken", i, k)
			}
		}
	}
	// The releases were delivered in order after the stray one: any
	// wake-up of an even key would be here by now.
	if received(watches[1][0].ch, 0) {
		t.Error("a stopped waiter was woken")
	}
	for k := 0; k < keys; k += 2 {
		for i, wt := range watches[k] {
			if received(wt.ch, 0) {
				t.Errorf("waiter %d of held key %d woken", i, k)
			}
		}
	}
}

// Close ends the listener's session and leaves no goroutine, when connected
// and when the server cannot be reached; Watch fails afterwards.
func TestNotifyCloseLeavesNothing(t *testing.T) {
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	ignore := goleak.IgnoreCurrent()

	dsn, app := appURL(t, fx.url)
	l, err := pglocker.Open(dsn, pglocker.Table(fx.table), pglocker.Notify(""))
	if err != nil {
		t.Fatal(err)
	}
	_, stop, err := l.Watch(ctx, testutil.Key(t))
	if err != nil {
		t.Fatalf("Watch: %v", err)
	}
	defer stop()
	waitListening(t, db, app)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, _, err := l.Watch(ctx, testutil.Key(t)); err == nil {
		t.Fatal("Watch after Close succeeded")
	}
	waitFor(t, "the listener session to end", 10*time.Second, func() bool {
		return len(listenerPIDs(t, db, app)) == 0
	})

	// A server that cannot be reached: Watch fails, Close still ends it all.
	down := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/test?sslmode=disable", testutil.FreePort(t))
	d, err := pglocker.New(db, pglocker.Table(fx.table), pglocker.Notify(down))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Watch(ctx, "k"); err == nil {
		t.Fatal("Watch with an unreachable listener succeeded")
	}
	start := time.Now()
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("Close of a reconnecting listener took %v", time.Since(start))
	if err := goleak.Find(ignore); err != nil {
		t.Fatal(err)
	}
}

// A listener whose session is killed reconnects, LISTENs again and wakes
// every waiter (a release may have been lost meanwhile); releases are heard
// again afterwards.
func TestNotifyListenerKilledRecovers(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	db := openDB(t, "postgres", fx.url)
	dsn, app := appURL(t, fx.url)
	l := newNotifyLocker(t, openDB(t, "postgres", fx.url), dsn, fx.table)
	key := testutil.Key(t)
	if _, err := l.Acquire(ctx, key, "holder", time.Minute); err != nil {
		t.Fatal(err)
	}
	ch, stop, err := l.Watch(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	pid := waitListening(t, db, app)
	var killed bool
	if err := db.QueryRowContext(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&killed); err != nil || !killed {
		t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, killed, err)
	}
	if !received(ch, 15*time.Second) {
		t.Fatal("the waiter was not woken after the listener reconnected")
	}
	waitListening(t, db, app, pid) // a new session
	waitFor(t, "the killed session to go", 10*time.Second, func() bool {
		return len(listenerPIDs(t, db, app)) == 1
	})
	// Watches and releases work again on the new session.
	var ch2 <-chan struct{}
	waitFor(t, "Watch to succeed again", 10*time.Second, func() bool {
		c, s, err := l.Watch(ctx, key)
		if err != nil {
			return false
		}
		t.Cleanup(s)
		ch2 = c
		return true
	})
	if received(ch, 0) {
		t.Log("a second wake-up of the first waiter (harmless)")
	}
	if err := l.Release(ctx, key, "holder"); err != nil {
		t.Fatal(err)
	}
	if !received(ch, 10*time.Second) || !received(ch2, 10*time.Second) {
		t.Fatal("a release after the reconnection was not heard")
	}
}

// Waiters blocked in Lock on one key with a notifying Locker hand the lock
// on one after another, each woken by the previous holder's release.
func TestNotifyHandOffChain(t *testing.T) {
	t.Parallel()
	fx := setUp(t)
	ctx := testCtx(t)
	l := newNotifyLocker(t, openDB(t, "postgres", fx.url), fx.url, fx.table)
	f, err := locker.NewFactory(l)
	if err != nil {
		t.Fatal(err)
	}
	key := testutil.Key(t)
	const n = 6
	start := time.Now()
	var holders, overlaps, done atomic.Int64
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			lk := f.NewLock(key)
			// A release between a failed attempt and the watch is unheard
			// and costs one interval: keep it short enough for a test.
			if err := lk.Lock(ctx, locker.Retries(locker.Unlimited), locker.Interval(2*time.Second)); err != nil {
				errs <- err
				return
			}
			if holders.Add(1) > 1 {
				overlaps.Add(1)
			}
			time.Sleep(5 * time.Millisecond)
			holders.Add(-1)
			errs <- lk.Unlock(ctx)
			done.Add(1)
		}()
	}
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%d of %d waiters got the lock; the rest were not woken", done.Load(), n)
		}
	}
	if overlaps.Load() != 0 {
		t.Fatalf("%d overlaps", overlaps.Load())
	}
	t.Logf("%d hand-offs in %v", n, time.Since(start))
}

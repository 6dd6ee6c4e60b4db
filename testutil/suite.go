package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"regexp"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/locker"
)

// Driver describes a storage driver to the conformance suite.
type Driver struct {
	// Name labels the driver in messages, e.g. "pglocker/lib/pq".
	Name string

	// New returns a Locker with a connection pool of its own, on the shared
	// test namespace (table, prefix, collection). It closes what it opened in
	// t.Cleanup. The suite calls it many times to get independent clients, and
	// in re-executed child processes of the test binary.
	New func(t testing.TB) locker.Locker

	// NewNamespace, when set, returns a Locker on another namespace (another
	// table, key prefix or collection) named after ns; the suite checks that
	// namespaces never interfere.
	NewNamespace func(t testing.TB, ns string) locker.Locker

	// Broken, when set, returns a Locker whose storage fails every call with
	// a real backend error (a closed port, bad credentials, a missing table).
	Broken func(t testing.TB) locker.Locker

	// ClockError is how far two clients' views of the storage's clock may
	// differ (zero when the storage decides expiry by its own clock alone).
	// Timing checks of expiry allow this much.
	ClockError time.Duration

	// InProcess says the storage lives inside the test process (memlocker):
	// the race between OS processes does not apply to it and is not run.
	InProcess bool

	// TakeoverRaceUnsafe, when non-empty, says why this server cannot prove
	// mutual exclusion when many clients take over one expired lease at once
	// (FerretDB 1.x reads then writes without a re-check). The suite then
	// reports that one case as unproven instead of running it.
	TakeoverRaceUnsafe string
}

// childEnv marks a re-executed test binary running the multi-process race;
// its value is the name of the test that called RunConformance.
const childEnv = "DLOCK_CONFORMANCE_CHILD"

// RunConformance runs every guarantee of dlock's contract (SPEC.md) against
// d: mutual exclusion between goroutines, clients and OS processes, expiry,
// owner-checked release and refresh, fencing, storage-clock validity,
// contention versus failure, cancellation, isolation, no leaks, every
// bad-input row, the lock lifetime (auto-refresh, loss, Do), and, for
// drivers that are a [locker.Transferer], transfer and hand-off.
//
// Call it from a Test function of the driver's package. The multi-process
// test re-executes the test binary with -test.run selecting the calling
// test, so d.New must work in a fresh process of the same binary.
func RunConformance(t *testing.T, d Driver) {
	t.Helper()
	if d.New == nil {
		t.Fatal("testutil.Driver.New is nil")
	}
	if os.Getenv(childEnv) != "" {
		if os.Getenv(childEnv) == t.Name() {
			runChild(t, d)
		}
		return
	}
	s := &suite{d: d, top: t.Name()}
	t.Run("Guarantees", func(t *testing.T) {
		t.Run("1_MutualExclusion", s.mutualExclusion)
		t.Run("2_NoStarvation", s.noStarvation)
		t.Run("3_OwnerChecked", s.ownerChecked)
		t.Run("4_Fencing", s.fencing)
		t.Run("5_StorageClock", s.storageClock)
		t.Run("6_ContentionIsNotFailure", s.contention)
		t.Run("7_Cancellation", s.cancellation)
		t.Run("8_Isolation", s.isolation)
		t.Run("Options", s.options)
		t.Run("BadInput", s.badInput)
		t.Run("Lifetime", s.lifetime)
		t.Run("Handoff", s.handoff)
	})
	// Guarantee 9 runs last, alone, once every other test is done.
	t.Run("9_NoLeaks", s.noLeaks)
}

type suite struct {
	d   Driver
	top string // name of the test that called RunConformance
}

// factory returns a Factory over a new client of the driver.
func (s *suite) factory(t testing.TB, opts ...locker.Option) *locker.Factory {
	t.Helper()
	f, err := locker.NewFactory(s.d.New(t), opts...)
	if err != nil {
		t.Fatalf("NewFactory: %v", err)
	}
	return f
}

// Key returns a key unique to this test and run, so tests never share keys.
func Key(t testing.TB) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := strings.NewReplacer(" ", "_", "/", ".").Replace(t.Name())
	if len(name) > 200 {
		name = name[len(name)-200:]
	}
	return "dlock-test." + name + "." + hex.EncodeToString(b[:])
}

// ctx returns a context that ends with the test, bounded by timeout.
func testCtx(t testing.TB, timeout time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func wantIs(t testing.TB, err error, target error, what string) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: got %v, want an error matching %v", what, err, target)
	}
}

// inspect returns Inspect's answer for key on l, failing the test on error.
func inspect(t testing.TB, l locker.Locker, key string) locker.Info {
	t.Helper()
	info, err := l.Inspect(testCtx(t, 10*time.Second), key)
	must(t, err, "Inspect")
	return info
}

// waitFor polls cond every step until it returns true or timeout passes.
func waitFor(t testing.TB, timeout, step time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(step)
	}
}

// waitFree waits until key is free by the storage's own account.
func waitFree(t testing.TB, l locker.Locker, key string, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, 5*time.Millisecond, "key "+key+" to be free", func() bool {
		return !inspect(t, l, key).Held()
	})
}

// counting wraps a Locker, counting calls and optionally blocking Refresh.
type counting struct {
	locker.Locker
	acquires, refreshes, releases, inspects atomic.Int64
	blockRefresh                            atomic.Bool
}

func (c *counting) Acquire(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	c.acquires.Add(1)
	return c.Locker.Acquire(ctx, key, owner, ttl)
}

func (c *counting) Refresh(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	c.refreshes.Add(1)
	if c.blockRefresh.Load() {
		<-ctx.Done()
		return locker.Lease{}, ctx.Err()
	}
	return c.Locker.Refresh(ctx, key, owner, ttl)
}

func (c *counting) Release(ctx context.Context, key, owner string) error {
	c.releases.Add(1)
	return c.Locker.Release(ctx, key, owner)
}

func (c *counting) Inspect(ctx context.Context, key string) (locker.Info, error) {
	c.inspects.Add(1)
	return c.Locker.Inspect(ctx, key)
}

func (c *counting) calls() int64 {
	return c.acquires.Load() + c.refreshes.Load() + c.releases.Load() + c.inspects.Load()
}

// runPattern turns a test name into a -test.run pattern selecting exactly it.
func runPattern(name string) string {
	parts := strings.Split(name, "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	return strings.Join(parts, "/")
}

// lockerGoroutines returns the stacks of goroutines running dlock's locker
// package code.
func lockerGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var found []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "github.com/dlock-go/dlock/locker.") && !strings.Contains(g, "testutil.lockerGoroutines") {
			found = append(found, g)
		}
	}
	return found
}

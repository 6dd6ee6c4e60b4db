package testutil

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/locker"
)

// Options: defaults and the exact retry semantics of SPEC.md.
func (s *suite) options(t *testing.T) {
	// A backoff that records the retries it is asked about and never waits.
	type recorder struct{ retries atomic.Int64 }
	policy := func(r *recorder) locker.Backoff {
		return locker.BackoffFunc(func(int) time.Duration { r.retries.Add(1); return 0 })
	}
	held := func(t *testing.T) (string, *counting, *locker.Factory) {
		key := Key(t)
		ctx := testCtx(t, 10*time.Second)
		holder := s.factory(t).NewLock(key)
		must(t, holder.TryLock(ctx), "holder.TryLock")
		t.Cleanup(func() { _ = holder.Unlock(context.Background()) })
		c := &counting{Locker: s.d.New(t)}
		f, err := locker.NewFactory(c)
		must(t, err, "NewFactory")
		return key, c, f
	}
	cases := []struct {
		name     string
		opts     []locker.Option
		attempts int64
	}{
		{"DefaultRetriesMeanFourAttempts", nil, 4},
		{"RetriesZeroMeansOneAttempt", []locker.Option{locker.Retries(0)}, 1},
		{"RetriesTwoMeansThreeAttempts", []locker.Option{locker.Retries(2)}, 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			key, c, f := held(t)
			var r recorder
			err := f.NewLock(key).Lock(testCtx(t, 10*time.Second), append([]locker.Option{locker.WithBackoff(policy(&r))}, tc.opts...)...)
			wantIs(t, err, locker.ErrNotObtained, "Lock of a held key")
			if got := c.acquires.Load(); got != tc.attempts {
				t.Fatalf("%d attempts, want %d", got, tc.attempts)
			}
			// One wait between attempts, none after the last.
			if got := r.retries.Load(); got != tc.attempts-1 {
				t.Fatalf("waited %d times for %d attempts, want %d", got, tc.attempts, tc.attempts-1)
			}
		})
	}
	t.Run("TryLockMakesOneAttempt", func(t *testing.T) {
		t.Parallel()
		key, c, f := held(t)
		wantIs(t, f.NewLock(key, locker.Retries(5)).TryLock(testCtx(t, 10*time.Second)), locker.ErrNotObtained, "TryLock")
		if got := c.acquires.Load(); got != 1 {
			t.Fatalf("TryLock made %d attempts", got)
		}
	})
	t.Run("DefaultTTLIsTenSeconds", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		ctx := testCtx(t, 10*time.Second)
		l := s.factory(t).NewLock(key)
		must(t, l.TryLock(ctx), "TryLock")
		defer l.Unlock(ctx)
		if ttl := inspect(t, s.d.New(t), key).TTL; ttl < 9*time.Second || ttl > locker.DefaultTTL+s.d.ClockError {
			t.Fatalf("default lease has %v left, want about 10s", ttl)
		}
	})
	t.Run("IntervalBetweenAttempts", func(t *testing.T) {
		t.Parallel()
		key, c, f := held(t)
		start := time.Now()
		err := f.NewLock(key).Lock(testCtx(t, 10*time.Second), locker.Retries(2), locker.Interval(40*time.Millisecond))
		wantIs(t, err, locker.ErrNotObtained, "Lock")
		if c.acquires.Load() != 3 || time.Since(start) < 80*time.Millisecond {
			t.Fatalf("%d attempts in %v, want 3 attempts at least 2×40ms apart", c.acquires.Load(), time.Since(start))
		}
	})
	t.Run("SubSecondInterval", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		ctx := testCtx(t, 10*time.Second)
		a, b := s.factory(t).NewLock(key), s.factory(t).NewLock(key)
		must(t, a.TryLock(ctx, locker.TTL(300*time.Millisecond)), "a.TryLock")
		// b's retries, 20ms apart, outlast a's 300ms lease.
		must(t, b.Lock(ctx, locker.Retries(200), locker.Interval(20*time.Millisecond)), "b.Lock")
		must(t, b.Unlock(ctx), "b.Unlock")
	})
}

// BadInput: every row of SPEC.md's table: a clear error before any I/O.
func (s *suite) badInput(t *testing.T) {
	t.Parallel()
	c := &counting{Locker: s.d.New(t)}
	f, err := locker.NewFactory(c)
	must(t, err, "NewFactory")
	ctx := testCtx(t, 10*time.Second)

	for _, tc := range []struct {
		name string
		key  string
	}{
		{"Empty", ""},
		{"TooLong", strings.Repeat("k", locker.MaxKeyLen+1)},
		{"NotUTF8", "bad-\xff-key"},
	} {
		l := f.NewLock(tc.key)
		wantIs(t, l.Lock(ctx), locker.ErrInvalidKey, tc.name+" key: Lock")
		wantIs(t, l.TryLock(ctx), locker.ErrInvalidKey, tc.name+" key: TryLock")
		wantIs(t, l.Refresh(ctx), locker.ErrInvalidKey, tc.name+" key: Refresh")
		wantIs(t, l.Unlock(ctx), locker.ErrNotHeld, tc.name+" key: Unlock")
		// Straight at the driver, too: it must refuse, not panic or store.
		_, err := c.Locker.Acquire(ctx, tc.key, "owner", time.Second)
		wantIs(t, err, locker.ErrInvalidKey, tc.name+" key: Locker.Acquire")
		_, err = c.Locker.Inspect(ctx, tc.key)
		wantIs(t, err, locker.ErrInvalidKey, tc.name+" key: Locker.Inspect")
	}
	for _, tc := range []struct {
		name string
		opt  locker.Option
	}{
		{"TTLZero", locker.TTL(0)},
		{"TTLNegative", locker.TTL(-time.Second)},
		{"TTLUnderOneMillisecond", locker.TTL(999 * time.Microsecond)},
		{"RetriesNegative", locker.Retries(-1)},
		{"IntervalNegative", locker.Interval(-time.Millisecond)},
		{"NilBackoff", locker.WithBackoff(nil)},
		{"AutoRefreshNotPositive", locker.AutoRefreshEvery(0)},
	} {
		l := f.NewLock(Key(t))
		wantIs(t, l.Lock(ctx, tc.opt), locker.ErrInvalidOption, tc.name+": Lock")
		wantIs(t, f.NewLock(Key(t), tc.opt).TryLock(ctx), locker.ErrInvalidOption, tc.name+": NewLock option")
		_, err := locker.NewFactory(c, tc.opt)
		wantIs(t, err, locker.ErrInvalidOption, tc.name+": NewFactory option")
	}
	wantIs(t, f.NewLock(Key(t)).Lock(ctx, locker.TTL(time.Second), locker.AutoRefreshEvery(time.Second)),
		locker.ErrInvalidOption, "auto-refresh period not under the TTL")
	for _, ttl := range []time.Duration{0, -time.Second, time.Microsecond} {
		_, err := c.Locker.Acquire(ctx, Key(t), "owner", ttl)
		wantIs(t, err, locker.ErrInvalidOption, "Locker.Acquire with ttl "+ttl.String())
	}
	_, err = c.Locker.Acquire(ctx, Key(t), "", time.Second)
	wantIs(t, err, locker.ErrInvalidOption, "Locker.Acquire with an empty owner")
	if n := c.calls(); n != 0 {
		t.Fatalf("bad input reached the storage %d times", n)
	}

	_, err = locker.NewFactory(nil)
	wantIs(t, err, locker.ErrInvalidOption, "NewFactory(nil)")
	wantIs(t, f.Do(ctx, Key(t), nil), locker.ErrInvalidOption, "Do with a nil function")

	// The largest and a multi-byte key work.
	for _, key := range []string{strings.Repeat("k", locker.MaxKeyLen-8) + Key(t)[len(Key(t))-8:], "ключ-" + Key(t)} {
		l := f.NewLock(key)
		must(t, l.TryLock(ctx), "TryLock of a valid key")
		if info := inspect(t, c.Locker, key); info.Owner != l.Owner() {
			t.Fatalf("key of %d bytes: Inspect owner %q, want %q", len(key), info.Owner, l.Owner())
		}
		must(t, l.Unlock(ctx), "Unlock")
	}

	// Unlock of a lock never locked, or twice.
	l := f.NewLock(Key(t))
	wantIs(t, l.Unlock(ctx), locker.ErrNotHeld, "Unlock never locked")
	must(t, l.TryLock(ctx), "TryLock")
	tok, owner := l.Token(), l.Owner()
	// Lock on a handle that already holds: an error, not a second lease.
	wantIs(t, l.Lock(ctx), locker.ErrAlreadyHeld, "Lock on a holding handle")
	wantIs(t, l.TryLock(ctx), locker.ErrAlreadyHeld, "TryLock on a holding handle")
	if info := inspect(t, c.Locker, l.Key()); info.Owner != owner || info.Token != tok || l.Token() != tok {
		t.Fatalf("a second Lock changed the lease: %+v", info)
	}
	must(t, l.Unlock(ctx), "Unlock")
	wantIs(t, l.Unlock(ctx), locker.ErrNotHeld, "second Unlock")
	if err := l.Unlock(ctx); errors.Is(err, locker.ErrLost) {
		t.Fatalf("Unlock after Unlock reports a loss: %v", err)
	}
}

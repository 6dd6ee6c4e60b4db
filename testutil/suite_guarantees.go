package testutil

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/locker"
)

// Guarantee 2: an unrefreshed lease frees after its TTL, and a takeover
// starts a fresh TTL.
func (s *suite) noStarvation(t *testing.T) {
	for _, ttl := range []time.Duration{300 * time.Millisecond, 1200 * time.Millisecond} {
		t.Run("TTL="+ttl.String(), func(t *testing.T) {
			t.Parallel()
			key := Key(t)
			a, b := s.factory(t).NewLock(key), s.factory(t).NewLock(key)
			ctx := testCtx(t, 30*time.Second)
			sent := time.Now()
			must(t, a.TryLock(ctx, locker.TTL(ttl)), "a.TryLock")
			// b polls until the storage lets it in; that must not be before a's TTL.
			const fresh = 5 * time.Second // b's own lease, long enough to observe
			waitFor(t, ttl+5*time.Second, 2*time.Millisecond, "b to take over", func() bool {
				err := b.TryLock(ctx, locker.TTL(fresh))
				if err != nil && !errors.Is(err, locker.ErrNotObtained) {
					t.Fatalf("b.TryLock: %v", err)
				}
				return err == nil
			})
			if held := time.Since(sent); held < ttl-s.d.ClockError {
				t.Fatalf("b took over %v after a's acquire was sent, before a's TTL of %v", held, ttl)
			}
			// The takeover started a fresh TTL: a third client is still kept out
			// and the storage reports most of a TTL left.
			info := inspect(t, s.d.New(t), key)
			if info.Owner != b.Owner() || info.TTL <= fresh/2 || info.TTL > fresh+s.d.ClockError {
				t.Fatalf("after takeover Inspect = %+v, want owner %s with a fresh TTL near %v", info, b.Owner(), fresh)
			}
			wantIs(t, s.factory(t).NewLock(key).TryLock(ctx), locker.ErrNotObtained, "third client after takeover")
			must(t, b.Unlock(ctx), "b.Unlock")
		})
	}
}

// Guarantee 3: only the owner can release or refresh, even after its own
// lease expired and another took the key.
func (s *suite) ownerChecked(t *testing.T) {
	takeover := func(t *testing.T) (stale, fresh *locker.Lock, l locker.Locker) {
		key := Key(t)
		l = s.d.New(t)
		stale, fresh = s.factory(t).NewLock(key), s.factory(t).NewLock(key)
		ctx := testCtx(t, 30*time.Second)
		must(t, stale.TryLock(ctx, locker.TTL(250*time.Millisecond)), "stale.TryLock")
		waitFor(t, 10*time.Second, 2*time.Millisecond, "takeover", func() bool {
			return fresh.TryLock(ctx, locker.TTL(10*time.Second)) == nil
		})
		return stale, fresh, l
	}
	t.Run("StaleUnlockAfterTakeover", func(t *testing.T) {
		t.Parallel()
		stale, fresh, l := takeover(t)
		ctx := testCtx(t, 10*time.Second)
		err := stale.Unlock(ctx)
		wantIs(t, err, locker.ErrNotHeld, "stale Unlock")
		if info := inspect(t, l, fresh.Key()); info.Owner != fresh.Owner() || info.Token != fresh.Token() {
			t.Fatalf("stale Unlock changed the new owner's lease: %+v", info)
		}
		must(t, fresh.Unlock(ctx), "fresh.Unlock")
	})
	t.Run("StaleRefreshAfterTakeover", func(t *testing.T) {
		t.Parallel()
		stale, fresh, l := takeover(t)
		ctx := testCtx(t, 10*time.Second)
		before := inspect(t, l, fresh.Key())
		wantIs(t, stale.Refresh(ctx), locker.ErrNotHeld, "stale Refresh")
		// Straight at the storage too, past the handle's own bookkeeping.
		_, err := l.Refresh(ctx, fresh.Key(), stale.Owner()+"x", time.Hour)
		wantIs(t, err, locker.ErrNotHeld, "Locker.Refresh by a stranger")
		after := inspect(t, l, fresh.Key())
		if after.Owner != fresh.Owner() || after.Token != before.Token || after.TTL > before.TTL {
			t.Fatalf("stale Refresh changed the lease: before %+v, after %+v", before, after)
		}
		must(t, fresh.Unlock(ctx), "fresh.Unlock")
	})
	t.Run("StrangerReleaseAndRefresh", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		l := s.d.New(t)
		ctx := testCtx(t, 10*time.Second)
		got, err := l.Acquire(ctx, key, "owner-a", 10*time.Second)
		must(t, err, "Acquire")
		wantIs(t, l.Release(ctx, key, "owner-b"), locker.ErrNotHeld, "Release by a stranger")
		_, err = l.Refresh(ctx, key, "owner-b", time.Hour)
		wantIs(t, err, locker.ErrNotHeld, "Refresh by a stranger")
		if info := inspect(t, l, key); info.Owner != "owner-a" || info.Token != got.Token {
			t.Fatalf("a stranger changed the lease: %+v", info)
		}
		wantIs(t, l.Release(ctx, Key(t), "owner-a"), locker.ErrNotHeld, "Release of a key never locked")
		must(t, l.Release(ctx, key, "owner-a"), "Release by the owner")
		wantIs(t, l.Release(ctx, key, "owner-a"), locker.ErrNotHeld, "second Release")
	})
	t.Run("UnlockAfterOwnExpiry", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		l := s.d.New(t)
		a := s.factory(t).NewLock(key)
		ctx := testCtx(t, 10*time.Second)
		must(t, a.TryLock(ctx, locker.TTL(250*time.Millisecond)), "TryLock")
		waitFree(t, l, key, 5*time.Second)
		err := a.Unlock(ctx)
		wantIs(t, err, locker.ErrNotHeld, "Unlock after the lease expired")
		wantIs(t, err, locker.ErrLost, "Unlock after the lease expired")
		must(t, s.factory(t).NewLock(key).TryLock(ctx), "TryLock of the freed key")
	})
}

// Guarantee 4: tokens strictly increase per key across every way a lease
// ends, including purges of old records.
func (s *suite) fencing(t *testing.T) {
	t.Parallel()
	key := Key(t)
	l := s.d.New(t)
	f := s.factory(t)
	ctx := testCtx(t, 30*time.Second)
	var last int64
	next := func(how string, tok int64) {
		t.Helper()
		if tok <= last {
			t.Fatalf("token after %s = %d, not above the previous %d", how, tok, last)
		}
		last = tok
	}
	a := f.NewLock(key)
	must(t, a.TryLock(ctx), "first TryLock")
	next("first acquisition", a.Token())
	tok := a.Token()
	must(t, a.Refresh(ctx), "Refresh")
	if a.Token() != tok || inspect(t, l, key).Token != tok {
		t.Fatalf("Refresh changed the token: %d → %d", tok, a.Token())
	}
	must(t, a.Unlock(ctx), "Unlock")
	must(t, a.TryLock(ctx), "TryLock after release")
	next("release", a.Token())
	if info := inspect(t, l, key); info.Token != a.Token() {
		t.Fatalf("Inspect token %d, handle token %d", info.Token, a.Token())
	}
	must(t, a.Unlock(ctx), "Unlock")

	// Expiry followed by takeover, and expiry followed by a purge.
	b := f.NewLock(key)
	must(t, b.TryLock(ctx, locker.TTL(250*time.Millisecond)), "short TryLock")
	next("short lease", b.Token())
	waitFree(t, l, key, 5*time.Second)
	c := f.NewLock(key)
	must(t, c.TryLock(ctx, locker.TTL(250*time.Millisecond)), "takeover")
	next("expiry and takeover", c.Token())
	waitFree(t, l, key, 5*time.Second)
	if p, ok := l.(locker.Purger); ok {
		_, err := p.Purge(ctx, 0)
		must(t, err, "Purge")
	}
	d := f.NewLock(key)
	must(t, d.TryLock(ctx), "TryLock after purge")
	next("expiry and purge", d.Token())
	must(t, d.Unlock(ctx), "Unlock")
	if p, ok := l.(locker.Purger); ok {
		_, err := p.Purge(ctx, 0)
		must(t, err, "Purge")
	}
	must(t, d.TryLock(ctx), "TryLock after release and purge")
	next("release and purge", d.Token())
	must(t, d.Unlock(ctx), "Unlock")
}

// Guarantee 5: the client trusts a lease for no longer than its TTL from the
// moment the acquire was sent, and the storage's clock decides expiry.
func (s *suite) storageClock(t *testing.T) {
	t.Parallel()
	key := Key(t)
	ctx := testCtx(t, 30*time.Second)
	const ttl = 2 * time.Second
	a := s.factory(t).NewLock(key)
	must(t, a.TryLock(ctx, locker.TTL(ttl)), "TryLock")
	returned := time.Now()
	time.Sleep(10 * time.Millisecond) // let the monotonic clock move on
	now := time.Now()
	// The lease is counted from before the request went out, so by now less
	// than ttl minus the time since Lock returned can be left.
	if rem, bound := a.Remaining(), ttl-now.Sub(returned); rem <= 0 || rem > bound {
		t.Fatalf("Remaining() = %v, want in (0, %v]", rem, bound)
	}
	info := inspect(t, s.d.New(t), key)
	if info.TTL <= 0 || info.TTL > ttl+s.d.ClockError {
		t.Fatalf("Inspect TTL = %v, want in (0, %v]", info.TTL, ttl)
	}
	must(t, a.Unlock(ctx), "Unlock")
	if a.Remaining() != 0 || a.Held() {
		t.Fatalf("after Unlock: Remaining %v, Held %v", a.Remaining(), a.Held())
	}
}

// Guarantee 6: a lost race is ErrNotObtained; a backend failure is a
// wrapped error, never ErrNotObtained, and holds nothing.
func (s *suite) contention(t *testing.T) {
	t.Run("HeldElsewhere", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		ctx := testCtx(t, 10*time.Second)
		a := s.factory(t).NewLock(key)
		must(t, a.TryLock(ctx), "a.TryLock")
		err := s.factory(t).NewLock(key).TryLock(ctx)
		wantIs(t, err, locker.ErrNotObtained, "b.TryLock")
		_, err = s.d.New(t).Acquire(ctx, key, "other", time.Second)
		wantIs(t, err, locker.ErrNotObtained, "Locker.Acquire of a held key")
		_, err = s.d.New(t).Acquire(ctx, key, a.Owner(), time.Second)
		wantIs(t, err, locker.ErrNotObtained, "Locker.Acquire by the holder itself (not re-entrant)")
		must(t, a.Unlock(ctx), "a.Unlock")
	})
	t.Run("BackendFailure", func(t *testing.T) {
		t.Parallel()
		if s.d.Broken == nil {
			t.Fatal("testutil.Driver.Broken is required: the suite must see a real backend failure")
		}
		broken := &counting{Locker: s.d.Broken(t)}
		f, err := locker.NewFactory(broken)
		must(t, err, "NewFactory")
		ctx := testCtx(t, 30*time.Second)
		l := f.NewLock(Key(t))
		err = l.Lock(ctx, locker.Retries(1), locker.Interval(time.Millisecond))
		if err == nil || errors.Is(err, locker.ErrNotObtained) {
			t.Fatalf("Lock on a broken backend = %v, want a backend error that is not ErrNotObtained", err)
		}
		if n := broken.acquires.Load(); n != 2 {
			t.Fatalf("%d attempts with Retries(1), want 2", n)
		}
		if l.Held() {
			t.Fatal("a failed Lock left the handle holding")
		}
		if _, err := broken.Inspect(ctx, Key(t)); err == nil {
			t.Fatal("Inspect on a broken backend succeeded")
		}
		if err := broken.Release(ctx, Key(t), "x"); err == nil || errors.Is(err, locker.ErrNotHeld) {
			t.Fatalf("Release on a broken backend = %v, want a backend error", err)
		}
	})
}

// Guarantee 7: a cancelled wait returns promptly with an error matching both
// ErrNotObtained and the context's error; a done context does no I/O.
func (s *suite) cancellation(t *testing.T) {
	t.Run("WhileWaiting", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		ctx := testCtx(t, 30*time.Second)
		a := s.factory(t).NewLock(key)
		must(t, a.TryLock(ctx), "a.TryLock")
		wctx, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
		defer cancel()
		start := time.Now()
		err := s.factory(t).NewLock(key).Lock(wctx, locker.Retries(locker.Unlimited), locker.Interval(10*time.Second))
		waited := time.Since(start)
		wantIs(t, err, locker.ErrNotObtained, "Lock cut short")
		wantIs(t, err, context.DeadlineExceeded, "Lock cut short")
		if waited > 5*time.Second {
			t.Fatalf("Lock took %v to notice its context ended after 150ms", waited)
		}
		must(t, a.Unlock(ctx), "a.Unlock")
	})
	t.Run("AlreadyDone", func(t *testing.T) {
		t.Parallel()
		c := &counting{Locker: s.d.New(t)}
		f, err := locker.NewFactory(c)
		must(t, err, "NewFactory")
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		l := f.NewLock(Key(t))
		for name, err := range map[string]error{"Lock": l.Lock(ctx), "TryLock": l.TryLock(ctx)} {
			wantIs(t, err, locker.ErrNotObtained, name)
			wantIs(t, err, context.Canceled, name)
		}
		wantIs(t, l.Refresh(ctx), context.Canceled, "Refresh")
		if n := c.calls(); n != 0 {
			t.Fatalf("a done context made %d storage calls, want 0", n)
		}
	})
}

// Guarantee 8: keys, and namespaces, never interfere.
func (s *suite) isolation(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, 30*time.Second)
	base := Key(t)
	f := s.factory(t)
	keys := []string{base, base + ":token", base + "x", "{" + base + "}", base + "/é", base[:len(base)-1]}
	locks := make([]*locker.Lock, len(keys))
	for i, k := range keys {
		locks[i] = f.NewLock(k)
		must(t, locks[i].TryLock(ctx), "TryLock "+k)
	}
	for i, k := range keys {
		if info := inspect(t, s.d.New(t), k); info.Owner != locks[i].Owner() {
			t.Fatalf("key %q: Inspect owner %q, want %q", k, info.Owner, locks[i].Owner())
		}
		must(t, locks[i].Unlock(ctx), "Unlock "+k)
	}
	if s.d.NewNamespace == nil {
		return
	}
	key := Key(t)
	ns1, ns2 := s.d.NewNamespace(t, "one"), s.d.NewNamespace(t, "two")
	l0 := s.d.New(t)
	for i, l := range []locker.Locker{l0, ns1, ns2} {
		if _, err := l.Acquire(ctx, key, "owner", 10*time.Second); err != nil {
			t.Fatalf("namespace %d: the same key should be free: %v", i, err)
		}
	}
	must(t, ns1.Release(ctx, key, "owner"), "Release in namespace one")
	if !inspect(t, ns2, key).Held() || !inspect(t, l0, key).Held() {
		t.Fatal("a release in one namespace freed the key in another")
	}
	must(t, ns2.Release(ctx, key, "owner"), "Release in namespace two")
	must(t, l0.Release(ctx, key, "owner"), "Release in the default namespace")
}

// Guarantee 9: no goroutine of dlock's outlives Unlock.
func (s *suite) noLeaks(t *testing.T) {
	var refreshes atomic.Int64
	f := s.factory(t, locker.TTL(2*time.Second), locker.AutoRefreshEvery(20*time.Millisecond),
		locker.Observe(func(e locker.Event) {
			if e.Kind == locker.Refreshed {
				refreshes.Add(1)
			}
		}))
	ctx := testCtx(t, 30*time.Second)
	for i := 0; i < 5; i++ {
		l := f.NewLock(Key(t))
		must(t, l.Lock(ctx), "Lock")
		n := refreshes.Load()
		waitFor(t, 5*time.Second, 5*time.Millisecond, "a refresh", func() bool { return refreshes.Load() > n })
		must(t, l.Unlock(ctx), "Unlock")
		must(t, f.Do(ctx, Key(t), func(context.Context) error { return nil }), "Do")
	}
	// Goroutines that end after Unlock returns are leaks too: check at once.
	if g := lockerGoroutines(); len(g) > 0 {
		t.Fatalf("%d goroutines of the locker package outlived Unlock:\n%s", len(g), g[0])
	}
}

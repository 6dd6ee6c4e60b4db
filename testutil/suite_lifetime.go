package testutil

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/locker"
)

// Lifetime: auto-refresh, the lost-lock signal and Do.
func (s *suite) lifetime(t *testing.T) {
	// TTLs here are long enough for a loaded CI machine to schedule a
	// refresh in time; the checks themselves do not depend on timing.
	t.Run("AutoRefreshKeepsLockAcrossTenTTLs", func(t *testing.T) {
		t.Parallel()
		const ttl = 600 * time.Millisecond
		key := Key(t)
		ctx := testCtx(t, 30*time.Second)
		a := s.factory(t).NewLock(key, locker.TTL(ttl), locker.AutoRefresh())
		must(t, a.Lock(ctx), "Lock")
		tok := a.Token()
		other := s.factory(t).NewLock(key)
		until := time.Now().Add(10 * ttl)
		for time.Now().Before(until) {
			wantIs(t, other.TryLock(ctx, locker.TTL(ttl)), locker.ErrNotObtained, "TryLock by another while auto-refreshed")
			if err := a.Err(); err != nil {
				t.Fatalf("auto-refreshed lock reports %v", err)
			}
			time.Sleep(ttl / 5)
		}
		if info := inspect(t, s.d.New(t), key); info.Owner != a.Owner() || info.Token != tok {
			t.Fatalf("after 10 TTLs Inspect = %+v, want the original owner and token %d", info, tok)
		}
		must(t, a.Unlock(ctx), "Unlock")
		select {
		case <-a.Done():
		default:
			t.Fatal("Done not closed after Unlock")
		}
		wantIs(t, context.Cause(a.Context()), locker.ErrNotHeld, "Context cause after Unlock")
	})

	t.Run("BlockedRefreshIsLostBeforeTakeover", func(t *testing.T) {
		t.Parallel()
		const ttl = 600 * time.Millisecond
		key := Key(t)
		ctx := testCtx(t, 30*time.Second)
		c := &counting{Locker: s.d.New(t)}
		c.blockRefresh.Store(true) // the holder's refreshes never get through
		f, err := locker.NewFactory(c, locker.TTL(ttl), locker.AutoRefresh())
		must(t, err, "NewFactory")
		var lost atomic.Int64
		holder := f.NewLock(key, locker.Observe(func(e locker.Event) {
			if e.Kind == locker.Lost {
				lost.Add(1)
			}
		}))
		must(t, holder.Lock(ctx), "holder.Lock")
		work := holder.Context()
		other := s.factory(t).NewLock(key)
		waitFor(t, 10*time.Second, time.Millisecond, "another owner to take over", func() bool {
			return other.TryLock(ctx, locker.TTL(10*time.Second)) == nil
		})
		// The takeover has happened: the holder must already know.
		select {
		case <-holder.Done():
		default:
			t.Fatal("another owner acquired the key while the holder's lock still looked live")
		}
		wantIs(t, context.Cause(work), locker.ErrLost, "holder's context cause")
		wantIs(t, context.Cause(work), locker.ErrNotHeld, "holder's context cause")
		if c.refreshes.Load() == 0 {
			t.Fatal("auto-refresh never tried to refresh")
		}
		if lost.Load() != 1 {
			t.Fatalf("%d Lost events, want 1", lost.Load())
		}
		wantIs(t, holder.Unlock(ctx), locker.ErrLost, "Unlock of a lost lock")
		if info := inspect(t, c, key); info.Owner != other.Owner() {
			t.Fatalf("the lost holder's Unlock disturbed the new owner: %+v", info)
		}
		must(t, other.Unlock(ctx), "other.Unlock")
	})

	t.Run("ExpiryWithoutRefreshIsSignalled", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t, 30*time.Second)
		l := s.factory(t).NewLock(Key(t), locker.TTL(300*time.Millisecond))
		must(t, l.Lock(ctx), "Lock")
		select {
		case <-l.Done():
		case <-time.After(5 * time.Second):
			t.Fatal("Done not closed long after the TTL")
		}
		wantIs(t, l.Err(), locker.ErrLost, "Err after expiry")
		wantIs(t, l.Refresh(ctx), locker.ErrNotHeld, "Refresh after expiry")
		// The handle can be locked again, with a new owner and token.
		owner, tok := l.Owner(), l.Token()
		must(t, l.Lock(ctx, locker.Retries(locker.Unlimited), locker.Interval(5*time.Millisecond)), "Lock again")
		if l.Owner() == owner || l.Token() == tok {
			t.Fatal("a new acquisition reused the old owner or token")
		}
		must(t, l.Unlock(ctx), "Unlock")
	})

	t.Run("RefreshFindingAnotherOwnerIsLost", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		ctx := testCtx(t, 30*time.Second)
		l := s.d.New(t)
		a := s.factory(t).NewLock(key, locker.TTL(250*time.Millisecond))
		must(t, a.Lock(ctx), "Lock")
		owner := a.Owner()
		// Someone takes over in the storage behind the handle's back.
		waitFree(t, l, key, 5*time.Second)
		_, err := l.Acquire(ctx, key, "usurper", 10*time.Second)
		must(t, err, "Acquire by another")
		wantIs(t, a.Refresh(ctx), locker.ErrNotHeld, "Refresh after takeover")
		<-a.Done()
		if info := inspect(t, l, key); info.Owner != "usurper" || owner == "usurper" {
			t.Fatalf("Inspect = %+v", info)
		}
		must(t, l.Release(ctx, key, "usurper"), "Release")
	})

	t.Run("ManualRefreshExtends", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		ctx := testCtx(t, 30*time.Second)
		a := s.factory(t).NewLock(key, locker.TTL(300*time.Millisecond))
		must(t, a.Lock(ctx), "Lock")
		must(t, a.Refresh(ctx, locker.TTL(5*time.Second)), "Refresh")
		if rem := a.Remaining(); rem < time.Second {
			t.Fatalf("Remaining after a 5s refresh = %v", rem)
		}
		if info := inspect(t, s.d.New(t), key); info.TTL < time.Second {
			t.Fatalf("storage TTL after a 5s refresh = %v", info.TTL)
		}
		must(t, a.Unlock(ctx), "Unlock")
	})

	t.Run("Do", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t, 30*time.Second)
		f := s.factory(t, locker.TTL(time.Second))
		l := s.d.New(t)
		free := func(key string) {
			t.Helper()
			if info := inspect(t, l, key); info.Held() {
				t.Fatalf("Do left %q held: %+v", key, info)
			}
		}
		key := Key(t)
		ran := false
		must(t, f.Do(ctx, key, func(ctx context.Context) error {
			ran = inspect(t, l, key).Held() && ctx.Err() == nil
			return nil
		}), "Do")
		if !ran {
			t.Fatal("Do's function did not run under a held lock")
		}
		free(key)

		boom := errors.New("boom")
		key = Key(t)
		wantIs(t, f.Do(ctx, key, func(context.Context) error { return boom }), boom, "Do's error")
		free(key)

		key = Key(t)
		func() {
			defer func() {
				if r := recover(); r != "panic in fn" {
					t.Fatalf("recovered %v, want the function's panic", r)
				}
			}()
			_ = f.Do(ctx, key, func(context.Context) error { panic("panic in fn") })
		}()
		free(key)

		// Held elsewhere: Do runs nothing and reports ErrNotObtained.
		key = Key(t)
		h := f.NewLock(key)
		must(t, h.TryLock(ctx), "TryLock")
		err := f.Do(ctx, key, func(context.Context) error { t.Error("fn ran without the lock"); return nil }, locker.Retries(0))
		wantIs(t, err, locker.ErrNotObtained, "Do on a held key")
		must(t, h.Unlock(ctx), "Unlock")
	})

	t.Run("DoReportsLoss", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t, 30*time.Second)
		c := &counting{Locker: s.d.New(t)}
		c.blockRefresh.Store(true)
		f, err := locker.NewFactory(c)
		must(t, err, "NewFactory")
		fnErr := errors.New("stopped")
		err = f.Do(ctx, Key(t), func(ctx context.Context) error {
			<-ctx.Done() // the lease is lost: the function is told to stop
			return fnErr
		}, locker.TTL(300*time.Millisecond))
		wantIs(t, err, fnErr, "Do's error")
		wantIs(t, err, locker.ErrLost, "Do's error")
	})

	t.Run("WakeOnRelease", func(t *testing.T) {
		t.Parallel()
		if _, ok := s.d.New(t).(locker.Watcher); !ok {
			return // the driver polls; nothing to wake
		}
		key := Key(t)
		ctx := testCtx(t, 30*time.Second)
		a, b := s.factory(t).NewLock(key), s.factory(t).NewLock(key)
		must(t, a.TryLock(ctx), "a.TryLock")
		got := make(chan error, 1)
		var attempts atomic.Int64
		go func() {
			// An hour between polls: only a release notification can let b in.
			got <- b.Lock(ctx, locker.Retries(1), locker.Interval(time.Hour), locker.Observe(func(e locker.Event) {
				attempts.Add(1)
			}))
		}()
		waitFor(t, 10*time.Second, time.Millisecond, "b's first attempt", func() bool { return attempts.Load() > 0 })
		// b may not be subscribed yet when a unlocks; keep re-locking and
		// unlocking a until b gets in, but at most a few times.
		for i := 0; ; i++ {
			if i == 50 {
				t.Fatal("b was never woken by a's releases")
			}
			must(t, a.Unlock(ctx), "a.Unlock")
			select {
			case err := <-got:
				must(t, err, "b.Lock")
				must(t, b.Unlock(ctx), "b.Unlock")
				return
			case <-time.After(100 * time.Millisecond):
			}
			if err := a.TryLock(ctx); err != nil {
				wantIs(t, err, locker.ErrNotObtained, "a.TryLock")
			}
		}
	})

	t.Run("Events", func(t *testing.T) {
		t.Parallel()
		key := Key(t)
		ctx := testCtx(t, 30*time.Second)
		var mu sync.Mutex
		var kinds []locker.EventKind
		obs := locker.Observe(func(e locker.Event) {
			mu.Lock()
			defer mu.Unlock()
			if e.Key != key {
				t.Errorf("event for key %q", e.Key)
			}
			kinds = append(kinds, e.Kind)
		})
		f := s.factory(t, obs, locker.TTL(800*time.Millisecond))
		a, b := f.NewLock(key), f.NewLock(key)
		must(t, a.Lock(ctx), "a.Lock")
		wantIs(t, b.TryLock(ctx), locker.ErrNotObtained, "b.TryLock")
		must(t, a.Refresh(ctx), "a.Refresh")
		must(t, a.Unlock(ctx), "a.Unlock")
		must(t, b.Lock(ctx), "b.Lock")
		<-b.Done()
		// The Lost event follows the closing of Done.
		waitFor(t, 5*time.Second, time.Millisecond, "the Lost event", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return kinds[len(kinds)-1] == locker.Lost
		})
		_ = b.Unlock(ctx)
		mu.Lock()
		defer mu.Unlock()
		want := []locker.EventKind{locker.Acquired, locker.Contended, locker.Refreshed, locker.Released, locker.Acquired, locker.Lost, locker.Released}
		if len(kinds) != len(want) {
			t.Fatalf("events %v, want %v", kinds, want)
		}
		for i := range want {
			if kinds[i] != want[i] {
				t.Fatalf("events %v, want %v", kinds, want)
			}
		}
	})
}

package locker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/drivers/memlocker"
	"github.com/dlock-go/dlock/locker"
)

// spy is an in-memory Transferer that counts storage calls and can make a
// Transfer block or fail.
type spy struct {
	*memlocker.Locker
	acquires, releases, transfers atomic.Int64

	// transfer, if set, replaces Transfer; it may call s.Locker.Transfer.
	transfer func(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error)
}

func newSpy() *spy { return &spy{Locker: memlocker.New()} }

func (s *spy) Acquire(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	s.acquires.Add(1)
	return s.Locker.Acquire(ctx, key, owner, ttl)
}

func (s *spy) Release(ctx context.Context, key, owner string) error {
	s.releases.Add(1)
	return s.Locker.Release(ctx, key, owner)
}

func (s *spy) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
	s.transfers.Add(1)
	if s.transfer != nil {
		return s.transfer(ctx, key, from, to, ttl)
	}
	return s.Locker.Transfer(ctx, key, from, to, ttl)
}

func newFactory(t *testing.T, l locker.Locker, opts ...locker.Option) *locker.Factory {
	t.Helper()
	f, err := locker.NewFactory(l, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// waitInLine polls until n Lock calls of f wait in line for key.
func waitInLine(t *testing.T, f *locker.Factory, key string, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for locker.Waiting(f, key) != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d Lock calls in line for %q, want %d", locker.Waiting(f, key), key, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// lockAsync starts l.Lock with waits that only a hand-off (or a release
// notification) can cut short.
func lockAsync(ctx context.Context, l *locker.Lock, opts ...locker.Option) <-chan error {
	done := make(chan error, 1)
	go func() {
		done <- l.Lock(ctx, append([]locker.Option{locker.Retries(locker.Unlimited), locker.Interval(time.Hour)}, opts...)...)
	}()
	return done
}

func within(t *testing.T, done <-chan error, what string) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(5 * time.Second):
		t.Fatalf("%s did not return", what)
		return nil
	}
}

func TestHandoffPassesTheLockInOneStep(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	f := newFactory(t, s)
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	tokenA := a.Token()
	done := lockAsync(ctx, b)
	waitInLine(t, f, "k", 1)
	if err := a.Unlock(ctx); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if err := within(t, done, "the waiting Lock"); err != nil {
		t.Fatalf("waiting Lock: %v", err)
	}
	if got := s.transfers.Load(); got != 1 {
		t.Errorf("%d transfers, want 1", got)
	}
	if got := s.releases.Load(); got != 0 {
		t.Errorf("%d releases before the last Unlock, want 0", got)
	}
	if b.Token() <= tokenA {
		t.Errorf("token after hand-off %d, want above %d", b.Token(), tokenA)
	}
	info, err := s.Inspect(ctx, "k")
	if err != nil || info.Owner != b.Owner() || info.Token != b.Token() {
		t.Fatalf("Inspect = %+v, %v; want owner %s token %d", info, err, b.Owner(), b.Token())
	}
	if b.Remaining() <= 0 {
		t.Error("the handed lease is not live")
	}
	if err := a.Unlock(ctx); !errors.Is(err, locker.ErrNotHeld) {
		t.Errorf("second Unlock by the old holder: %v, want ErrNotHeld", err)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if got := s.releases.Load(); got != 1 {
		t.Errorf("%d releases after the last Unlock, want 1 (nobody waits)", got)
	}
	if locker.Waiting(f, "k") != 0 || locker.Tracked(f) != 0 {
		t.Errorf("%d waiting, %d keys tracked after the last Unlock, want none", locker.Waiting(f, "k"), locker.Tracked(f))
	}
}

func TestHandoffServesWaitersInOrder(t *testing.T) {
	ctx := context.Background()
	f := newFactory(t, newSpy())
	holder := f.NewLock("k")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	var order []int
	var mu sync.Mutex
	locks := make([]*locker.Lock, 4)
	dones := make([]chan struct{}, 4)
	for i := range locks {
		locks[i] = f.NewLock("k")
		dones[i] = make(chan struct{})
		go func() {
			defer close(dones[i])
			if err := locks[i].Lock(ctx, locker.Retries(locker.Unlimited), locker.Interval(time.Hour)); err != nil {
				t.Errorf("waiter %d: %v", i, err)
				return
			}
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
		}()
		waitInLine(t, f, "k", i+1)
	}
	if err := holder.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range locks {
		select {
		case <-dones[i]:
		case <-time.After(5 * time.Second):
			t.Fatalf("waiter %d never got the lock", i)
		}
		if err := locks[i].Unlock(ctx); err != nil {
			t.Fatalf("waiter %d Unlock: %v", i, err)
		}
	}
	if fmt.Sprint(order) != "[0 1 2 3]" {
		t.Errorf("served in order %v, want [0 1 2 3]", order)
	}
}

func TestHandoffLimitReleasesToTheStorage(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	f := newFactory(t, s, locker.Handoff(2))
	holder := f.NewLock("k")
	if err := holder.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	locks := make([]*locker.Lock, 3)
	dones := make([]<-chan error, 3)
	for i := range locks {
		locks[i] = f.NewLock("k")
		dones[i] = lockAsync(ctx, locks[i])
		waitInLine(t, f, "k", i+1)
	}
	prev := holder
	for i := range locks {
		if err := prev.Unlock(ctx); err != nil {
			t.Fatal(err)
		}
		// The third waiter is woken by the release notification of the
		// memory driver and takes the lock by an attempt of its own.
		if err := within(t, dones[i], fmt.Sprintf("waiter %d", i)); err != nil {
			t.Fatal(err)
		}
		prev = locks[i]
	}
	if err := prev.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if tr, rel := s.transfers.Load(), s.releases.Load(); tr != 2 || rel != 2 {
		t.Errorf("%d transfers and %d releases, want 2 and 2", tr, rel)
	}
}

func TestHandoffZeroTurnsItOff(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	f := newFactory(t, s, locker.Handoff(0))
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	done := lockAsync(ctx, b)
	waitInLine(t, f, "k", 1)
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := within(t, done, "the waiting Lock"); err != nil {
		t.Fatal(err)
	}
	if got := s.transfers.Load(); got != 0 {
		t.Errorf("%d transfers with Handoff(0)", got)
	}
	if _, err := locker.NewFactory(s, locker.Handoff(-1)); !errors.Is(err, locker.ErrInvalidOption) {
		t.Errorf("Handoff(-1): %v, want ErrInvalidOption", err)
	}
}

// A waiter whose context ends while a hand-off to it is under way returns
// at once; the Unlock that made the hand-off gives the lease back.
func TestHandoffToACancelledWaiter(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	entered, proceed := make(chan struct{}), make(chan struct{})
	s.transfer = func(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
		close(entered)
		<-proceed
		return s.Locker.Transfer(ctx, key, from, to, ttl)
	}
	f := newFactory(t, s)
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	bctx, cancel := context.WithCancel(ctx)
	done := lockAsync(bctx, b)
	waitInLine(t, f, "k", 1)
	unlocked := make(chan error, 1)
	go func() { unlocked <- a.Unlock(ctx) }()
	<-entered
	cancel()
	err := within(t, done, "the cancelled Lock")
	if !errors.Is(err, locker.ErrNotObtained) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Lock: %v, want ErrNotObtained and context.Canceled", err)
	}
	close(proceed)
	if err := within(t, unlocked, "Unlock"); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if info, err := s.Inspect(ctx, "k"); err != nil || info.Held() {
		t.Fatalf("after the hand-off to a gone waiter: %+v, %v; want the key free", info, err)
	}
	if b.Held() || locker.Waiting(f, "k") != 0 || locker.Tracked(f) != 0 {
		t.Error("the cancelled waiter holds or still waits, or the key is still tracked")
	}
}

// The same, with a waiter whose own retry comes due while the hand-off to
// it is under way: it waits for the hand-off's outcome, but no longer than
// its context.
func TestHandoffToAWaiterCancelledWhileItsRetryWaits(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	entered, proceed := make(chan struct{}), make(chan struct{})
	s.transfer = func(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
		close(entered)
		<-proceed
		return s.Locker.Transfer(ctx, key, from, to, ttl)
	}
	f := newFactory(t, s)
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	bctx, cancel := context.WithCancel(ctx)
	var tries atomic.Int64
	done := lockAsync(bctx, b, locker.Interval(time.Millisecond), locker.Observe(func(e locker.Event) {
		if e.Kind == locker.Contended {
			tries.Add(1)
		}
	}))
	waitInLine(t, f, "k", 1)
	unlocked := make(chan error, 1)
	go func() { unlocked <- a.Unlock(ctx) }()
	<-entered
	// Let b's 1ms retry come due: it finds the hand-off under way and waits
	// for its outcome instead of attempting (so at most one attempt here).
	from := tries.Load()
	time.Sleep(10 * time.Millisecond)
	if got := tries.Load() - from; got > 1 {
		t.Errorf("%d attempts while a hand-off to the waiter was under way", got)
	}
	cancel()
	err := within(t, done, "the cancelled Lock")
	if !errors.Is(err, locker.ErrNotObtained) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Lock: %v, want ErrNotObtained and context.Canceled", err)
	}
	close(proceed)
	if err := within(t, unlocked, "Unlock"); err != nil {
		t.Fatalf("Unlock: %v", err)
	}
	if info, err := s.Inspect(ctx, "k"); err != nil || info.Held() {
		t.Fatalf("after the hand-off to a gone waiter: %+v, %v; want the key free", info, err)
	}
	if locker.Tracked(f) != 0 {
		t.Errorf("%d keys tracked after the last Unlock", locker.Tracked(f))
	}
}

// A hand-off that finds the lease gone reports the loss, and the waiter
// attempts on its own at once.
func TestHandoffOfALostLease(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	s.transfer = func(ctx context.Context, key, from, _ string, _ time.Duration) (locker.Lease, error) {
		_ = s.Locker.Release(ctx, key, from) // as if the lease had expired meanwhile
		return locker.Lease{}, locker.ErrNotHeld
	}
	f := newFactory(t, s)
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	done := lockAsync(ctx, b)
	waitInLine(t, f, "k", 1)
	if err := a.Unlock(ctx); !errors.Is(err, locker.ErrLost) {
		t.Fatalf("Unlock: %v, want ErrLost", err)
	}
	if err := within(t, done, "the waiting Lock"); err != nil {
		t.Fatal(err)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// A hand-off that fails with a backend error after it moved the lease
// leaves nothing held by the waiter's owner value before the waiter
// attempts again, and Unlock still frees the key.
func TestHandoffBackendError(t *testing.T) {
	for _, moved := range []bool{false, true} {
		t.Run(fmt.Sprintf("moved=%v", moved), func(t *testing.T) {
			ctx := context.Background()
			s := newSpy()
			s.transfer = func(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
				if moved {
					if _, err := s.Locker.Transfer(ctx, key, from, to, ttl); err != nil {
						return locker.Lease{}, err
					}
				}
				return locker.Lease{}, errors.New("connection reset")
			}
			f := newFactory(t, s)
			a, b := f.NewLock("k"), f.NewLock("k")
			if err := a.Lock(ctx); err != nil {
				t.Fatal(err)
			}
			done := lockAsync(ctx, b)
			waitInLine(t, f, "k", 1)
			if err := a.Unlock(ctx); err != nil {
				t.Fatalf("Unlock: %v", err)
			}
			if err := within(t, done, "the waiting Lock"); err != nil {
				t.Fatal(err)
			}
			info, err := s.Inspect(ctx, "k")
			if err != nil || info.Owner != b.Owner() || info.Token != b.Token() {
				t.Fatalf("Inspect = %+v, %v; want b's lease", info, err)
			}
			if err := b.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestHandoffUnsupportedFallsBackToRelease(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	s.transfer = func(context.Context, string, string, string, time.Duration) (locker.Lease, error) {
		return locker.Lease{}, fmt.Errorf("not here: %w", errors.ErrUnsupported)
	}
	f := newFactory(t, s)
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	done := lockAsync(ctx, b)
	waitInLine(t, f, "k", 1)
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := within(t, done, "the waiting Lock"); err != nil {
		t.Fatal(err)
	}
	if got := s.releases.Load(); got != 1 {
		t.Errorf("%d releases, want 1", got)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// Many goroutines of one Factory take turns on a key, mostly by hand-off:
// never two inside at once, tokens always rising.
func TestHandoffExclusionAndFencing(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	f := newFactory(t, s, locker.Retries(locker.Unlimited), locker.Interval(20*time.Millisecond))
	var inside atomic.Int32
	var last int64
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l := f.NewLock("k")
			for i := 0; i < 200; i++ {
				if err := l.Lock(ctx); err != nil {
					t.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					t.Error("two holders at once")
				}
				if tok := l.Token(); tok <= last {
					t.Errorf("token %d after %d", tok, last)
				} else {
					last = tok
				}
				inside.Add(-1)
				if err := l.Unlock(ctx); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if s.transfers.Load() == 0 {
		t.Error("no hand-off happened")
	}
	t.Logf("%d transfers, %d releases, %d acquires", s.transfers.Load(), s.releases.Load(), s.acquires.Load())
	if locker.Waiting(f, "k") != 0 || locker.Tracked(f) != 0 {
		t.Errorf("%d waiting, %d keys tracked after the last Unlock, want none", locker.Waiting(f, "k"), locker.Tracked(f))
	}
}

// While a lock of the Factory holds the key, its other Lock calls for the
// key ask the storage nothing: they wait for the hand-off.
func TestHeldHereAsksTheStorageNothing(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	f := newFactory(t, s)
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	before := s.acquires.Load()
	if err := b.TryLock(ctx); !errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("TryLock while held here: %v, want ErrNotObtained", err)
	}
	var tries atomic.Int64
	done := lockAsync(ctx, b, locker.Interval(time.Millisecond), locker.Observe(func(e locker.Event) {
		if e.Kind == locker.Contended {
			tries.Add(1)
		}
	}))
	deadline := time.Now().Add(5 * time.Second)
	for tries.Load() < 5 { // b's attempts every millisecond
		if time.Now().After(deadline) {
			t.Fatalf("%d attempts in 5s", tries.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if got := s.acquires.Load() - before; got != 0 {
		t.Errorf("%d Acquire calls while a lock of the same Factory held the key, want 0", got)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := within(t, done, "the waiting Lock"); err != nil {
		t.Fatal(err)
	}
	// Once the holder's lease is gone, the others ask the storage again.
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.TryLock(ctx); err != nil {
		t.Fatalf("TryLock after the key was released: %v", err)
	}
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// A lease of the Factory that is lost without Unlock stops counting as held
// here: the others take the key from the storage once it expires.
func TestHeldHereEndsWithTheLease(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	f := newFactory(t, s)
	a, b := f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx, locker.TTL(50*time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	err := b.Lock(ctx, locker.Retries(locker.Unlimited), locker.Interval(5*time.Millisecond))
	if err != nil {
		t.Fatalf("Lock after the holder's lease expired: %v", err)
	}
	if !errors.Is(a.Err(), locker.ErrLost) {
		t.Errorf("the expired holder reports %v, want ErrLost", a.Err())
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
}

// During a hand-off the key still counts as held here: the other waiters,
// retrying every millisecond, do not ask the storage while it runs.
func TestHeldHereDuringTheHandoff(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	entered, proceed := make(chan struct{}), make(chan struct{})
	s.transfer = func(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
		close(entered)
		<-proceed
		return s.Locker.Transfer(ctx, key, from, to, ttl)
	}
	f := newFactory(t, s)
	a, b, c := f.NewLock("k"), f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	doneB := lockAsync(ctx, b)
	waitInLine(t, f, "k", 1)
	var tries atomic.Int64
	cctx, cancel := context.WithCancel(ctx)
	doneC := lockAsync(cctx, c, locker.Interval(time.Millisecond), locker.Observe(func(e locker.Event) {
		if e.Kind == locker.Contended {
			tries.Add(1)
		}
	}))
	waitInLine(t, f, "k", 2)
	before := s.acquires.Load()
	unlocked := make(chan error, 1)
	go func() { unlocked <- a.Unlock(ctx) }()
	<-entered
	from := tries.Load()
	deadline := time.Now().Add(5 * time.Second)
	for tries.Load() < from+5 {
		if time.Now().After(deadline) {
			t.Fatal("the other waiter stopped retrying")
		}
		time.Sleep(time.Millisecond)
	}
	if got := s.acquires.Load() - before; got != 0 {
		t.Errorf("%d Acquire calls during the hand-off, want 0", got)
	}
	close(proceed)
	if err := within(t, unlocked, "Unlock"); err != nil {
		t.Fatal(err)
	}
	if err := within(t, doneB, "the first waiter"); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := within(t, doneC, "the cancelled waiter"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if locker.Waiting(f, "k") != 0 || locker.Tracked(f) != 0 {
		t.Errorf("%d waiting, %d keys tracked after the last Unlock, want none", locker.Waiting(f, "k"), locker.Tracked(f))
	}
}

// When the driver cannot transfer, Unlock releases and tells the first
// waiter to attempt at once; the other waiters, woken by the release too,
// leave the key to it rather than race it.
func TestNudgedWaiterIsNotRaced(t *testing.T) {
	ctx := context.Background()
	s := newSpy()
	s.transfer = func(context.Context, string, string, string, time.Duration) (locker.Lease, error) {
		return locker.Lease{}, errors.ErrUnsupported
	}
	f := newFactory(t, s)
	a, b, c := f.NewLock("k"), f.NewLock("k"), f.NewLock("k")
	if err := a.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	doneB := lockAsync(ctx, b)
	waitInLine(t, f, "k", 1)
	cctx, cancel := context.WithCancel(ctx)
	doneC := lockAsync(cctx, c)
	waitInLine(t, f, "k", 2)
	before := s.acquires.Load()
	if err := a.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if err := within(t, doneB, "the first waiter"); err != nil {
		t.Fatal(err)
	}
	if got := s.acquires.Load() - before; got != 1 {
		t.Errorf("%d Acquire calls after the release, want 1 (the first waiter's)", got)
	}
	cancel()
	if err := within(t, doneC, "the cancelled waiter"); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter: %v", err)
	}
	if err := b.Unlock(ctx); err != nil {
		t.Fatal(err)
	}
	if locker.Tracked(f) != 0 {
		t.Errorf("%d keys tracked after the last Unlock", locker.Tracked(f))
	}
}

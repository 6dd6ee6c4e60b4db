package testutil

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dlock-go/dlock/locker"
)

// transferer returns d's Locker as a Transferer, or nil when the driver does
// not transfer (it is not one, or it says errors.ErrUnsupported, as Redlock
// does).
func (s *suite) transferer(t testing.TB) (locker.Locker, locker.Transferer) {
	l := s.d.New(t)
	tr, ok := l.(locker.Transferer)
	if !ok {
		return l, nil
	}
	_, err := tr.Transfer(testCtx(t, 10*time.Second), Key(t), "probe-from", "probe-to", time.Second)
	switch {
	case errors.Is(err, errors.ErrUnsupported):
		return l, nil
	case !errors.Is(err, locker.ErrNotHeld):
		t.Fatalf("Transfer on a free key: %v, want ErrNotHeld (or errors.ErrUnsupported)", err)
	}
	return l, tr
}

// countingTransfers counts the transfers and releases made through it.
type countingTransfers struct {
	locker.Locker
	tr                  locker.Transferer
	transfers, releases atomic.Int64
}

func (c *countingTransfers) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
	c.transfers.Add(1)
	return c.tr.Transfer(ctx, key, from, to, ttl)
}

func (c *countingTransfers) Release(ctx context.Context, key, owner string) error {
	c.releases.Add(1)
	return c.Locker.Release(ctx, key, owner)
}

// Handoff: the Transferer operation and the Factory's hand-off to waiting
// Lock calls, for drivers that transfer.
func (s *suite) handoff(t *testing.T) {
	if _, tr := s.transferer(t); tr == nil {
		t.Logf("%s does not transfer leases: Unlock always releases", s.d.Name)
		return
	}

	t.Run("TransferIsOwnerCheckedAndFenced", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t, 30*time.Second)
		l, tr := s.transferer(t)
		key := Key(t)
		const ttl = 10 * time.Second
		a, err := l.Acquire(ctx, key, "owner-a", ttl)
		must(t, err, "Acquire")
		b, err := tr.Transfer(ctx, key, "owner-a", "owner-b", 5*time.Second)
		must(t, err, "Transfer a→b")
		if b.Token <= a.Token || b.Validity <= 0 {
			t.Fatalf("Transfer = %+v after token %d; want a higher token and a positive validity", b, a.Token)
		}
		info := inspect(t, l, key)
		if info.Owner != "owner-b" || info.Token != b.Token || info.TTL <= 0 || info.TTL > 5*time.Second {
			t.Fatalf("after Transfer Inspect = %+v, want owner-b, token %d, a TTL of at most 5s", info, b.Token)
		}
		// The old owner, and strangers, can do nothing more.
		wantIs(t, l.Release(ctx, key, "owner-a"), locker.ErrNotHeld, "Release by the old owner")
		_, err = l.Refresh(ctx, key, "owner-a", ttl)
		wantIs(t, err, locker.ErrNotHeld, "Refresh by the old owner")
		_, err = tr.Transfer(ctx, key, "owner-a", "owner-c", ttl)
		wantIs(t, err, locker.ErrNotHeld, "Transfer by the old owner")
		_, err = tr.Transfer(ctx, key, "stranger", "owner-c", ttl)
		wantIs(t, err, locker.ErrNotHeld, "Transfer by a stranger")
		_, err = l.Acquire(ctx, key, "owner-c", ttl)
		wantIs(t, err, locker.ErrNotObtained, "Acquire of the transferred lease")
		if got := inspect(t, l, key); got.Owner != "owner-b" || got.Token != b.Token {
			t.Fatalf("after refused calls Inspect = %+v, want owner-b with token %d", got, b.Token)
		}
		r, err := l.Refresh(ctx, key, "owner-b", ttl)
		must(t, err, "Refresh by the new owner")
		if r.Token != b.Token {
			t.Fatalf("Refresh token %d, want the transferred %d", r.Token, b.Token)
		}
		must(t, l.Release(ctx, key, "owner-b"), "Release by the new owner")
		_, err = tr.Transfer(ctx, key, "owner-b", "owner-c", ttl)
		wantIs(t, err, locker.ErrNotHeld, "Transfer of a released key")
		if got := inspect(t, l, key); got.Held() {
			t.Fatalf("a refused Transfer took the free key: %+v", got)
		}
		c, err := l.Acquire(ctx, key, "owner-c", ttl)
		must(t, err, "Acquire after release")
		if c.Token <= b.Token {
			t.Fatalf("token %d after the transferred %d: tokens must rise", c.Token, b.Token)
		}
		must(t, l.Release(ctx, key, "owner-c"), "Release")
	})

	t.Run("TransferOfAnExpiredLease", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t, 30*time.Second)
		l, tr := s.transferer(t)
		key := Key(t)
		_, err := l.Acquire(ctx, key, "owner-a", 100*time.Millisecond)
		must(t, err, "Acquire")
		waitFree(t, l, key, 5*time.Second+s.d.ClockError)
		_, err = tr.Transfer(ctx, key, "owner-a", "owner-b", 10*time.Second)
		wantIs(t, err, locker.ErrNotHeld, "Transfer of an expired lease")
		if got := inspect(t, l, key); got.Held() {
			t.Fatalf("a Transfer of an expired lease took the key: %+v", got)
		}
	})

	t.Run("TransferBadInput", func(t *testing.T) {
		t.Parallel()
		ctx := testCtx(t, 30*time.Second)
		l, tr := s.transferer(t)
		key := Key(t)
		a, err := l.Acquire(ctx, key, "owner-a", 10*time.Second)
		must(t, err, "Acquire")
		for _, c := range []struct {
			name          string
			key, from, to string
			ttl           time.Duration
			want          error
		}{
			{"empty key", "", "owner-a", "owner-b", time.Second, locker.ErrInvalidKey},
			{"key not UTF-8", "\xff", "owner-a", "owner-b", time.Second, locker.ErrInvalidKey},
			{"empty from", key, "", "owner-b", time.Second, locker.ErrInvalidOption},
			{"empty to", key, "owner-a", "", time.Second, locker.ErrInvalidOption},
			{"zero ttl", key, "owner-a", "owner-b", 0, locker.ErrInvalidOption},
			{"ttl under 1ms", key, "owner-a", "owner-b", time.Microsecond, locker.ErrInvalidOption},
		} {
			_, err := tr.Transfer(ctx, c.key, c.from, c.to, c.ttl)
			if !errors.Is(err, c.want) {
				t.Errorf("Transfer with %s: %v, want %v", c.name, err, c.want)
			}
		}
		if got := inspect(t, l, key); got.Owner != "owner-a" || got.Token != a.Token {
			t.Fatalf("bad Transfer calls changed the lease: %+v", got)
		}
		must(t, l.Release(ctx, key, "owner-a"), "Release")
	})

	t.Run("TransferRacesAcquire", func(t *testing.T) {
		t.Parallel()
		transferRace(t, func(t testing.TB) transferLocker {
			l, tr := s.transferer(t)
			return struct {
				locker.Locker
				locker.Transferer
			}{l, tr}
		}, 150)
	})

	// Goroutines of two clients take turns: inside a client the lock passes
	// by hand-off, between clients by release. Never two holders, tokens
	// always rising.
	t.Run("FactoryHandsOffWithoutOverlap", func(t *testing.T) {
		t.Parallel()
		const clients, perClient, rounds = 2, 4, 25
		key := Key(t)
		ctx := testCtx(t, 2*time.Minute)
		var sec section
		var mu sync.Mutex
		var last int64
		var wg sync.WaitGroup
		errs := make(chan error, clients*perClient)
		counters := make([]*countingTransfers, clients)
		for c := range counters {
			l, tr := s.transferer(t)
			counters[c] = &countingTransfers{Locker: l, tr: tr}
			f, err := locker.NewFactory(counters[c], locker.TTL(10*time.Second), locker.Retries(locker.Unlimited),
				locker.WithBackoff(locker.Jitter(5*time.Millisecond, 0.5)))
			must(t, err, "NewFactory")
			for g := 0; g < perClient; g++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					l := f.NewLock(key)
					for i := 0; i < rounds; i++ {
						if err := l.Lock(ctx); err != nil {
							errs <- fmt.Errorf("Lock: %w", err)
							return
						}
						tok := l.Token()
						mu.Lock()
						if tok <= last {
							errs <- fmt.Errorf("token %d after %d", tok, last)
						}
						last = tok
						mu.Unlock()
						sec.run()
						if err := l.Unlock(ctx); err != nil {
							errs <- fmt.Errorf("Unlock: %w", err)
							return
						}
					}
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if n := sec.overlaps.Load(); n != 0 {
			t.Fatalf("%d overlapping critical sections", n)
		}
		if want := clients * perClient * rounds; sec.counter != want {
			t.Fatalf("counter = %d after %d critical sections: two holders overlapped", sec.counter, want)
		}
		var transfers int64
		for _, c := range counters {
			transfers += c.transfers.Load()
		}
		if transfers == 0 {
			t.Fatal("no hand-off happened between goroutines of one client")
		}
		t.Logf("%d critical sections, %d by hand-off", clients*perClient*rounds, transfers)
		if got := inspect(t, s.d.New(t), key); got.Held() {
			t.Fatalf("the key is held after every Unlock: %+v", got)
		}
	})
}

// transferLocker is a driver's Locker seen with its Transfer.
type transferLocker interface {
	locker.Locker
	locker.Transferer
}

// transferRace runs the hand-off race until grants grants were made: a few
// passers, which hand the lease on by Transfer to one another and now and
// then release it, and a few acquirers, which try to Acquire it in a loop
// and, when they win, pass it on likewise.
// Every holder checks on entry that it is alone and that its token is above
// the previous holder's, and asks the storage whether it holds the key.
func transferRace(t *testing.T, newLocker func(t testing.TB) transferLocker, grants int64) {
	const (
		passers   = 3
		acquirers = 3
		ttl       = 10 * time.Second
	)
	ctx := testCtx(t, 2*time.Minute)
	key := Key(t)

	var (
		occupancy  atomic.Int64
		lastToken  atomic.Int64
		granted    atomic.Int64
		transfers  atomic.Int64
		acquired   atomic.Int64
		ownerSeq   atomic.Int64
		stopOnce   sync.Once
		stop       = make(chan struct{})
		errs       = make(chan error, passers+acquirers)
		wg         sync.WaitGroup
		inboxes    [passers]chan grant
		lockers    [passers + acquirers]transferLocker
		newOwnerOf = func(who string) string { return who + "-" + strconv.FormatInt(ownerSeq.Add(1), 10) }
	)
	for i := range lockers {
		lockers[i] = newLocker(t)
	}
	for i := range inboxes {
		inboxes[i] = make(chan grant, 1)
	}

	// hold runs the critical section of a holder: it fails if another
	// holder is inside, if the token is not above the previous holder's, or
	// if the storage names another holder.
	hold := func(l transferLocker, g grant) error {
		if n := occupancy.Add(1); n != 1 {
			return fmt.Errorf("%d holders at once (entering: %s, token %d)", n, g.owner, g.token)
		}
		if prev := lastToken.Swap(g.token); g.token <= prev {
			return fmt.Errorf("token %d granted to %s after token %d", g.token, g.owner, prev)
		}
		info, err := l.Inspect(ctx, key)
		if err != nil {
			return err
		}
		if info.Owner != g.owner || info.Token != g.token {
			return fmt.Errorf("%s holds token %d, but the storage reports %+v", g.owner, g.token, info)
		}
		occupancy.Add(-1)
		if granted.Add(1) >= grants {
			stopOnce.Do(func() { close(stop) })
		}
		return nil
	}
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	// passOn hands the lease to a passer (not self), or releases it: when
	// the race is over, and now and then so that acquirers get a turn.
	passOn := func(l transferLocker, g grant, self int, rng *rand.Rand) error {
		if stopped() || rng.IntN(4) == 0 {
			return l.Release(ctx, key, g.owner)
		}
		to := rng.IntN(passers)
		if to == self {
			to = (to + 1) % passers
		}
		owner := newOwnerOf(fmt.Sprintf("p%d", to))
		lease, err := l.Transfer(ctx, key, g.owner, owner, ttl)
		if err != nil {
			return fmt.Errorf("Transfer %s→%s: %w", g.owner, owner, err)
		}
		transfers.Add(1)
		select {
		case inboxes[to] <- grant{owner: owner, token: lease.Token}:
			return nil
		case <-stop: // a failure elsewhere: the receiver may be gone
			return l.Release(ctx, key, owner)
		}
	}
	fail := func(err error) {
		errs <- err
		stopOnce.Do(func() { close(stop) })
	}

	for i := 0; i < passers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, rng := lockers[i], rand.New(rand.NewPCG(uint64(i), 1))
			for {
				select {
				case g := <-inboxes[i]:
					if err := hold(l, g); err != nil {
						fail(err)
						return
					}
					if err := passOn(l, g, i, rng); err != nil {
						fail(err)
						return
					}
				case <-stop:
					return
				}
			}
		}()
	}
	for i := 0; i < acquirers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, rng := lockers[passers+i], rand.New(rand.NewPCG(uint64(i), 2))
			for !stopped() {
				owner := newOwnerOf(fmt.Sprintf("a%d", i))
				lease, err := l.Acquire(ctx, key, owner, ttl)
				if errors.Is(err, locker.ErrNotObtained) && ctx.Err() == nil {
					// Pace the attempts: the key is busy.
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					fail(fmt.Errorf("Acquire: %w", err))
					return
				}
				acquired.Add(1)
				g := grant{owner: owner, token: lease.Token}
				if err := hold(l, g); err != nil {
					fail(err)
					return
				}
				if err := passOn(l, g, -1, rng); err != nil {
					fail(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	// A grant a passer got as the race stopped is released here.
	for i, in := range inboxes {
		select {
		case g := <-in:
			if err := lockers[i].Release(ctx, key, g.owner); err != nil {
				t.Errorf("Release of the last grant: %v", err)
			}
		default:
		}
	}
	if info, err := lockers[0].Inspect(ctx, key); err != nil || info.Held() {
		t.Errorf("after the race: Inspect = %+v, %v; want free", info, err)
	}
	if transfers.Load() == 0 || acquired.Load() == 0 {
		t.Fatalf("%d transfers and %d acquisitions: the race did not mix both", transfers.Load(), acquired.Load())
	}
	t.Logf("%d grants: %d by Transfer, %d by Acquire", granted.Load(), transfers.Load(), acquired.Load())
}

// grant is a lease handed to a holder.
type grant struct {
	owner string
	token int64
}

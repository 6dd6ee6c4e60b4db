package redislocker_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/scripts/lua"
	"github.com/dlock-go/dlock/testutil"
)

// newSingle returns a single-node Locker on url under the run's prefix.
func newSingle(t testing.TB, url string) *redislocker.Locker {
	t.Helper()
	prefix, _ := testutil.RedisPrefix()
	l, err := redislocker.New(newPool(t, url), redislocker.Prefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// TestTransferScriptReplies runs transfer.lua with EVAL on a private server
// and checks its reply and effect in every case: it draws from the counter
// acquire.lua draws from, and changes nothing unless from holds the key.
func TestTransferScriptReplies(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t)
	c, err := redis.DialURL(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const lk, ck = "p:{k}", "p:{k}:token"
	eval := func(src string, keys int, args ...interface{}) interface{} {
		t.Helper()
		v, err := c.Do("EVAL", append([]interface{}{src, keys}, args...)...)
		if err != nil {
			t.Fatalf("EVAL: %v", err)
		}
		return v
	}
	get := "return redis.call('GET', KEYS[1]) or ''"
	steps := []struct {
		name string
		got  interface{}
		want interface{}
	}{
		{"transfer free", eval(lua.Transfer, 2, lk, ck, "a", "b", 60000), int64(0)},
		{"free key untouched", eval(get, 1, lk), []byte("")},
		{"no token drawn", eval(get, 1, ck), []byte("")},
		{"acquire", eval(lua.Acquire, 2, lk, ck, "a", 1000), int64(1)},
		{"transfer by other", eval(lua.Transfer, 2, lk, ck, "x", "b", 60000), int64(0)},
		{"transfer by prefix of owner", eval(lua.Transfer, 2, lk, ck, "", "b", 60000), int64(0)},
		{"unchanged", eval(get, 1, lk), []byte("1:a")},
		{"transfer by owner", eval(lua.Transfer, 2, lk, ck, "a", "b:c", 60000), int64(2)},
		{"new holder and token", eval(get, 1, lk), []byte("2:b:c")},
		{"fresh TTL", eval("return redis.call('PTTL', KEYS[1]) > 50000 and 1 or 0", 1, lk), int64(1)},
		{"counter drawn", eval(get, 1, ck), []byte("2")},
		{"old owner cannot transfer", eval(lua.Transfer, 2, lk, ck, "a", "d", 60000), int64(0)},
		{"refresh keeps new token", eval(lua.Refresh, 1, lk, "b:c", 60000), int64(2)},
		{"release by new owner", eval(lua.Release, 1, lk, "b:c"), int64(1)},
		{"acquire after transfer", eval(lua.Acquire, 2, lk, ck, "e", 60000), int64(3)},
	}
	for _, s := range steps {
		if !reflect.DeepEqual(s.got, s.want) {
			t.Errorf("%s: got %#v, want %#v", s.name, s.got, s.want)
		}
	}
}

// TestTransfer: a transfer hands a live lease to a new owner with a new,
// greater token and a fresh TTL (guarantee 4 across transfers); the old
// owner no longer holds it; a stranger, an expired owner or a transfer of a
// free key gets ErrNotHeld and changes nothing (guarantee 3).
func TestTransfer(t *testing.T) {
	t.Parallel()
	testTransfer(t, newSingle(t, testutil.RedisURL(t)))
}

// testTransfer is the driver-independent body of TestTransfer.
func testTransfer(t *testing.T, l interface {
	locker.Locker
	locker.Transferer
}) {
	ctx := ctxFor(t, 30*time.Second)
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

	// Nor can an expired lease, even before anyone takes the key over.
	e, err := l.Acquire(ctx, key, "E", 30*time.Millisecond)
	if err != nil || e.Token <= last {
		t.Fatalf("Acquire after transfers = %+v, %v; want a token above %d", e, err, last)
	}
	deadline := time.Now().Add(10 * time.Second)
	for inspect().Held() {
		if time.Now().After(deadline) {
			t.Fatal("a 30ms lease did not expire in 10s")
		}
		time.Sleep(2 * time.Millisecond)
	}
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

// TestTransferBadInput: bad arguments are the locker's errors before any
// I/O, on a single node and on Redlock; a done context does no I/O; and
// Redlock cannot transfer (errors.ErrUnsupported), also before any I/O.
func TestTransferBadInput(t *testing.T) {
	t.Parallel()
	var gets atomic.Int64
	pool := poolFunc(func(ctx context.Context) (redis.Conn, error) {
		gets.Add(1)
		return nil, errors.New("I/O attempted")
	})
	single, err := redislocker.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	redlock, err := redislocker.NewRedlock([]redislocker.Pool{pool, pool, pool})
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
		for name, l := range map[string]*redislocker.Locker{"single": single, "redlock": redlock} {
			if _, err := l.Transfer(ctx, c.key, c.from, c.to, c.ttl); !errors.Is(err, c.want) {
				t.Errorf("%s: %s: %v; want %v", name, c.name, err, c.want)
			}
		}
	}
	if _, err := redlock.Transfer(ctx, "k", "a", "b", time.Second); !errors.Is(err, errors.ErrUnsupported) {
		t.Errorf("Redlock Transfer: %v; want errors.ErrUnsupported", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := single.Transfer(done, "k", "a", "b", time.Second); !errors.Is(err, context.Canceled) {
		t.Errorf("Transfer with a done context: %v; want context.Canceled", err)
	}
	if n := gets.Load(); n != 0 {
		t.Fatalf("%d connections asked for", n)
	}
}

// TestTransferRedlockUnsupported: on a live Redlock group, Transfer reports
// errors.ErrUnsupported and leaves the holder's lease alone.
func TestTransferRedlockUnsupported(t *testing.T) {
	t.Parallel()
	l := redlockOn(t, testutil.RedlockURLs(t, 3))
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)
	a, err := l.Acquire(ctx, key, "A", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Transfer(ctx, key, "A", "B", time.Minute); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Transfer: %v; want errors.ErrUnsupported", err)
	}
	if info, err := l.Inspect(ctx, key); err != nil || info.Owner != "A" || info.Token != a.Token {
		t.Fatalf("Inspect = %+v, %v; want A's lease unchanged", info, err)
	}
	must(t, l.Release(ctx, key, "A"))
}

// TestTransferRace: a key handed around by Transfer among goroutines, each
// with a client of its own, while others try to Acquire it, never has two
// holders (guarantee 1), and every grant, by Acquire or Transfer, carries a
// token greater than the grant before (guarantee 4).
func TestTransferRace(t *testing.T) {
	t.Parallel()
	url := testutil.RedisURL(t)
	transferRace(t, func(t testing.TB) transferLocker { return newSingle(t, url) }, 300)
}

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
	ctx := ctxFor(t, 2*time.Minute)
	key := testutil.Key(t)

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

// BenchmarkTransfer compares one Transfer with one Acquire on a single
// Redis over one connection: acquire takes a fresh key each time (nothing
// to release), transfer passes one key back and forth between two owners,
// and acquire+release is the lock cycle a transfer replaces. Each is one
// script run, one round trip.
func BenchmarkTransfer(b *testing.B) {
	url := testutil.RedisURL(b)
	prefix, _ := testutil.RedisPrefix()
	newL := func(b *testing.B) *redislocker.Locker {
		l, err := redislocker.New(onePool(b, url), redislocker.Prefix(prefix))
		if err != nil {
			b.Fatal(err)
		}
		return l
	}
	benchTransfer(b, func(b *testing.B) transferLocker { return newL(b) })
}

func benchTransfer(b *testing.B, newL func(b *testing.B) transferLocker) {
	const ttl = 10 * time.Second
	ctx := context.Background()
	b.Run("op=acquire", func(b *testing.B) {
		l := newL(b)
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
		l := newL(b)
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
		l := newL(b)
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

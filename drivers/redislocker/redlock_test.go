package redislocker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/internal/faultproxy"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

// group starts n private redis-server processes, which the test may stop,
// pause or restart without disturbing other tests.
func group(t *testing.T, n int) []*testutil.RedisServer {
	t.Helper()
	ss := make([]*testutil.RedisServer, n)
	for i := range ss {
		ss[i] = testutil.StartRedisServer(t)
	}
	return ss
}

// redlockOn returns a Redlock Locker over urls, one pool each.
func redlockOn(t *testing.T, urls []string, opts ...redislocker.Option) *redislocker.Locker {
	t.Helper()
	pools := make([]redislocker.Pool, len(urls))
	for i, u := range urls {
		pools[i] = newPool(t, u)
	}
	l, err := redislocker.NewRedlock(pools, opts...)
	if err != nil {
		t.Fatalf("NewRedlock: %v", err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func urlsOf(ss []*testutil.RedisServer) []string {
	us := make([]string, len(ss))
	for i, s := range ss {
		us[i] = s.URL()
	}
	return us
}

// do runs one command on a fresh connection to url.
func do(t *testing.T, url string, cmd string, args ...interface{}) (interface{}, error) {
	t.Helper()
	c, err := redis.DialURL(url, redis.DialConnectTimeout(time.Second), redis.DialReadTimeout(5*time.Second))
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Do(cmd, args...)
}

// lockKeyExists reports whether the lock key of key under the default
// prefix exists on the server at url.
func lockKeyExists(t *testing.T, url, key string) bool {
	t.Helper()
	n, err := redis.Int(do(t, url, "EXISTS", redislocker.DefaultPrefix+":{"+key+"}"))
	if err != nil {
		t.Fatalf("EXISTS on %s: %v", url, err)
	}
	return n == 1
}

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// TestRedlockOneOfThreeDown: a quorum of two live nodes is enough for every
// operation.
func TestRedlockOneOfThreeDown(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	l := redlockOn(t, urlsOf(ss))
	ss[1].Stop()
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)

	const ttl = 2 * time.Second
	lease, err := l.Acquire(ctx, key, "a", ttl)
	if err != nil {
		t.Fatalf("Acquire with one node of three down: %v", err)
	}
	if lease.Token <= 0 || lease.Validity <= 0 || lease.Validity > ttl {
		t.Fatalf("lease %+v: want a positive token and 0 < validity <= %v", lease, ttl)
	}
	if _, err := l.Acquire(ctx, key, "b", ttl); !errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("second owner's Acquire: got %v, want ErrNotObtained", err)
	}
	info, err := l.Inspect(ctx, key)
	if err != nil || info.Owner != "a" || info.Token != lease.Token {
		t.Fatalf("Inspect = %+v, %v; want owner a, token %d", info, err, lease.Token)
	}
	if _, err := l.Refresh(ctx, key, "a", ttl); err != nil {
		t.Fatalf("Refresh: %v", err)
	}
	if err := l.Release(ctx, key, "a"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if err := l.Release(ctx, key, "a"); !errors.Is(err, locker.ErrNotHeld) {
		t.Fatalf("second Release: got %v, want ErrNotHeld", err)
	}
}

// TestRedlockTwoOfThreeDown: without a quorum Acquire fails fast, with a
// backend error (or ErrNotObtained), and leaves nothing on the live node.
func TestRedlockTwoOfThreeDown(t *testing.T) {
	t.Parallel()
	for _, how := range []string{"stopped", "paused"} {
		t.Run(how, func(t *testing.T) {
			t.Parallel()
			ss := group(t, 3)
			l := redlockOn(t, urlsOf(ss))
			for _, s := range ss[1:] {
				if how == "stopped" {
					s.Stop()
				} else if err := s.Pause(); err != nil {
					t.Fatal(err)
				}
			}
			key := testutil.Key(t)
			const ttl = 300 * time.Millisecond
			start := time.Now()
			_, err := l.Acquire(ctxFor(t, 10*time.Second), key, "a", ttl)
			took := time.Since(start)
			if err == nil {
				t.Fatal("Acquire succeeded with two nodes of three down")
			}
			if !strings.HasPrefix(err.Error(), "redislocker: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
			if how == "stopped" && errors.Is(err, locker.ErrNotObtained) {
				t.Fatalf("refused connections reported as contention: %v", err)
			}
			// Refused: at once. Paused: the lease's TTL, then a cleanup
			// bounded by the TTL again.
			if limit := 3 * ttl; took > limit {
				t.Fatalf("Acquire took %v, want under %v", took, limit)
			}
			if lockKeyExists(t, ss[0].URL(), key) {
				t.Fatal("the failed attempt left the lock held on the live node")
			}
		})
	}
}

// TestRedlockSlowNodesCannotStretchLease: validity is counted from before
// the first request, so slow replies shorten it, and an answer later than
// the TTL is no lease at all.
func TestRedlockSlowNodesCannotStretchLease(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	proxies := make([]*faultproxy.Proxy, len(ss))
	urls := make([]string, len(ss))
	for i, s := range ss {
		p, err := faultproxy.Listen(s.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		proxies[i], urls[i] = p, "redis://"+p.Addr()
	}
	l := redlockOn(t, urls)
	ctx := ctxFor(t, 30*time.Second)

	// Warm the pools' connections, so that dialling is not measured.
	for i := 0; i < 3; i++ {
		k := testutil.Key(t)
		if _, err := l.Acquire(ctx, k, "warm", time.Second); err != nil {
			t.Fatalf("warm-up Acquire: %v", err)
		}
		_ = l.Release(ctx, k, "warm")
	}

	// Two of three nodes answer 150ms late: a quorum needs one of them.
	const delay = 150 * time.Millisecond
	for _, p := range proxies[1:] {
		p.SetLatency(delay/2, 0) // each direction
	}

	t.Run("ShorterValidity", func(t *testing.T) {
		const ttl = 2 * time.Second
		key := testutil.Key(t)
		sent := time.Now()
		lease, err := l.Acquire(ctx, key, "a", ttl)
		if err != nil {
			t.Fatalf("Acquire: %v", err)
		}
		took := time.Since(sent)
		if took < delay {
			t.Fatalf("Acquire took %v, less than the slow nodes' delay %v: the quorum cannot have formed", took, delay)
		}
		drift := time.Duration(redislocker.DefaultDriftFactor*float64(ttl)) + redislocker.DefaultDriftExtra
		// Validity counts from the call: the caller may trust the lease
		// until sent+Validity, which is TTL - drift after it sent, so at
		// most TTL - delay - drift after Acquire returned.
		if lease.Validity > ttl-drift {
			t.Fatalf("validity %v exceeds TTL - drift = %v", lease.Validity, ttl-drift)
		}
		if left := time.Until(sent.Add(lease.Validity)); left > ttl-delay-drift {
			t.Fatalf("%v of trust left after a %v acquire; want at most TTL - delay - drift = %v", left, took, ttl-delay-drift)
		}
		if err := l.Release(ctx, key, "a"); err != nil {
			t.Fatalf("Release: %v", err)
		}
	})

	t.Run("LaterThanTTL", func(t *testing.T) {
		const ttl = 100 * time.Millisecond // shorter than the delay
		key := testutil.Key(t)
		start := time.Now()
		_, err := l.Acquire(ctx, key, "a", ttl)
		if err == nil {
			t.Fatal("Acquire succeeded although a quorum could only answer after the TTL")
		}
		if took := time.Since(start); took > ttl+2*time.Second {
			t.Fatalf("Acquire took %v; a slow node must not hold it past the TTL (+ cleanup)", took)
		}
		// Whatever the slow nodes granted late expires with the TTL: the
		// key is soon free by the group's account, and takeable.
		for _, p := range proxies {
			p.SetLatency(0, 0)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			if _, err := l.Acquire(ctx, key, "b", time.Second); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("key still not takeable 5s after a failed attempt with a 100ms TTL")
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
}

// TestRedlockPausedMinorityDoesNotDelay: one node that never answers does
// not hold up a quorum of the others.
func TestRedlockPausedMinorityDoesNotDelay(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	l := redlockOn(t, urlsOf(ss))
	ctx := ctxFor(t, 30*time.Second)
	if _, err := l.Inspect(ctx, testutil.Key(t)); err != nil { // dial every node
		t.Fatal(err)
	}
	if err := ss[2].Pause(); err != nil {
		t.Fatal(err)
	}
	defer ss[2].Resume()
	const ttl = 5 * time.Second
	for i := 0; i < 5; i++ {
		key := testutil.Key(t)
		start := time.Now()
		lease, err := l.Acquire(ctx, key, "a", ttl)
		if err != nil {
			t.Fatalf("Acquire with one paused node: %v", err)
		}
		if took := time.Since(start); took > ttl/5 {
			t.Fatalf("Acquire took %v with one paused node of three", took)
		}
		if lease.Validity < ttl/2 {
			t.Fatalf("validity %v", lease.Validity)
		}
		if err := l.Release(ctx, key, "a"); err != nil {
			t.Fatalf("Release: %v", err)
		}
	}
}

// TestRedlockTokensAcrossDivergedCounters: when nodes' counters disagree,
// the lease takes the highest token and raises the quorum's counters, so a
// later lease on another quorum still gets a greater token.
func TestRedlockTokensAcrossDivergedCounters(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	l := redlockOn(t, urlsOf(ss))
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)
	counter := redislocker.DefaultPrefix + ":{" + key + "}:token"
	// Two of three nodes are ahead, so every quorum includes one of them,
	// whichever nodes answer first.
	for _, s := range ss[:2] {
		if _, err := do(t, s.URL(), "SET", counter, 100); err != nil {
			t.Fatal(err)
		}
	}
	a, err := l.Acquire(ctx, key, "a", 10*time.Second)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	if a.Token != 101 {
		t.Fatalf("token %d, want 101 (the highest nodes')", a.Token)
	}
	// The granting nodes (a quorum, perhaps not all three) were raised.
	raised := 0
	for _, s := range ss {
		if n, err := redis.Int64(do(t, s.URL(), "GET", counter)); err == nil && n >= a.Token {
			raised++
		}
	}
	if raised < 2 {
		t.Fatalf("%d nodes have a counter >= %d, want a quorum", raised, a.Token)
	}
	if info, err := l.Inspect(ctx, key); err != nil || info.Token != a.Token {
		t.Fatalf("Inspect = %+v, %v; want token %d", info, err, a.Token)
	}
	if err := l.Release(ctx, key, "a"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	ss[0].Stop() // the node that set the pace is gone
	b, err := l.Acquire(ctx, key, "b", 10*time.Second)
	if err != nil {
		t.Fatalf("Acquire without node 0: %v", err)
	}
	if b.Token <= a.Token {
		t.Fatalf("token %d after %d: fencing went backwards", b.Token, a.Token)
	}
}

// TestRedlockRestartWithoutPersistence documents the limit stated in the
// package doc: a node that restarts empty forgets its counter, and a quorum
// made of amnesiac nodes hands out smaller tokens.
func TestRedlockRestartWithoutPersistence(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	l := redlockOn(t, urlsOf(ss))
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)
	var last locker.Lease
	for i := 0; i < 5; i++ {
		lease, err := l.Acquire(ctx, key, "a", 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		must(t, l.Release(ctx, key, "a"))
		last = lease
	}
	// Nodes 0 and 1 restart empty and form the quorum without node 2.
	for _, s := range ss[:2] {
		s.Stop()
		if err := s.Start(); err != nil {
			t.Fatal(err)
		}
	}
	ss[2].Stop()
	l = redlockOn(t, urlsOf(ss)) // fresh pools: the old connections died with their servers
	lease, err := l.Acquire(ctx, key, "a", 10*time.Second)
	if err != nil {
		t.Fatalf("Acquire after restarts: %v", err)
	}
	if lease.Token > last.Token {
		t.Fatalf("token %d after %d: the documented limit did not show; update the docs", lease.Token, last.Token)
	}
	t.Logf("after two of three nodes restarted empty, the token went from %d to %d (documented limit)", last.Token, lease.Token)
}

// TestRedlockSplitVoteHasWinner: many clients racing for a free key on
// Redlock produce exactly one winner, not a split vote with none.
func TestRedlockSplitVoteHasWinner(t *testing.T) {
	t.Parallel()
	ss := group(t, 5)
	const clients = 10
	ls := make([]*redislocker.Locker, clients)
	for i := range ls {
		ls[i] = redlockOn(t, urlsOf(ss))
	}
	ctx := ctxFor(t, 30*time.Second)
	for round := 0; round < 20; round++ {
		key := testutil.Key(t)
		won := make(chan int, clients)
		start := make(chan struct{})
		done := make(chan struct{})
		for i, l := range ls {
			go func() {
				defer func() { done <- struct{}{} }()
				<-start
				if _, err := l.Acquire(ctx, key, "c"+string(rune('a'+i)), 10*time.Second); err == nil {
					won <- i
				} else if !errors.Is(err, locker.ErrNotObtained) {
					t.Errorf("client %d: %v", i, err)
				}
			}()
		}
		close(start)
		for range ls {
			<-done
		}
		if n := len(won); n != 1 {
			t.Fatalf("round %d: %d winners, want 1", round, n)
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestRedlockInspectReportsQuorum: Inspect reports the lease a quorum of
// nodes agrees on, not a stray minority entry.
func TestRedlockInspectReportsQuorum(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	l := redlockOn(t, urlsOf(ss))
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)
	lockKey := redislocker.DefaultPrefix + ":{" + key + "}"

	// A stray entry on one node only (a late grant, say): no quorum.
	if _, err := do(t, ss[2].URL(), "SET", lockKey, "9:stray", "PX", 60000); err != nil {
		t.Fatal(err)
	}
	if info, err := l.Inspect(ctx, key); err != nil || info.Held() {
		t.Fatalf("Inspect with one stray node = %+v, %v; want free", info, err)
	}
	lease, err := l.Acquire(ctx, key, "a", 10*time.Second)
	if err != nil {
		t.Fatalf("Acquire on two of three nodes: %v", err)
	}
	info, err := l.Inspect(ctx, key)
	if err != nil || info.Owner != "a" || info.Token != lease.Token || info.TTL <= 0 || info.TTL > 10*time.Second {
		t.Fatalf("Inspect = %+v, %v; want owner a, token %d", info, err, lease.Token)
	}
	if err := l.Release(ctx, key, "a"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	if v, err := redis.String(do(t, ss[2].URL(), "GET", lockKey)); err != nil || v != "9:stray" {
		t.Fatalf("Release touched another owner's entry: %q, %v", v, err)
	}
}

// TestRedlockDoesNotWaitOutAHolder: an attempt that wins the free nodes of
// a key another owner holds on a quorum gives up at once; it does not wait
// for that lease to end (Acquire is one attempt).
func TestRedlockDoesNotWaitOutAHolder(t *testing.T) {
	t.Parallel()
	ss := group(t, 5)
	l := redlockOn(t, urlsOf(ss))
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)
	lockKey := redislocker.DefaultPrefix + ":{" + key + "}"
	for _, s := range ss[1:4] { // a quorum, without the lowest node
		if _, err := do(t, s.URL(), "SET", lockKey, "5:holder", "PX", 1500); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	_, err := l.Acquire(ctx, key, "a", 10*time.Second)
	if !errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("Acquire of a key held on a quorum: %v; want ErrNotObtained", err)
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Fatalf("Acquire took %v: it waited for the holder", took)
	}
	for _, s := range []*testutil.RedisServer{ss[0], ss[4]} {
		if lockKeyExists(t, s.URL(), key) {
			t.Fatal("the failed attempt left its grant on a free node")
		}
	}
}

// TestRedlockHungNodeReadFirst: a node that stops answering while the
// group is healthy — the node whose reply a fan-out reads first — holds a
// call up by a bounded patience at most, never until the lease's end, and
// later calls do not wait for it at all beyond a short grace.
func TestRedlockHungNodeReadFirst(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	l := redlockOn(t, urlsOf(ss))
	ctx := ctxFor(t, 60*time.Second)
	for i := 0; i < 3; i++ { // warm every node's pool
		k := testutil.Key(t)
		if _, err := l.Acquire(ctx, k, "warm", time.Second); err != nil {
			t.Fatalf("warm-up Acquire: %v", err)
		}
		must(t, l.Release(ctx, k, "warm"))
	}
	if err := ss[0].Pause(); err != nil {
		t.Fatal(err)
	}
	defer ss[0].Resume()
	const ttl = 10 * time.Second
	var slowest time.Duration
	for i := 0; i < 5; i++ {
		key := testutil.Key(t)
		start := time.Now()
		lease, err := l.Acquire(ctx, key, "a", ttl)
		took := time.Since(start)
		if err != nil {
			t.Fatalf("Acquire %d with node 0 hung: %v", i, err)
		}
		if lease.Validity < ttl/2 {
			t.Fatalf("validity %v", lease.Validity)
		}
		if i > 0 {
			slowest = max(slowest, took)
		}
		if took > 2*time.Second {
			t.Fatalf("Acquire %d took %v with one hung node of three", i, took)
		}
		start = time.Now()
		if err := l.Release(ctx, key, "a"); err != nil {
			t.Fatalf("Release %d: %v", i, err)
		}
		if took := time.Since(start); took > 2*time.Second {
			t.Fatalf("Release %d took %v with one hung node of three", i, took)
		}
	}
	if slowest > time.Second {
		t.Fatalf("after the first call found node 0 hung, an Acquire still took %v", slowest)
	}
}

// TestRedlockCancellableContext: a context that can be cancelled but has
// no deadline, and one with neither, both work, and cancelling the first
// during a wait for a hung quorum stops the wait promptly.
func TestRedlockCancellableContext(t *testing.T) {
	t.Parallel()
	ss := group(t, 3)
	l := redlockOn(t, urlsOf(ss))
	key := testutil.Key(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := l.Acquire(ctx, key, "a", 10*time.Second); err != nil {
		t.Fatalf("Acquire with a cancellable context: %v", err)
	}
	if err := l.Release(context.Background(), key, "a"); err != nil {
		t.Fatalf("Release with a background context: %v", err)
	}
	for _, s := range ss[1:] {
		if err := s.Pause(); err != nil {
			t.Fatal(err)
		}
		defer s.Resume()
	}
	time.AfterFunc(100*time.Millisecond, cancel)
	start := time.Now()
	_, err := l.Acquire(ctx, key, "b", 10*time.Second)
	if !errors.Is(err, locker.ErrNotObtained) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire cancelled while waiting for a hung quorum: %v; want ErrNotObtained and context.Canceled", err)
	}
	// The cancellation ends the wait; the cleanup of the hung nodes is
	// bounded by a second.
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("cancelled Acquire took %v", took)
	}
}

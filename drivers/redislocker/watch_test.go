package redislocker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

// releasedChannel is the channel release.lua publishes key's releases on.
func releasedChannel(prefix, key string) string { return prefix + ":{" + key + "}:released" }

// numsub returns how many connections of the server at url are subscribed
// to channel.
func numsub(t *testing.T, url, channel string) int {
	t.Helper()
	vs, err := redis.Values(do(t, url, "PUBSUB", "NUMSUB", channel))
	if err != nil || len(vs) != 2 {
		t.Fatalf("PUBSUB NUMSUB: %v, %v", vs, err)
	}
	n, _ := redis.Int(vs[1], nil)
	return n
}

// pubsubClients returns the CLIENT LIST lines of the server's pub/sub
// connections.
func pubsubClients(t *testing.T, url string) []string {
	t.Helper()
	s, err := redis.String(do(t, url, "CLIENT", "LIST", "TYPE", "pubsub"))
	if err != nil {
		t.Fatalf("CLIENT LIST: %v", err)
	}
	return strings.Fields(strings.ReplaceAll(strings.TrimSpace(s), " ", "_"))
}

func waitUntil(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// received reports whether ch delivers a value within d.
func received(ch <-chan struct{}, d time.Duration) bool {
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// TestWatchWakesWaiter: a Lock call that polls once an hour gets the lock
// as soon as the holder unlocks, on one server and on Redlock groups.
func TestWatchWakesWaiter(t *testing.T) {
	t.Parallel()
	cases := map[string]func(t *testing.T) []string{
		"single":    func(t *testing.T) []string { return []string{testutil.RedisURL(t)} },
		"redlock-3": func(t *testing.T) []string { return testutil.RedlockURLs(t, 3) },
		"redlock-5": func(t *testing.T) []string { return testutil.RedlockURLs(t, 5) },
	}
	for name, urls := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			us := urls(t)
			prefix, _ := testutil.RedisPrefix()
			mk := func() *redislocker.Locker {
				var l *redislocker.Locker
				var err error
				if len(us) == 1 {
					l, err = redislocker.New(newPool(t, us[0]), redislocker.Prefix(prefix))
				} else {
					l = redlockOn(t, us, redislocker.Prefix(prefix))
				}
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
				return l
			}
			fa, err := locker.NewFactory(mk())
			if err != nil {
				t.Fatal(err)
			}
			fb, err := locker.NewFactory(mk())
			if err != nil {
				t.Fatal(err)
			}
			key := testutil.Key(t)
			ctx := ctxFor(t, 30*time.Second)
			a, b := fa.NewLock(key), fb.NewLock(key)
			if err := a.TryLock(ctx); err != nil {
				t.Fatal(err)
			}
			got := make(chan error, 1)
			var attempts atomic.Int64
			go func() {
				got <- b.Lock(ctx, locker.Retries(1), locker.Interval(time.Hour), locker.Observe(func(locker.Event) { attempts.Add(1) }))
			}()
			// b is subscribed (on every node) once its first attempt failed
			// and its Watch returned: wait for the servers to say so.
			ch := releasedChannel(prefix, key)
			waitUntil(t, 10*time.Second, "b's subscription", func() bool {
				for _, u := range us {
					if numsub(t, u, ch) == 0 {
						return false
					}
				}
				return attempts.Load() > 0
			})
			start := time.Now()
			if err := a.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-got:
				if err != nil {
					t.Fatalf("b.Lock: %v", err)
				}
				t.Logf("hand-off in %v", time.Since(start))
			case <-time.After(10 * time.Second):
				t.Fatal("b was not woken by a's release")
			}
			if err := b.Unlock(ctx); err != nil {
				t.Fatal(err)
			}
			// b's Watch has stopped: nobody listens any more.
			waitUntil(t, 10*time.Second, "the unsubscription", func() bool {
				for _, u := range us {
					if numsub(t, u, ch) != 0 {
						return false
					}
				}
				return true
			})
		})
	}
}

// TestWatchSharesOneConnection: many watchers of many keys share one
// subscription connection, one subscription per key, and each watcher of
// a key hears its release.
func TestWatchSharesOneConnection(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t)
	l, err := redislocker.New(newPool(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := ctxFor(t, 30*time.Second)
	const keys, perKey = 40, 5
	type watch struct {
		ch   <-chan struct{}
		stop func()
	}
	ws := make([][]watch, keys)
	errs := make(chan error, keys*perKey)
	for k := 0; k < keys; k++ {
		ws[k] = make([]watch, perKey)
		for i := 0; i < perKey; i++ {
			go func() {
				ch, stop, err := l.Watch(ctx, fmt.Sprintf("key-%d", k))
				ws[k][i] = watch{ch, stop}
				errs <- err
			}()
		}
	}
	for i := 0; i < keys*perKey; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("Watch: %v", err)
		}
	}
	clients := pubsubClients(t, srv.URL())
	if len(clients) != 1 || !strings.Contains(clients[0], fmt.Sprintf("_sub=%d_", keys)) {
		t.Fatalf("pub/sub connections: %q; want one with sub=%d", clients, keys)
	}
	for k := 0; k < keys; k++ {
		if n := numsub(t, srv.URL(), releasedChannel(redislocker.DefaultPrefix, fmt.Sprintf("key-%d", k))); n != 1 {
			t.Fatalf("key-%d: %d subscribers, want 1", k, n)
		}
	}
	// A release wakes every watcher of its key, and only them.
	if _, err := l.Acquire(ctx, "key-7", "owner", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, "key-7", "owner"); err != nil {
		t.Fatal(err)
	}
	for i, w := range ws[7] {
		if !received(w.ch, 5*time.Second) {
			t.Fatalf("watcher %d of key-7 was not woken", i)
		}
	}
	for i, w := range ws[8] {
		if received(w.ch, 0) {
			t.Fatalf("watcher %d of key-8 was woken by key-7's release", i)
		}
	}
	// Stopping all but one watcher of a key keeps its subscription.
	for k := 0; k < keys; k++ {
		for _, w := range ws[k][1:] {
			w.stop()
			w.stop() // idempotent
		}
	}
	if _, err := l.Acquire(ctx, "key-3", "owner", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, "key-3", "owner"); err != nil {
		t.Fatal(err)
	}
	if !received(ws[3][0].ch, 5*time.Second) {
		t.Fatal("the last watcher of key-3 was not woken")
	}
	// The last stop unsubscribes; the connection stays for later Watches.
	for k := 0; k < keys; k++ {
		ws[k][0].stop()
	}
	waitUntil(t, 10*time.Second, "every unsubscription", func() bool {
		c := pubsubClients(t, srv.URL())
		return len(c) == 0 || (len(c) == 1 && strings.Contains(c[0], "_sub=0_"))
	})
	ch, stop, err := l.Watch(ctx, "key-0")
	if err != nil {
		t.Fatalf("Watch after every stop: %v", err)
	}
	defer stop()
	if n := numsub(t, srv.URL(), releasedChannel(redislocker.DefaultPrefix, "key-0")); n != 1 {
		t.Fatalf("re-watched key-0: %d subscribers, want 1", n)
	}
	_ = ch
}

// TestWatchCloseLeavesNothing: Close ends the subscription connections and
// their goroutines, on one server and on Redlock, and Watch then fails.
// Not parallel: it checks the process's goroutines.
func TestWatchCloseLeavesNothing(t *testing.T) {
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("nodes-%d", n), func(t *testing.T) {
			before := goleak.IgnoreCurrent()
			srvs := group(t, n)
			us := urlsOf(srvs)
			var l *redislocker.Locker
			var err error
			if n == 1 {
				l, err = redislocker.Open(us[0])
			} else {
				l, err = redislocker.OpenRedlock(us)
			}
			if err != nil {
				t.Fatal(err)
			}
			ctx := ctxFor(t, 30*time.Second)
			for i := 0; i < 3; i++ {
				if _, _, err := l.Watch(ctx, fmt.Sprintf("k%d", i)); err != nil {
					t.Fatalf("Watch: %v", err)
				}
			}
			// Redlock's Watch returns once a quorum confirmed: the other
			// nodes' connections may still be on their way.
			for _, u := range us {
				waitUntil(t, 10*time.Second, "one pub/sub connection per server", func() bool {
					return len(pubsubClients(t, u)) == 1
				})
			}
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			if _, _, err := l.Watch(ctx, "k0"); err == nil {
				t.Fatal("Watch after Close succeeded")
			}
			if err := goleak.Find(before); err != nil {
				t.Fatalf("goroutines left after Close: %v", err)
			}
			for _, u := range us {
				waitUntil(t, 10*time.Second, "the server to drop the subscription connection", func() bool {
					return len(pubsubClients(t, u)) == 0
				})
			}
		})
	}
}

// TestWatchRecoversFromKilledConnection: a killed subscription connection
// is redialled; watchers are woken once it is back (a release may have
// gone unheard), and hear releases again.
func TestWatchRecoversFromKilledConnection(t *testing.T) {
	t.Parallel()
	for _, n := range []int{1, 3} {
		t.Run(fmt.Sprintf("nodes-%d", n), func(t *testing.T) {
			t.Parallel()
			us := urlsOf(group(t, n))
			var l *redislocker.Locker
			if n == 1 {
				var err error
				if l, err = redislocker.New(newPool(t, us[0])); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { l.Close() })
			} else {
				l = redlockOn(t, us)
			}
			ctx := ctxFor(t, 30*time.Second)
			ch, stop, err := l.Watch(ctx, "k")
			if err != nil {
				t.Fatal(err)
			}
			defer stop()
			subscribed := func() bool {
				for _, u := range us {
					if numsub(t, u, releasedChannel(redislocker.DefaultPrefix, "k")) != 1 {
						return false
					}
				}
				return true
			}
			// Redlock's Watch returns once a quorum confirmed; wait for all.
			waitUntil(t, 10*time.Second, "the subscriptions", subscribed)
			for round := 0; round < 3; round++ {
				for _, u := range us {
					if k, err := redis.Int(do(t, u, "CLIENT", "KILL", "TYPE", "pubsub")); err != nil || k != 1 {
						t.Fatalf("CLIENT KILL TYPE pubsub: %d, %v", k, err)
					}
				}
				if !received(ch, 10*time.Second) {
					t.Fatalf("round %d: no wake-up after the connection came back", round)
				}
				waitUntil(t, 10*time.Second, "the re-subscription", subscribed)
				for received(ch, 50*time.Millisecond) {
					// other nodes' wake-ups after their reconnection
				}
				if _, err := l.Acquire(ctx, "k", "o", time.Minute); err != nil {
					t.Fatal(err)
				}
				if err := l.Release(ctx, "k", "o"); err != nil {
					t.Fatal(err)
				}
				if !received(ch, 10*time.Second) {
					t.Fatalf("round %d: release not heard after reconnecting", round)
				}
			}
			// New Watches work on the redialled connection too.
			waitUntil(t, 10*time.Second, "a Watch to succeed", func() bool {
				_, stop, err := l.Watch(ctx, "other")
				if err == nil {
					stop()
				}
				return err == nil
			})
		})
	}
}

// TestWatchDownServer: with the server gone, Watch fails (the waiter
// polls) rather than hang, and a Lock still gets the key by polling.
func TestWatchDownServer(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t)
	l, err := redislocker.New(newPool(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := ctxFor(t, 30*time.Second)
	if _, stop, err := l.Watch(ctx, "k"); err != nil {
		t.Fatal(err)
	} else {
		defer stop()
	}
	srv.Stop()
	waitUntil(t, 10*time.Second, "Watch to fail", func() bool {
		_, stop, err := l.Watch(ctx, "k2")
		if err == nil {
			stop()
			return false
		}
		if !strings.HasPrefix(err.Error(), "redislocker: watch: ") {
			t.Fatalf("error %q lacks the prefix", err)
		}
		return true
	})
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "Watch to work again", func() bool {
		_, stop, err := l.Watch(ctx, "k2")
		if err == nil {
			stop()
		}
		return err == nil
	})
}

// barePool hides a *redis.Pool's dial settings.
type barePool struct{ p *redis.Pool }

func (b barePool) GetContext(ctx context.Context) (redis.Conn, error) { return b.p.GetContext(ctx) }

// TestWatchWithoutDialer: a pool that does not say how to dial gives no
// subscription: Watch fails at once, and the Subscriber option supplies
// one. Subscriber() turns notifications off.
func TestWatchWithoutDialer(t *testing.T) {
	t.Parallel()
	url := testutil.RedisURL(t)
	pool := newPool(t, url)
	ctx := ctxFor(t, 30*time.Second)
	for name, opts := range map[string][]redislocker.Option{
		"bare pool":    nil,
		"Subscriber()": {redislocker.Subscriber()},
	} {
		var p redislocker.Pool = barePool{pool}
		if name == "Subscriber()" {
			p = pool
		}
		l, err := redislocker.New(p, opts...)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := l.Watch(ctx, "k"); err == nil || !strings.HasPrefix(err.Error(), "redislocker: watch: ") {
			t.Fatalf("%s: Watch: %v; want a redislocker error", name, err)
		}
		l.Close()
	}
	l, err := redislocker.New(barePool{pool}, redislocker.Subscriber(pool.DialContext))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, stop, err := l.Watch(ctx, "k")
	if err != nil {
		t.Fatalf("Watch with a Subscriber: %v", err)
	}
	stop()
	if _, _, err := l.Watch(ctx, ""); !errors.Is(err, locker.ErrInvalidKey) {
		t.Fatalf("Watch of an empty key: %v", err)
	}

	// Bad Subscriber options.
	dial := redislocker.DialFunc(pool.DialContext)
	for name, mk := range map[string]func() (*redislocker.Locker, error){
		"nil dial":    func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Subscriber(nil)) },
		"two for one": func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Subscriber(dial, dial)) },
		"two for three": func() (*redislocker.Locker, error) {
			return redislocker.NewRedlock([]redislocker.Pool{pool, pool, pool}, redislocker.Subscriber(dial, dial))
		},
	} {
		if _, err := mk(); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("%s: %v; want ErrInvalidOption", name, err)
		}
	}
}

// TestWatchDeniedChannels: a user whose ACL denies pub/sub channels (Redis
// 7's default for new users) still releases, Watch fails (waiters poll),
// and the refused subscription connection is not redialled in a tight loop.
func TestWatchDeniedChannels(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t)
	if _, err := do(t, srv.URL(), "ACL", "SETUSER", "locks", "on", ">pw", "~*", "+@all", "resetchannels"); err != nil {
		t.Skipf("no ACLs on this server: %v", err) // Redis < 6
	}
	l, err := redislocker.Open(fmt.Sprintf("redis://locks:pw@%s", srv.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx := ctxFor(t, 30*time.Second)
	if _, err := l.Acquire(ctx, "k", "o", time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := l.Release(ctx, "k", "o"); err != nil {
		t.Fatalf("Release by a user who may not publish: %v", err)
	}
	if _, _, err := l.Watch(ctx, "k"); err == nil {
		t.Fatal("Watch succeeded without channel permissions")
	}
	stats := func() int {
		s, err := redis.String(do(t, srv.URL(), "INFO", "stats"))
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(s, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_connections_received:"); ok {
				var n int
				fmt.Sscan(v, &n)
				return n
			}
		}
		t.Fatal("no total_connections_received in INFO")
		return 0
	}
	before := stats()
	// Keep a watcher registered (as a waiting Lock would) while watching
	// the connections the Locker opens.
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		if _, stop, err := l.Watch(ctx, "k"); err == nil {
			stop()
			t.Fatal("Watch succeeded without channel permissions")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Backoff doubles from 25ms: about 6 dials in a second, plus the
	// checks' own connections.
	if n := stats() - before; n > 40 {
		t.Fatalf("%d connections in a second: the refused subscription is redialled in a tight loop", n)
	}
}

package redislocker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

// TestOptions: bad configuration is an ErrInvalidOption error at
// construction, never a panic, and needs no server.
func TestOptions(t *testing.T) {
	t.Parallel()
	pool := &redis.Pool{Dial: func() (redis.Conn, error) { return nil, errors.New("unused") }}
	var nilPool *redis.Pool
	bad := []struct {
		name string
		new  func() (*redislocker.Locker, error)
	}{
		{"nil pool", func() (*redislocker.Locker, error) { return redislocker.New(nil) }},
		{"typed nil pool", func() (*redislocker.Locker, error) { return redislocker.New(nilPool) }},
		{"no pools", func() (*redislocker.Locker, error) { return redislocker.NewRedlock(nil) }},
		{"nil pool among pools", func() (*redislocker.Locker, error) {
			return redislocker.NewRedlock([]redislocker.Pool{pool, nilPool, pool})
		}},
		{"empty prefix", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix("")) }},
		{"prefix with space", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix("a b")) }},
		{"prefix with brace", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix("a{b")) }},
		{"prefix with closing brace", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix("a}")) }},
		{"prefix with quote", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix(`a"b`)) }},
		{"prefix with single quote", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix("a'b")) }},
		{"prefix with backslash", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix(`a\b`)) }},
		{"prefix with newline", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix("a\nb")) }},
		{"prefix not UTF-8", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Prefix("a\xffb")) }},
		{"prefix too long", func() (*redislocker.Locker, error) {
			return redislocker.New(pool, redislocker.Prefix(strings.Repeat("p", 257)))
		}},
		{"negative drift", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Drift(-0.1, 0)) }},
		{"drift factor 1", func() (*redislocker.Locker, error) { return redislocker.New(pool, redislocker.Drift(1, 0)) }},
		{"negative drift extra", func() (*redislocker.Locker, error) {
			return redislocker.New(pool, redislocker.Drift(0.01, -time.Millisecond))
		}},
		{"open: no URLs", func() (*redislocker.Locker, error) { return redislocker.OpenRedlock(nil) }},
		{"open: bad scheme", func() (*redislocker.Locker, error) { return redislocker.Open("http://127.0.0.1:6379") }},
		{"open: no host", func() (*redislocker.Locker, error) { return redislocker.Open("redis://") }},
		{"open: malformed", func() (*redislocker.Locker, error) { return redislocker.Open("redis://:pass word@[::1") }},
		{"open: bad db", func() (*redislocker.Locker, error) { return redislocker.Open("redis://127.0.0.1:6379/x") }},
		{"open: bad prefix", func() (*redislocker.Locker, error) {
			return redislocker.Open("redis://127.0.0.1:6379", redislocker.Prefix("a b"))
		}},
	}
	for _, c := range bad {
		t.Run(c.name, func(t *testing.T) {
			l, err := c.new()
			if !errors.Is(err, locker.ErrInvalidOption) {
				t.Fatalf("got %v, %v; want an error matching ErrInvalidOption", l, err)
			}
			if !strings.HasPrefix(err.Error(), "redislocker: ") {
				t.Fatalf("error %q lacks the package prefix", err)
			}
			if strings.Contains(err.Error(), "pass word") {
				t.Fatalf("error %q shows the password", err)
			}
		})
	}
	good := []redislocker.Option{
		redislocker.Prefix("app:locks-v2/x.y"), redislocker.Prefix("ünïcode"), redislocker.Drift(0, 0), redislocker.Drift(0.5, time.Second), nil,
	}
	for i, o := range good {
		if _, err := redislocker.New(pool, o); err != nil {
			t.Errorf("good option %d: %v", i, err)
		}
	}
	if l, err := redislocker.Open("rediss://user:pw@example.invalid:6380/2"); err != nil {
		t.Errorf("Open of a well-formed URL: %v", err)
	} else if err := l.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

// TestBackendErrorsAreNotContention: refused connections and wrong
// passwords are wrapped backend errors, never ErrNotObtained or ErrNotHeld.
func TestBackendErrorsAreNotContention(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t, "--requirepass", "right")
	closed := fmt.Sprintf("redis://127.0.0.1:%d", testutil.FreePort(t))
	wrong := fmt.Sprintf("redis://:wrong@127.0.0.1:%d", srv.Port)
	none := srv.URL() // no password at all
	cases := map[string][]string{
		"refused":              {closed},
		"wrong password":       {wrong},
		"no password":          {none},
		"redlock refused":      {closed, closed, closed},
		"redlock bad password": {wrong, wrong, srv.URL()},
	}
	for name, urls := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			var l *redislocker.Locker
			var err error
			if len(urls) == 1 {
				l, err = redislocker.Open(urls[0])
			} else {
				l, err = redislocker.OpenRedlock(urls)
			}
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			defer l.Close()
			ctx := ctxFor(t, 10*time.Second)
			key := testutil.Key(t)
			check := func(op string, err error) {
				t.Helper()
				switch {
				case err == nil:
					t.Fatalf("%s succeeded", op)
				case errors.Is(err, locker.ErrNotObtained), errors.Is(err, locker.ErrNotHeld):
					t.Fatalf("%s: backend failure disguised as contention: %v", op, err)
				case !strings.HasPrefix(err.Error(), "redislocker: "+op+": "):
					t.Fatalf("%s: error %q lacks the prefix", op, err)
				case strings.Contains(err.Error(), "wrong@"), strings.Contains(err.Error(), ":right"):
					t.Fatalf("%s: error %q shows a password", op, err)
				}
			}
			_, err = l.Acquire(ctx, key, "a", time.Second)
			check("acquire", err)
			_, err = l.Refresh(ctx, key, "a", time.Second)
			check("refresh", err)
			check("release", l.Release(ctx, key, "a"))
			_, err = l.Inspect(ctx, key)
			check("inspect", err)
		})
	}
}

// TestOpenURL: a URL's password and database number are used.
func TestOpenURL(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t, "--requirepass", "s3cret")
	l, err := redislocker.Open(fmt.Sprintf("redis://:s3cret@127.0.0.1:%d/3", srv.Port), redislocker.Prefix("p"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)
	lease, err := l.Acquire(ctx, key, "a", 10*time.Second)
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	c, err := redis.DialURL(fmt.Sprintf("redis://:s3cret@127.0.0.1:%d/3", srv.Port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	v, err := redis.String(c.Do("GET", "p:{"+key+"}"))
	if err != nil || v != fmt.Sprintf("%d:a", lease.Token) {
		t.Fatalf("lock in database 3 = %q, %v", v, err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := l.Inspect(ctx, key); err == nil || errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("Inspect after Close: got %v, want a backend error", err)
	}
}

// TestCallerPoolUntouched: New never closes the caller's pool.
func TestCallerPoolUntouched(t *testing.T) {
	t.Parallel()
	pool := newPool(t, testutil.RedisURL(t))
	l, err := redislocker.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	c, err := pool.GetContext(context.Background())
	if err != nil {
		t.Fatalf("caller's pool closed by Locker.Close: %v", err)
	}
	c.Close()
}

// TestKeyLayout: the lock and its counter live at <prefix>:{<key>} and
// <prefix>:{<key>}:token; the counter has no expiry and survives release
// and expiry, so tokens keep increasing.
func TestKeyLayout(t *testing.T) {
	t.Parallel()
	url := testutil.RedisURL(t)
	prefix, _ := testutil.RedisPrefix()
	prefix += ".layout"
	l, err := redislocker.New(newPool(t, url), redislocker.Prefix(prefix))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t) + "/ünï{c}ode"
	lockKey, counterKey := prefix+":{"+key+"}", prefix+":{"+key+"}:token"

	a, err := l.Acquire(ctx, key, "owner:with:colons", 250*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	v, err := redis.String(do(t, url, "GET", lockKey))
	if err != nil || v != fmt.Sprintf("%d:owner:with:colons", a.Token) {
		t.Fatalf("lock value %q, %v", v, err)
	}
	pttl, err := redis.Int64(do(t, url, "PTTL", lockKey))
	if err != nil || pttl <= 0 || pttl > 250 {
		t.Fatalf("lock PTTL %d, %v; want (0, 250]", pttl, err)
	}
	info, err := l.Inspect(ctx, key)
	if err != nil || info.Owner != "owner:with:colons" || info.Token != a.Token || info.TTL <= 0 || info.TTL > 250*time.Millisecond {
		t.Fatalf("Inspect = %+v, %v", info, err)
	}
	// Expiry by the server's clock, then the counter is still there.
	deadline := time.Now().Add(5 * time.Second)
	for lockKeyExistsAt(t, url, lockKey) {
		if time.Now().After(deadline) {
			t.Fatal("lock did not expire")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if pttl, err := redis.Int64(do(t, url, "PTTL", counterKey)); err != nil || pttl != -1 {
		t.Fatalf("counter PTTL %d, %v; want -1 (no expiry)", pttl, err)
	}
	b, err := l.Acquire(ctx, key, "b", time.Second)
	if err != nil || b.Token <= a.Token {
		t.Fatalf("Acquire after expiry: %+v, %v; want a token above %d", b, err, a.Token)
	}
	must(t, l.Release(ctx, key, "b"))
	c, err := l.Acquire(ctx, key, "c", time.Second)
	if err != nil || c.Token <= b.Token {
		t.Fatalf("Acquire after release: %+v, %v; want a token above %d", c, err, b.Token)
	}
	must(t, l.Release(ctx, key, "c"))
}

func lockKeyExistsAt(t *testing.T, url, k string) bool {
	n, err := redis.Int(do(t, url, "EXISTS", k))
	if err != nil {
		t.Fatal(err)
	}
	return n == 1
}

// TestSubMillisecondTTL: TTLs go to Redis in whole milliseconds, and the
// reported validity says so.
func TestSubMillisecondTTL(t *testing.T) {
	t.Parallel()
	l, err := redislocker.New(newPool(t, testutil.RedisURL(t)))
	if err != nil {
		t.Fatal(err)
	}
	lease, err := l.Acquire(ctxFor(t, 10*time.Second), testutil.Key(t), "a", 1500*time.Microsecond)
	if err != nil {
		t.Fatal(err)
	}
	if lease.Validity != time.Millisecond {
		t.Fatalf("validity %v for a 1.5ms TTL, want 1ms (what Redis was told)", lease.Validity)
	}
}

// TestCancelledContextDoesNoIO: a context that is already done fails every
// call before any I/O, Acquire with an error matching ErrNotObtained too.
func TestCancelledContextDoesNoIO(t *testing.T) {
	t.Parallel()
	var gets int
	pool := poolFunc(func(ctx context.Context) (redis.Conn, error) {
		gets++
		return nil, errors.New("I/O attempted")
	})
	l, err := redislocker.New(pool)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = l.Acquire(ctx, "k", "a", time.Second)
	if !errors.Is(err, locker.ErrNotObtained) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Acquire: %v; want ErrNotObtained and context.Canceled", err)
	}
	_, err = l.Refresh(ctx, "k", "a", time.Second)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Refresh: %v", err)
	}
	if err := l.Release(ctx, "k", "a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Release: %v", err)
	}
	if _, err := l.Inspect(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Inspect: %v", err)
	}
	if gets != 0 {
		t.Fatalf("%d connections asked for", gets)
	}
}

type poolFunc func(ctx context.Context) (redis.Conn, error)

func (f poolFunc) GetContext(ctx context.Context) (redis.Conn, error) { return f(ctx) }

// TestHungServerContexts: against a server that stops answering, a
// request with a deadline ends at the deadline (applied as the
// connection's read timeout), and one whose context can only be cancelled
// ends at the cancellation; neither hangs, and Acquire's error matches
// ErrNotObtained and the context's error.
func TestHungServerContexts(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t)
	l, err := redislocker.New(newPool(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	// Warm the pool, then hang the server.
	if _, err := l.Inspect(ctxFor(t, 10*time.Second), "k"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Pause(); err != nil {
		t.Fatal(err)
	}
	defer srv.Resume()
	const wait = 300 * time.Millisecond
	ctxs := map[string]func() (context.Context, context.CancelFunc, error){
		"deadline": func() (context.Context, context.CancelFunc, error) {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			return ctx, cancel, context.DeadlineExceeded
		},
		"cancel": func() (context.Context, context.CancelFunc, error) {
			ctx, cancel := context.WithCancel(context.Background())
			time.AfterFunc(wait, cancel)
			return ctx, cancel, context.Canceled
		},
	}
	for name, mk := range ctxs {
		ops := map[string]func(ctx context.Context) error{
			"Acquire": func(ctx context.Context) error {
				_, err := l.Acquire(ctx, "k", "a", time.Minute)
				if err != nil && !errors.Is(err, locker.ErrNotObtained) {
					t.Errorf("%s: Acquire: %v; want ErrNotObtained", name, err)
				}
				return err
			},
			"Release": func(ctx context.Context) error { return l.Release(ctx, "k", "a") },
			"Refresh": func(ctx context.Context) error {
				_, err := l.Refresh(ctx, "k", "a", time.Minute)
				return err
			},
			"Inspect": func(ctx context.Context) error {
				_, err := l.Inspect(ctx, "k")
				return err
			},
		}
		for op, f := range ops {
			ctx, cancel, want := mk()
			start := time.Now()
			err := f(ctx)
			took := time.Since(start)
			cancel()
			if !errors.Is(err, want) {
				t.Errorf("%s: %s: %v; want an error matching %v", name, op, err, want)
			}
			if took > wait+5*time.Second {
				t.Errorf("%s: %s took %v", name, op, took)
			}
		}
	}
}

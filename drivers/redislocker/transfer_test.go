package redislocker_test

import (
	"context"
	"errors"
	"reflect"
	"strconv"
	"strings"
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

// Transfer's owner checks, fencing and expiry are the conformance suite's
// Guarantees/Handoff tests.

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

type transferLocker interface {
	locker.Locker
	locker.Transferer
}

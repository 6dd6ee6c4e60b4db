package redislocker_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

// onePool returns a pool of at most one connection to url.
func onePool(b *testing.B, url string) *redis.Pool {
	p := &redis.Pool{
		DialContext: func(ctx context.Context) (redis.Conn, error) { return redis.DialURLContext(ctx, url) },
		MaxIdle:     1,
		MaxActive:   1,
		Wait:        true,
	}
	b.Cleanup(func() { p.Close() })
	return p
}

// rawUnlock is the usual compare-and-delete.
var rawUnlock = redis.NewScript(1, `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end`)

// BenchmarkLockUnlock measures one uncontended acquire+release on a single
// Redis over one connection: through the driver (with and without a
// cancellable context, which costs redigo a goroutine per call), through
// locker.Factory's TryLock/Unlock, and the raw floor: SET NX PX plus a Lua
// compare-and-delete through redigo, each on the same server in the same
// run. Compare the ns/op of the sub-benchmarks of one run.
func BenchmarkLockUnlock(b *testing.B) {
	url := testutil.RedisURL(b)
	prefix, _ := testutil.RedisPrefix()
	const ttl = 10 * time.Second

	b.Run("raw", func(b *testing.B) {
		pool := onePool(b, url)
		key := prefix + ":raw:" + strconv.Itoa(b.N)
		owner := "0123456789abcdef0123456789abcdef"
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			c := pool.Get()
			ok, err := redis.String(c.Do("SET", key, owner, "NX", "PX", ttl.Milliseconds()))
			if err != nil || ok != "OK" {
				b.Fatalf("SET NX PX: %q, %v", ok, err)
			}
			c.Close()
			c = pool.Get()
			n, err := redis.Int(rawUnlock.Do(c, key, owner))
			if err != nil || n != 1 {
				b.Fatalf("compare-and-delete: %d, %v", n, err)
			}
			c.Close()
		}
	})

	driver := func(b *testing.B, ctx context.Context) {
		l, err := redislocker.New(onePool(b, url), redislocker.Prefix(prefix))
		if err != nil {
			b.Fatal(err)
		}
		key := "bench." + strconv.Itoa(b.N)
		owner := "0123456789abcdef0123456789abcdef"
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := l.Acquire(ctx, key, owner, ttl); err != nil {
				b.Fatal(err)
			}
			if err := l.Release(ctx, key, owner); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("driver", func(b *testing.B) { driver(b, context.Background()) })
	b.Run("driver-ctx", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		driver(b, ctx)
	})
	b.Run("driver-deadline", func(b *testing.B) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
		defer cancel()
		driver(b, ctx)
	})

	b.Run("factory", func(b *testing.B) {
		l, err := redislocker.New(onePool(b, url), redislocker.Prefix(prefix))
		if err != nil {
			b.Fatal(err)
		}
		f, err := locker.NewFactory(l, locker.TTL(ttl))
		if err != nil {
			b.Fatal(err)
		}
		lk := f.NewLock("bench-factory." + strconv.Itoa(b.N))
		ctx := context.Background()
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := lk.TryLock(ctx); err != nil {
				b.Fatal(err)
			}
			if err := lk.Unlock(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLockUnlockPaired alternates the raw floor and the driver in one
// loop, on separate single-connection pools to the same server, so that
// both see the same machine noise, and reports each one's mean time per
// lock+unlock and their ratio (driver/raw).
func BenchmarkLockUnlockPaired(b *testing.B) {
	url := testutil.RedisURL(b)
	prefix, _ := testutil.RedisPrefix()
	const ttl = 10 * time.Second
	rawPool := onePool(b, url)
	l, err := redislocker.New(onePool(b, url), redislocker.Prefix(prefix))
	if err != nil {
		b.Fatal(err)
	}
	rawKey := prefix + ":raw-paired:" + strconv.Itoa(b.N)
	key := "bench-paired." + strconv.Itoa(b.N)
	owner := "0123456789abcdef0123456789abcdef"
	ctx := context.Background()
	var rawTime, driverTime time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		c := rawPool.Get()
		ok, err := redis.String(c.Do("SET", rawKey, owner, "NX", "PX", ttl.Milliseconds()))
		if err != nil || ok != "OK" {
			b.Fatalf("SET NX PX: %q, %v", ok, err)
		}
		c.Close()
		c = rawPool.Get()
		if n, err := redis.Int(rawUnlock.Do(c, rawKey, owner)); err != nil || n != 1 {
			b.Fatalf("compare-and-delete: %d, %v", n, err)
		}
		c.Close()
		t1 := time.Now()
		if _, err := l.Acquire(ctx, key, owner, ttl); err != nil {
			b.Fatal(err)
		}
		if err := l.Release(ctx, key, owner); err != nil {
			b.Fatal(err)
		}
		t2 := time.Now()
		rawTime += t1.Sub(t0)
		driverTime += t2.Sub(t1)
	}
	b.StopTimer()
	if b.N > 0 && rawTime > 0 {
		b.ReportMetric(float64(rawTime.Nanoseconds())/float64(b.N), "raw-ns/op")
		b.ReportMetric(float64(driverTime.Nanoseconds())/float64(b.N), "driver-ns/op")
		b.ReportMetric(float64(driverTime)/float64(rawTime), "driver/raw")
	}
}

// BenchmarkLockUnlockPairedCtx is BenchmarkLockUnlockPaired with the
// contexts callers usually pass: one with a deadline (which the driver
// applies as the connection's read timeout) and one that can only be
// cancelled (which costs redigo a goroutine per request). The raw floor
// runs without a context, as before.
func BenchmarkLockUnlockPairedCtx(b *testing.B) {
	for _, name := range []string{"deadline", "cancel"} {
		b.Run(name, func(b *testing.B) {
			url := testutil.RedisURL(b)
			prefix, _ := testutil.RedisPrefix()
			const ttl = 10 * time.Second
			rawPool := onePool(b, url)
			l, err := redislocker.New(onePool(b, url), redislocker.Prefix(prefix))
			if err != nil {
				b.Fatal(err)
			}
			rawKey := prefix + ":raw-paired-" + name + ":" + strconv.Itoa(b.N)
			key := "bench-paired-" + name + "." + strconv.Itoa(b.N)
			owner := "0123456789abcdef0123456789abcdef"
			var ctx context.Context
			var cancel context.CancelFunc
			if name == "deadline" {
				ctx, cancel = context.WithTimeout(context.Background(), time.Hour)
			} else {
				ctx, cancel = context.WithCancel(context.Background())
			}
			defer cancel()
			var rawTime, driverTime time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				c := rawPool.Get()
				ok, err := redis.String(c.Do("SET", rawKey, owner, "NX", "PX", ttl.Milliseconds()))
				if err != nil || ok != "OK" {
					b.Fatalf("SET NX PX: %q, %v", ok, err)
				}
				c.Close()
				c = rawPool.Get()
				if n, err := redis.Int(rawUnlock.Do(c, rawKey, owner)); err != nil || n != 1 {
					b.Fatalf("compare-and-delete: %d, %v", n, err)
				}
				c.Close()
				t1 := time.Now()
				if _, err := l.Acquire(ctx, key, owner, ttl); err != nil {
					b.Fatal(err)
				}
				if err := l.Release(ctx, key, owner); err != nil {
					b.Fatal(err)
				}
				t2 := time.Now()
				rawTime += t1.Sub(t0)
				driverTime += t2.Sub(t1)
			}
			b.StopTimer()
			if b.N > 0 && rawTime > 0 {
				b.ReportMetric(float64(rawTime.Nanoseconds())/float64(b.N), "raw-ns/op")
				b.ReportMetric(float64(driverTime.Nanoseconds())/float64(b.N), "driver-ns/op")
				b.ReportMetric(float64(driverTime)/float64(rawTime), "driver/raw")
			}
		})
	}
}

// BenchmarkRedlockLockUnlock measures acquire+release on 3- and 5-node
// Redlock groups (nodes asked concurrently, one connection each).
func BenchmarkRedlockLockUnlock(b *testing.B) {
	for _, n := range []int{3, 5} {
		b.Run(strconv.Itoa(n)+"-nodes", func(b *testing.B) {
			urls := testutil.RedlockURLs(b, n)
			prefix, _ := testutil.RedisPrefix()
			pools := make([]redislocker.Pool, n)
			for i, u := range urls {
				pools[i] = onePool(b, u)
			}
			l, err := redislocker.NewRedlock(pools, redislocker.Prefix(prefix))
			if err != nil {
				b.Fatal(err)
			}
			key := "bench-redlock." + strconv.Itoa(b.N)
			owner := "0123456789abcdef0123456789abcdef"
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := l.Acquire(ctx, key, owner, 10*time.Second); err != nil {
					b.Fatal(err)
				}
				if err := l.Release(ctx, key, owner); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

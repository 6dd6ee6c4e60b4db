package main

import (
	"context"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/memlocker"
	"github.com/dlock-go/dlock/locker"
)

// BenchmarkLockerLayer measures what the locker package adds to a driver's
// Acquire and Release, on the in-memory driver (no I/O): compare
// "driver" with "factory" under -benchmem.
func BenchmarkLockerLayer(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	b.Run("driver", func(b *testing.B) {
		m := memlocker.New()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := m.Acquire(ctx, "k", "owner", 10*time.Second); err != nil {
				b.Fatal(err)
			}
			if err := m.Release(ctx, "k", "owner"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("factory", func(b *testing.B) {
		f, err := locker.NewFactory(memlocker.New(), locker.TTL(10*time.Second))
		if err != nil {
			b.Fatal(err)
		}
		l := f.NewLock("k")
		b.ReportAllocs()
		for b.Loop() {
			if err := l.Lock(ctx); err != nil {
				b.Fatal(err)
			}
			if err := l.Unlock(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRedigoContext measures what redigo's DoContext costs against a
// plain Do bounded by the socket timeout: DoContext starts a goroutine per
// command to watch the context. One op is a PING round trip.
func BenchmarkRedigoContext(b *testing.B) {
	e := defaultEnv()
	pool := redisPool(e.RedisURL, 1)
	defer pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	c, err := pool.GetContext(ctx)
	if err != nil {
		b.Skipf("Redis at %s: %v", e.RedisURL, err)
	}
	defer c.Close()
	if _, err := c.Do("PING"); err != nil {
		b.Skipf("Redis at %s: %v", e.RedisURL, err)
	}
	b.Run("Do", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.Do("PING"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DoWithTimeout", func(b *testing.B) {
		for b.Loop() {
			if _, err := do(ctx, c, "PING"); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DoContext", func(b *testing.B) {
		for b.Loop() {
			if _, err := redis.DoContext(c, ctx, "PING"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

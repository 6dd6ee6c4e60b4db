package redislocker_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/testutil"
)

// rawRedlock is the floor of a 3-node Redlock lock+unlock, as the bench
// program measures it: SET NX PX on every node in parallel (a goroutine
// each), majority wins, then a Lua compare-and-delete on every node in
// parallel, each command bounded by ctx's deadline through the socket's
// read timeout.
type rawRedlock struct {
	pools []*redis.Pool
	key   string
	owner string
	ttlMS int64
}

func rawDo(ctx context.Context, c redis.Conn, cmd string, args ...interface{}) (interface{}, error) {
	if dl, ok := ctx.Deadline(); ok {
		return redis.DoWithTimeout(c, max(time.Until(dl), time.Microsecond), cmd, args...)
	}
	return c.Do(cmd, args...)
}

func (r *rawRedlock) each(fn func(p *redis.Pool) (bool, error)) (int, error) {
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		n     int
		first error
	)
	for _, p := range r.pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := fn(p)
			mu.Lock()
			if ok {
				n++
			}
			if err != nil && first == nil {
				first = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return n, first
}

func (r *rawRedlock) lock(ctx context.Context) error {
	n, err := r.each(func(p *redis.Pool) (bool, error) {
		c, err := p.GetContext(ctx)
		if err != nil {
			return false, err
		}
		defer c.Close()
		_, err = redis.String(rawDo(ctx, c, "SET", r.key, r.owner, "NX", "PX", r.ttlMS))
		if errors.Is(err, redis.ErrNil) {
			return false, nil
		}
		return err == nil, err
	})
	if n >= len(r.pools)/2+1 {
		return nil
	}
	if err == nil {
		err = errors.New("raw redlock: no majority")
	}
	return err
}

func (r *rawRedlock) unlock(ctx context.Context) error {
	_, err := r.each(func(p *redis.Pool) (bool, error) {
		c, err := p.GetContext(ctx)
		if err != nil {
			return false, err
		}
		defer c.Close()
		_, err = rawUnlock.DoContext(ctx, c, r.key, r.owner)
		return true, err
	})
	return err
}

// BenchmarkRedlockPaired alternates, in one loop, the raw 3-node floor
// (rawRedlock) and the driver's Redlock Acquire+Release, each on its own
// pools of one connection per node, every call with a context that has a
// deadline (as locker.Lock passes), so that both see the same machine
// noise. It reports each one's mean time per lock+unlock and the ratio
// driver/raw.
func BenchmarkRedlockPaired(b *testing.B) {
	urls := testutil.RedlockURLs(b, 3)
	prefix, _ := testutil.RedisPrefix()
	const ttl = 10 * time.Second
	raw := &rawRedlock{key: prefix + ":raw-redlock:" + strconv.Itoa(b.N), owner: "0123456789abcdef0123456789abcdef", ttlMS: ttl.Milliseconds()}
	pools := make([]redislocker.Pool, len(urls))
	for i, u := range urls {
		raw.pools = append(raw.pools, onePool(b, u))
		pools[i] = onePool(b, u)
	}
	l, err := redislocker.NewRedlock(pools, redislocker.Prefix(prefix))
	if err != nil {
		b.Fatal(err)
	}
	key := "bench-redlock-paired." + strconv.Itoa(b.N)
	owner := "0123456789abcdef0123456789abcdef"
	var rawTime, driverTime time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), ttl)
		if err := raw.lock(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		ctx, cancel = context.WithTimeout(context.Background(), ttl)
		if err := raw.unlock(ctx); err != nil {
			b.Fatal(err)
		}
		cancel()
		t1 := time.Now()
		ctx, cancel = context.WithTimeout(context.Background(), ttl)
		if _, err := l.Acquire(ctx, key, owner, ttl); err != nil {
			b.Fatal(err)
		}
		cancel()
		ctx, cancel = context.WithTimeout(context.Background(), ttl)
		if err := l.Release(ctx, key, owner); err != nil {
			b.Fatal(err)
		}
		cancel()
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

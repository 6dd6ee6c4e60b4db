package redislocker_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
)

// A Locker on the application's own redigo pool.
func ExampleNew() {
	pool := &redis.Pool{
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialURLContext(ctx, "redis://127.0.0.1:6379/0")
		},
		MaxIdle:     16,
		IdleTimeout: 4 * time.Minute,
	}
	defer pool.Close()

	storage, err := redislocker.New(pool, redislocker.Prefix("billing-locks"))
	if err != nil {
		log.Fatal(err)
	}
	// Close ends the connection on which waiting Lock calls hear of
	// releases (dialled with pool.DialContext); the pool stays open.
	defer storage.Close()
	f, err := locker.NewFactory(storage)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	l := f.NewLock("monthly-report")
	if err := l.Lock(ctx, locker.TTL(30*time.Second)); err != nil {
		if errors.Is(err, locker.ErrNotObtained) {
			fmt.Println("another worker is on it")
			return
		}
		log.Fatal(err) // Redis failed: "redislocker: ..."
	}
	defer l.Unlock(ctx)
	// Pass l.Token() with every write the lock protects, so that the
	// resource can refuse a stale holder's late write.
	fmt.Println("writing the report with fencing token", l.Token())
}

// A Redlock group of five independent Redis servers, opened from URLs; Close
// closes the pools Open made.
func ExampleOpenRedlock() {
	storage, err := redislocker.OpenRedlock([]string{
		"redis://redis-a:6379", "redis://redis-b:6379", "redis://redis-c:6379",
		"redis://redis-d:6379", "redis://redis-e:6379",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer storage.Close()

	ctx := context.Background()
	lease, err := storage.Acquire(ctx, "nightly-cleanup", "owner-1234", 10*time.Second)
	if err != nil {
		log.Fatal(err) // ErrNotObtained: held elsewhere or no quorum in time
	}
	// The lease is good for lease.Validity from when Acquire was called:
	// the TTL less the time the quorum took and the clock-drift allowance.
	fmt.Println(lease.Token, lease.Validity)
	_ = storage.Release(ctx, "nightly-cleanup", "owner-1234")
}

// A single server from a URL with a password, a database number and TLS.
func ExampleOpen() {
	storage, err := redislocker.Open("rediss://:s3cret@redis.internal:6380/2")
	if err != nil {
		log.Fatal(err) // a malformed URL matches locker.ErrInvalidOption
	}
	defer storage.Close()
	_, _ = locker.NewFactory(storage)
}

// A pool that is not a *redis.Pool does not tell the Locker how to dial
// its subscription connection for wake-on-release: Subscriber does. With
// neither, waiting Lock calls poll at their interval.
func ExampleSubscriber() {
	dial := func(ctx context.Context) (redis.Conn, error) {
		return redis.DialURLContext(ctx, "redis://127.0.0.1:6379/0")
	}
	var pool redislocker.Pool = &instrumentedPool{pool: &redis.Pool{DialContext: dial, MaxIdle: 16}}

	storage, err := redislocker.New(pool, redislocker.Subscriber(dial))
	if err != nil {
		log.Fatal(err)
	}
	defer storage.Close()

	f, err := locker.NewFactory(storage)
	if err != nil {
		log.Fatal(err)
	}
	// Waits up to a minute, polling every 5s, and wakes as soon as the
	// holder releases the key.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = f.Do(ctx, "rebuild-index", func(ctx context.Context) error {
		return nil // the critical section
	}, locker.Retries(12), locker.Interval(5*time.Second))
	if err != nil {
		log.Print(err)
	}
}

// instrumentedPool stands for an application's own pool type.
type instrumentedPool struct{ pool *redis.Pool }

func (p *instrumentedPool) GetContext(ctx context.Context) (redis.Conn, error) {
	return p.pool.GetContext(ctx)
}

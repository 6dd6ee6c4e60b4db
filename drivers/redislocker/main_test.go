package redislocker_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.uber.org/goleak"

	"github.com/dlock-go/dlock/testutil"
)

func TestMain(m *testing.M) {
	// Make (or inherit) the run's key prefix, and find the Redis server,
	// before any test starts child processes, so that they inherit both.
	testutil.RedisPrefix()
	if os.Getenv(testutil.RedisURLEnv) == "" && testutil.Reachable(testutil.DefaultRedisURL) {
		os.Setenv(testutil.RedisURLEnv, testutil.DefaultRedisURL)
	}
	code := m.Run()
	if code == 0 {
		// Every Locker that watched a key was closed: no subscription
		// connection or other goroutine of the driver's is left.
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goroutine leak: %v\n", err)
			code = 1
		}
	}
	// The fencing-token counters outlive their locks: the process that made
	// the run's prefix deletes them (child processes only reuse it).
	if prefix, owned := testutil.RedisPrefix(); owned {
		urls := strings.Split(os.Getenv(testutil.RedlockURLsEnv), ",")
		if u := os.Getenv(testutil.RedisURLEnv); u != "" {
			urls = append(urls, u)
		} else if testutil.Reachable(testutil.DefaultRedisURL) {
			urls = append(urls, testutil.DefaultRedisURL)
		}
		for _, u := range urls {
			if u = strings.TrimSpace(u); u != "" {
				if err := testutil.CleanRedisPrefix(u, prefix); err != nil {
					fmt.Fprintf(os.Stderr, "clean %s keys: %v\n", prefix, err)
				}
			}
		}
	}
	os.Exit(code)
}

// newPool returns a pool on url that the test closes when it ends.
func newPool(t testing.TB, url string) *redis.Pool {
	p := &redis.Pool{
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialURLContext(ctx, url, redis.DialConnectTimeout(5*time.Second))
		},
		MaxIdle:     64,
		IdleTimeout: time.Minute,
	}
	t.Cleanup(func() { p.Close() })
	return p
}

package redislocker_test

import (
	"fmt"
	"testing"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
)

// driver describes a Locker over urls (one: single node; more: Redlock) to
// the conformance suite.
func driver(name string, urls func(t testing.TB) []string) testutil.Driver {
	mk := func(t testing.TB, prefix string, us []string) locker.Locker {
		t.Helper()
		var l *redislocker.Locker
		var err error
		if len(us) == 1 {
			l, err = redislocker.New(newPool(t, us[0]), redislocker.Prefix(prefix))
		} else {
			pools := make([]redislocker.Pool, len(us))
			for i, u := range us {
				pools[i] = newPool(t, u)
			}
			l, err = redislocker.NewRedlock(pools, redislocker.Prefix(prefix))
		}
		if err != nil {
			t.Fatalf("new locker: %v", err)
		}
		// Ends the subscription connections of Watch; runs before the
		// pools' cleanups, registered earlier.
		t.Cleanup(func() { l.Close() })
		return l
	}
	return testutil.Driver{
		Name: name,
		New: func(t testing.TB) locker.Locker {
			prefix, _ := testutil.RedisPrefix()
			return mk(t, prefix, urls(t))
		},
		NewNamespace: func(t testing.TB, ns string) locker.Locker {
			prefix, _ := testutil.RedisPrefix()
			return mk(t, prefix+"."+ns, urls(t))
		},
		Broken: func(t testing.TB) locker.Locker {
			// Nothing listens on these ports: every call is refused.
			us := urls(t)
			broken := make([]string, len(us))
			for i := range us {
				broken[i] = fmt.Sprintf("redis://127.0.0.1:%d", testutil.FreePort(t))
			}
			prefix, _ := testutil.RedisPrefix()
			return mk(t, prefix, broken)
		},
	}
}

func TestConformance(t *testing.T) {
	testutil.RunConformance(t, driver("redislocker", func(t testing.TB) []string {
		return []string{testutil.RedisURL(t)}
	}))
}

func TestConformanceRedlock3(t *testing.T) {
	testutil.RunConformance(t, driver("redislocker/redlock-3", func(t testing.TB) []string {
		return testutil.RedlockURLs(t, 3)
	}))
}

func TestConformanceRedlock5(t *testing.T) {
	testutil.RunConformance(t, driver("redislocker/redlock-5", func(t testing.TB) []string {
		return testutil.RedlockURLs(t, 5)
	}))
}

package redislocker_test

import (
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/scripts/lua"
	"github.com/dlock-go/dlock/testutil"
)

// TestScriptReplies runs each script with EVAL on a private server and
// checks the explicit reply of every outcome.
func TestScriptReplies(t *testing.T) {
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
	steps := []struct {
		name string
		got  interface{}
		want interface{}
	}{
		{"inspect free", eval(lua.Inspect, 1, lk), []interface{}{}},
		{"refresh free", eval(lua.Refresh, 1, lk, "a", 1000), int64(0)},
		{"release free", eval(lua.Release, 1, lk, "a"), int64(0)},
		{"fence free", eval(lua.Fence, 2, lk, ck, "a", 7), int64(0)},
		{"acquire free", eval(lua.Acquire, 2, lk, ck, "a", 60000), int64(1)},
		{"acquire held by other", eval(lua.Acquire, 2, lk, ck, "b", 60000), []byte("a")},
		{"acquire held by self", eval(lua.Acquire, 2, lk, ck, "a", 60000), []byte("a")},
		{"refresh by other", eval(lua.Refresh, 1, lk, "b", 1000), int64(0)},
		{"refresh by prefix of owner", eval(lua.Refresh, 1, lk, "", 1000), int64(0)},
		{"refresh by owner", eval(lua.Refresh, 1, lk, "a", 90000), int64(1)},
		{"release by other", eval(lua.Release, 1, lk, "b"), int64(0)},
		{"fence by other", eval(lua.Fence, 2, lk, ck, "b", 7), int64(0)},
		{"fence by owner", eval(lua.Fence, 2, lk, ck, "a", 7), int64(1)},
		{"counter raised", eval("return tonumber(redis.call('GET', KEYS[1]))", 1, ck), int64(7)},
		{"fence keeps TTL", eval("return redis.call('PTTL', KEYS[1]) > 80000 and 1 or 0", 1, lk), int64(1)},
		{"fence lower keeps counter", eval(lua.Fence, 2, lk, ck, "a", 3), int64(1)},
		{"counter not lowered", eval("return tonumber(redis.call('GET', KEYS[1]))", 1, ck), int64(7)},
		{"release by owner", eval(lua.Release, 1, lk, "a"), int64(1)},
		{"release twice", eval(lua.Release, 1, lk, "a"), int64(0)},
		{"acquire after release", eval(lua.Acquire, 2, lk, ck, "b", 60000), int64(8)},
	}
	for _, s := range steps {
		got := s.got
		if vs, ok := got.([]interface{}); ok && len(vs) == 0 {
			got = []interface{}{}
		}
		if !reflect.DeepEqual(got, s.want) {
			t.Errorf("%s: got %#v, want %#v", s.name, s.got, s.want)
		}
	}
	vs, err := redis.Values(c.Do("EVAL", lua.Inspect, 1, lk))
	if err != nil || len(vs) != 3 {
		t.Fatalf("inspect held: %#v, %v", vs, err)
	}
	owner, _ := redis.String(vs[0], nil)
	token, _ := redis.Int64(vs[1], nil)
	pttl, _ := redis.Int64(vs[2], nil)
	if owner != "b" || token != 8 || pttl <= 0 || pttl > 60000 {
		t.Fatalf("inspect held = %q, %d, %d", owner, token, pttl)
	}
	if _, err := c.Do("SET", "p:{bad}", "no-separator"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Do("EVAL", lua.Inspect, 1, "p:{bad}"); err == nil {
		t.Fatal("inspect of a value dlock did not write: no error")
	}
	if v, err := c.Do("EVAL", lua.Acquire, 2, "p:{bad}", "p:{bad}:token", "a", 1000); err != nil || !reflect.DeepEqual(v, []byte("")) {
		t.Fatalf("acquire over a value dlock did not write = %#v, %v; want held by \"\"", v, err)
	}
}

// TestNoScriptFallback: after SCRIPT FLUSH (or a restart) the driver's
// EVALSHA fails with NOSCRIPT and it falls back to EVAL, transparently.
func TestNoScriptFallback(t *testing.T) {
	t.Parallel()
	srv := testutil.StartRedisServer(t)
	l, err := redislocker.New(newPool(t, srv.URL()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxFor(t, 10*time.Second)
	key := testutil.Key(t)
	for round := 0; round < 3; round++ {
		if _, err := do(t, srv.URL(), "SCRIPT", "FLUSH"); err != nil {
			t.Fatal(err)
		}
		lease, err := l.Acquire(ctx, key, "a", time.Minute)
		if err != nil {
			t.Fatalf("round %d: Acquire after SCRIPT FLUSH: %v", round, err)
		}
		do(t, srv.URL(), "SCRIPT", "FLUSH")
		if _, err := l.Refresh(ctx, key, "a", time.Minute); err != nil {
			t.Fatalf("Refresh after SCRIPT FLUSH: %v", err)
		}
		do(t, srv.URL(), "SCRIPT", "FLUSH")
		if info, err := l.Inspect(ctx, key); err != nil || info.Token != lease.Token {
			t.Fatalf("Inspect after SCRIPT FLUSH: %+v, %v", info, err)
		}
		do(t, srv.URL(), "SCRIPT", "FLUSH")
		if err := l.Release(ctx, key, "a"); err != nil {
			t.Fatalf("Release after SCRIPT FLUSH: %v", err)
		}
	}
	// Each call above went EVALSHA (NOSCRIPT), then EVAL.
	info, err := redis.String(do(t, srv.URL(), "INFO", "commandstats"))
	if err != nil {
		t.Fatal(err)
	}
	if evals := statCalls(info, "eval"); evals < 12 {
		t.Fatalf("EVAL ran %d times, want at least 12 fallbacks:\n%s", evals, info)
	}

	// A script error (a key of the wrong type) is a backend error.
	bad := testutil.Key(t)
	if _, err := do(t, srv.URL(), "HSET", redislocker.DefaultPrefix+":{"+bad+"}", "f", "v"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Inspect(ctx, bad); err == nil || errors.Is(err, locker.ErrNotObtained) {
		t.Fatalf("Inspect of a hash: got %v, want a WRONGTYPE backend error", err)
	}
}

// statCalls returns the calls= figure of cmdstat_<cmd> in INFO commandstats.
func statCalls(info, cmd string) int {
	for _, line := range strings.Split(info, "\n") {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_"+cmd+":calls="); ok {
			n, _ := strconv.Atoi(rest[:strings.IndexByte(rest, ',')])
			return n
		}
	}
	return 0
}

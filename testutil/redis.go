package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"
)

// Environment variables of the Redis fixtures.
const (
	// RedisURLEnv names the URL of a Redis server for single-node tests.
	RedisURLEnv = "DLOCK_TEST_REDIS_URL"
	// RedlockURLsEnv names a comma-separated list of URLs of independent
	// Redis servers for Redlock tests (scripts/redis-servers.sh starts them).
	RedlockURLsEnv = "DLOCK_TEST_REDLOCK_URLS"
	// RedisPrefixEnv carries the random key prefix of a test process to the
	// child processes it re-executes, so that they share its keys.
	RedisPrefixEnv = "DLOCK_TEST_REDIS_PREFIX"
)

// DefaultRedisURL is the Redis server tried when RedisURLEnv is unset.
const DefaultRedisURL = "redis://127.0.0.1:6379"

var redisContainer = &Container{
	Repository: "redis",
	Tag:        "7-alpine",
	Port:       "6379/tcp",
	URL:        func(hostPort string) string { return "redis://" + hostPort },
	Ready:      PingRedis,
}

// RedisURL returns the URL of the Redis server for tests: $DLOCK_TEST_REDIS_URL,
// else the local default if it answers, else a Docker container if an engine
// answers, else the test ends through [Absent].
//
// The URL found is published in $DLOCK_TEST_REDIS_URL, so that child
// processes of the test use it without probing again (a probe can time out
// on a busy machine).
func RedisURL(t testing.TB) string {
	t.Helper()
	u := ServerURL(t, "redis", RedisURLEnv, DefaultRedisURL, redisContainer)
	if os.Getenv(RedisURLEnv) == "" {
		os.Setenv(RedisURLEnv, u)
	}
	return u
}

// RedlockURLs returns the first n URLs of $DLOCK_TEST_REDLOCK_URLS, checking
// that each answers PING; fewer than n, or one silent, ends the test through
// [Absent].
func RedlockURLs(t testing.TB, n int) []string {
	t.Helper()
	var urls []string
	for _, u := range strings.Split(os.Getenv(RedlockURLsEnv), ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	if len(urls) < n {
		Absent(t, "redlock", fmt.Sprintf("%s lists %d servers, %d needed (start them with scripts/redis-servers.sh start)", RedlockURLsEnv, len(urls), n))
	}
	urls = urls[:n]
	for i, u := range urls {
		if err := PingRedis(u); err != nil {
			Absent(t, "redlock", fmt.Sprintf("server %d of %s does not answer: %v", i+1, RedlockURLsEnv, err))
		}
	}
	return urls
}

// PingRedis dials the Redis server at url and sends PING.
func PingRedis(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := redis.DialURLContext(ctx, url)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = redis.DoContext(c, ctx, "PING")
	return err
}

var redisPrefix struct {
	once  sync.Once
	value string
	owned bool
}

// RedisPrefix returns the Redis key prefix of this test run: random, made
// once per process and published in $DLOCK_TEST_REDIS_PREFIX, which child
// processes inherit and reuse. owned reports whether this process made it
// (and so should clean it up, see [CleanRedisPrefix]). Call it from TestMain
// before m.Run: a test that starts child processes before anything asked
// for the prefix would otherwise give each child a prefix of its own.
func RedisPrefix() (prefix string, owned bool) {
	redisPrefix.once.Do(func() {
		if v := os.Getenv(RedisPrefixEnv); v != "" {
			redisPrefix.value = v
			return
		}
		var b [6]byte
		_, _ = rand.Read(b[:])
		redisPrefix.value = "dlock-test-" + hex.EncodeToString(b[:])
		redisPrefix.owned = true
		os.Setenv(RedisPrefixEnv, redisPrefix.value)
	})
	return redisPrefix.value, redisPrefix.owned
}

// CleanRedisPrefix deletes every key under prefix (prefix + ":*") on the
// Redis server at url: the fencing-token counters that outlive their locks.
func CleanRedisPrefix(url, prefix string) error {
	c, err := redis.DialURL(url, redis.DialConnectTimeout(2*time.Second), redis.DialReadTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer c.Close()
	cursor := "0"
	for {
		vs, err := redis.Values(c.Do("SCAN", cursor, "MATCH", prefix+":*", "COUNT", 1000))
		if err != nil {
			return err
		}
		keys, _ := redis.Strings(vs[1], nil)
		for _, k := range keys {
			if _, err := c.Do("UNLINK", k); err != nil {
				return err
			}
		}
		cursor, _ = redis.String(vs[0], nil)
		if cursor == "0" {
			return nil
		}
	}
}

// RedisServer is a private redis-server process of one test, which the test
// may stop, restart, pause and resume (Redlock fault tests). It keeps no data
// on disk.
type RedisServer struct {
	Port int
	args []string
	dir  string

	mu  sync.Mutex
	cmd *exec.Cmd
}

// StartRedisServer starts a redis-server on a free loopback port with extra
// arguments (e.g. "--requirepass", "secret") and stops it when the test ends.
// Without the redis-server binary the test ends through [Absent].
func StartRedisServer(t testing.TB, args ...string) *RedisServer {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		Absent(t, "redis-server", "binary not found in PATH")
	}
	s := &RedisServer{Port: freePort(t), args: args, dir: t.TempDir()}
	t.Cleanup(s.Stop)
	if err := s.Start(); err != nil {
		t.Fatalf("start redis-server: %v", err)
	}
	return s
}

// URL returns the server's redis:// URL, without credentials.
func (s *RedisServer) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d", s.Port) }

// Addr returns the server's host:port.
func (s *RedisServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Start starts the server (again, after Stop) on its port and waits until
// it accepts connections.
func (s *RedisServer) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return nil
	}
	args := append([]string{
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
		"--daemonize", "no", "--loglevel", "warning",
	}, s.args...)
	cmd := exec.Command("redis-server", args...)
	if err := cmd.Start(); err != nil {
		return err
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", s.Addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on port %d not accepting connections after 10s: %w", s.Port, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Stop kills the server, losing its data, and waits for it to exit.
func (s *RedisServer) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused server must be able to die
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Pause stops the server's process (SIGSTOP): connections stay open and
// requests go unanswered until Resume.
func (s *RedisServer) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume continues a paused server (SIGCONT).
func (s *RedisServer) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *RedisServer) signal(sig os.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return fmt.Errorf("redis-server on port %d is not running", s.Port)
	}
	return s.cmd.Process.Signal(sig)
}

// freePort returns a loopback TCP port that was free a moment ago, chosen
// below the kernel's ephemeral range: a client dialling a dead port inside
// that range can, once in tens of thousands of dials, be given the same port
// as its source and connect to itself (TCP simultaneous open), reading its
// own request back as the reply.
func freePort(t testing.TB) int {
	t.Helper()
	lo := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				lo = n
			}
		}
	}
	const base = 20000
	if lo > base+1000 {
		for i := 0; i < 100; i++ {
			port := base + int(randUint32()%uint32(lo-base))
			ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
			if err == nil {
				ln.Close()
				return port
			}
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func randUint32() uint32 {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// FreePort returns a loopback TCP port that was free a moment ago, below
// the ephemeral range, e.g. for a URL on which nothing listens.
func FreePort(t testing.TB) int { return freePort(t) }

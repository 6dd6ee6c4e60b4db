package testutil

import (
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ory/dockertest/v3"
)

// RequireBackendsEnv names the environment variable that turns a missing
// backend from a skip into a failure. CI sets it to 1.
const RequireBackendsEnv = "DLOCK_TEST_REQUIRE_BACKENDS"

// Absent ends the test because a backend is not reachable: a skip on a
// developer's machine, a failure when DLOCK_TEST_REQUIRE_BACKENDS=1.
func Absent(t testing.TB, backend, why string) {
	t.Helper()
	if os.Getenv(RequireBackendsEnv) == "1" {
		t.Fatalf("%s backend required (%s=1) but not available: %s", backend, RequireBackendsEnv, why)
	}
	t.Skipf("%s backend not available: %s (set %s=1 to make this a failure)", backend, why, RequireBackendsEnv)
}

// Reachable reports whether a TCP connection to the host:port of rawURL
// opens within a short timeout.
func Reachable(rawURL string) bool {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return false
	}
	host := u.Host
	if !strings.Contains(host, ":") {
		return false
	}
	c, err := net.DialTimeout("tcp", host, 500*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// ServerURL resolves the URL of a test server: the environment variable env
// if set, else def if a server answers there, else a container started
// through a Docker engine if one answers (pinged once, never waited for),
// else [Absent]. container may be nil when no image fits.
func ServerURL(t testing.TB, backend, env, def string, container *Container) string {
	t.Helper()
	if v := os.Getenv(env); v != "" {
		return v
	}
	if def != "" && Reachable(def) {
		return def
	}
	if container != nil {
		u, err := container.start()
		if err == nil {
			return u
		}
		Absent(t, backend, fmt.Sprintf("%s unset, nothing at %s, and no container: %v", env, def, err))
	}
	Absent(t, backend, fmt.Sprintf("%s unset and nothing at %s", env, def))
	return ""
}

// Container describes a Docker image that can stand in for a backend when no
// server is configured. Each Container is started at most once per process
// and left for Docker to reap (dockertest's Expire).
type Container struct {
	Repository, Tag string
	Env             []string
	Port            string                       // e.g. "5432/tcp"
	URL             func(hostPort string) string // builds the URL from host:port
	Ready           func(url string) error       // probed until it succeeds

	once sync.Once
	url  string
	err  error
}

func (c *Container) start() (string, error) {
	c.once.Do(func() { c.url, c.err = c.run() })
	return c.url, c.err
}

func (c *Container) run() (string, error) {
	pool, err := dockertest.NewPool("")
	if err != nil {
		return "", err
	}
	// Ping once: without an engine this fails at once, and we must not
	// spend pool.Retry's whole wait finding that out.
	if err := pool.Client.Ping(); err != nil {
		return "", fmt.Errorf("no Docker engine: %w", err)
	}
	res, err := pool.Run(c.Repository, c.Tag, c.Env)
	if err != nil {
		return "", err
	}
	_ = res.Expire(600)
	u := c.URL(res.GetHostPort(c.Port))
	pool.MaxWait = 60 * time.Second
	if err := pool.Retry(func() error { return c.Ready(u) }); err != nil {
		_ = pool.Purge(res)
		return "", err
	}
	return u, nil
}

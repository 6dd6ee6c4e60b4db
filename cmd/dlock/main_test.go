package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	neturl "net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dlock-go/dlock/testutil"
)

// dlockBin is the dlock binary built once by TestMain; every test runs it
// as a separate process.
var dlockBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "dlock-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	dlockBin = filepath.Join(dir, "dlock")
	args := []string{"build", "-o", dlockBin}
	if raceEnabled {
		args = append(args, "-race")
	}
	build := exec.Command("go", append(args, ".")...)
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building dlock:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	testutil.PostgresCleanup()
	testutil.MongoCleanup()
	cleanRedis()
	os.RemoveAll(dir)
	os.Exit(code)
}

// ---- running the binary ----

// proc is one dlock process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan struct{}
	code           int
	started        time.Time
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// baseEnv is the test process's environment without DLOCK_URL, so that
// only the tests that mean to use it do.
func baseEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, urlEnv+"=") {
			env = append(env, kv)
		}
	}
	return env
}

// start starts dlock with args. It runs in a process group of its own, as
// under cron: never in the foreground group of a terminal the tests may
// have been started from.
func start(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{done: make(chan struct{})}
	p.cmd = exec.Command(dlockBin, args...)
	p.cmd.Env = append(baseEnv(), env...)
	p.cmd.Stdout, p.cmd.Stderr = &p.stdout, &p.stderr
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p.started = time.Now()
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start dlock: %v", err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = exitStatus(p.cmd.ProcessState)
		close(p.done)
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait waits for the process to exit and returns its exit status.
func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		t.Fatalf("dlock %s did not exit within %v\nstdout: %s\nstderr: %s",
			strings.Join(p.cmd.Args[1:], " "), timeout, p.stdout.String(), p.stderr.String())
		return -1
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// dlock runs dlock to completion and returns its exit status, stdout and
// stderr.
func dlock(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	p := start(t, env, args...)
	code := p.wait(t, time.Minute)
	return code, p.stdout.String(), p.stderr.String()
}

// wantCode fails the test unless the process exited with want.
func wantCode(t *testing.T, what string, got, want int, stderr string) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: exit status %d, want %d; stderr: %s", what, got, want, stderr)
	}
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	return string(b)
}

func touch(t *testing.T, path string) {
	t.Helper()
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
}

// oneLineMsg fails the test unless stderr is a single line containing want.
func oneLineMsg(t *testing.T, stderr, want string) {
	t.Helper()
	s := strings.TrimSuffix(stderr, "\n")
	if strings.Contains(s, "\n") || !strings.Contains(s, want) {
		t.Fatalf("stderr %q: want one line containing %q", stderr, want)
	}
	if strings.Contains(s, "goroutine") || strings.Contains(s, "panic") {
		t.Fatalf("stderr looks like a crash: %q", stderr)
	}
}

// ---- backends ----

// backend is a storage the tests run dlock against.
type backend struct {
	name string
	args []string // --url flags and the namespace flag
	// deleteLock removes key's lock behind its holder's back (a takeover
	// by an operator or a storage losing the record); nil if the test
	// cannot do that directly.
	deleteLock func(t *testing.T, key string)
}

// flags returns b's storage flags followed by more.
func (b backend) flags(more ...string) []string {
	return append(append([]string(nil), b.args...), more...)
}

// forEachBackend runs fn as a parallel subtest for every backend; an absent
// backend ends its subtest through testutil.Absent.
func forEachBackend(t *testing.T, fn func(t *testing.T, b backend)) {
	t.Helper()
	for _, name := range []string{"postgres", "redis", "redlock", "mongodb"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			fn(t, getBackend(t, name))
		})
	}
}

func getBackend(t *testing.T, name string) backend {
	t.Helper()
	switch name {
	case "postgres":
		url, table := postgresTable(t)
		return backend{
			name: name,
			args: []string{"--url", url, "--table", table},
			deleteLock: func(t *testing.T, key string) {
				db, err := sql.Open("postgres", url)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				schema, tbl, _ := strings.Cut(table, ".")
				q := fmt.Sprintf(`DELETE FROM %q.%q WHERE key = $1`, schema, tbl)
				if _, err := db.ExecContext(context.Background(), q, key); err != nil {
					t.Fatalf("delete lock row: %v", err)
				}
			},
		}
	case "redis":
		url := testutil.RedisURL(t)
		noteRedis(url)
		prefix, _ := testutil.RedisPrefix()
		return backend{name: name, args: []string{"--url", url, "--prefix", prefix}}
	case "redlock":
		urls := testutil.RedlockURLs(t, 3)
		for _, u := range urls {
			noteRedis(u)
		}
		prefix, _ := testutil.RedisPrefix()
		var args []string
		for _, u := range urls {
			args = append(args, "--url", u)
		}
		return backend{name: name, args: append(args, "--prefix", prefix)}
	case "mongodb":
		url, db := testutil.MongoDatabase(t)
		u, err := neturl.Parse(url)
		if err != nil {
			t.Fatalf("mongo test URL: %v", err)
		}
		u.Path = "/" + db
		return backend{name: name, args: []string{"--url", u.String(), "--collection", "cli_locks"}}
	}
	t.Fatalf("unknown backend %s", name)
	return backend{}
}

// cliTable is the lock table the tests create with dlock migrate, in the
// test process's schema.
const cliTable = "cli_locks"

var pgMigrated struct {
	once sync.Once
	out  string
	err  error
}

// postgresTable returns the server URL and a lock table created by running
// dlock migrate, once per test process.
func postgresTable(t *testing.T) (url, table string) {
	t.Helper()
	url, schema := testutil.PostgresSchema(t)
	table = schema + "." + cliTable
	pgMigrated.once.Do(func() {
		cmd := exec.Command(dlockBin, "migrate", "--url", url, "--table", table)
		cmd.Env = baseEnv()
		out, err := cmd.CombinedOutput()
		pgMigrated.out, pgMigrated.err = string(out), err
	})
	if pgMigrated.err != nil {
		t.Fatalf("dlock migrate: %v\n%s", pgMigrated.err, pgMigrated.out)
	}
	return url, table
}

var redisURLs struct {
	mu   sync.Mutex
	urls map[string]bool
}

func noteRedis(url string) {
	redisURLs.mu.Lock()
	defer redisURLs.mu.Unlock()
	if redisURLs.urls == nil {
		redisURLs.urls = map[string]bool{}
	}
	redisURLs.urls[url] = true
}

// cleanRedis deletes the keys the tests left under their prefix (fencing
// counters outlive their locks).
func cleanRedis() {
	prefix, owned := testutil.RedisPrefix()
	if !owned {
		return
	}
	redisURLs.mu.Lock()
	defer redisURLs.mu.Unlock()
	for u := range redisURLs.urls {
		if err := testutil.CleanRedisPrefix(u, prefix); err != nil {
			fmt.Fprintf(os.Stderr, "clean redis prefix %s on %s: %v\n", prefix, u, err)
		}
	}
}

// ---- a lock holder ----

// holder is a dlock run whose command holds the lock until told to stop.
type holder struct {
	*proc
	dir   string
	token int64
}

// holdScript writes DLOCK_TOKEN to $1/token, then waits for $1/stop (at
// most five minutes), trapping SIGTERM to record it in $1/term.
const holdScript = `trap 'echo TERM >> "$1/term"; exit 0' TERM
echo "$DLOCK_TOKEN" > "$1/token.tmp" && mv "$1/token.tmp" "$1/token"
i=0
while [ ! -e "$1/stop" ] && [ $i -lt 15000 ]; do sleep 0.02; i=$((i+1)); done`

// startHolder starts dlock run on key with extra flags and waits until its
// command runs.
func startHolder(t *testing.T, b backend, key string, extra ...string) *holder {
	t.Helper()
	dir := t.TempDir()
	args := append([]string{"run"}, b.flags(append([]string{"--key", key}, extra...)...)...)
	args = append(args, "--", "sh", "-c", holdScript, "sh", dir)
	h := &holder{proc: start(t, nil, args...), dir: dir}
	t.Cleanup(func() { h.stop() })
	tokenFile := filepath.Join(dir, "token")
	waitFor(t, 30*time.Second, "the holder's command to start", func() bool {
		if h.exited() {
			t.Fatalf("holder exited with %d before its command started; stderr: %s", h.code, h.stderr.String())
		}
		return exists(tokenFile)
	})
	tok, err := strconv.ParseInt(strings.TrimSpace(readFile(t, tokenFile)), 10, 64)
	if err != nil || tok <= 0 {
		t.Fatalf("DLOCK_TOKEN = %q: want a positive integer", readFile(t, tokenFile))
	}
	h.token = tok
	return h
}

// stop tells the holder's command to finish.
func (h *holder) stop() { _ = os.WriteFile(filepath.Join(h.dir, "stop"), nil, 0o644) }

// status runs dlock status --json and decodes its output.
func status(t *testing.T, b backend, key string) statusJSON {
	t.Helper()
	code, out, errOut := dlock(t, nil, append([]string{"status"}, b.flags("--json", key)...)...)
	wantCode(t, "dlock status", code, 0, errOut)
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("dlock status --json printed %q: %v", out, err)
	}
	return s
}

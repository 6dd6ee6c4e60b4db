package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dlock-go/dlock/testutil"
)

// TestUsageErrors: bad flags, arguments and URLs end with exit status 2 and
// one clear line (plus a pointer to the help), never a stack trace, and
// never repeat a password. None of them needs a server.
func TestUsageErrors(t *testing.T) {
	t.Parallel()
	const r = "redis://127.0.0.1:1"
	tests := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"no command", nil, nil, "Usage:"},
		{"unknown command", nil, []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"flag before command", nil, []string{"--url", r, "run"}, "flags go after"},
		{"no URL", nil, []string{"run", "--key", "k", "--", "true"}, "no storage URL"},
		{"unknown scheme", nil, []string{"run", "--url", "http://x", "--key", "k", "--", "true"}, `unknown URL scheme "http"`},
		{"no scheme", nil, []string{"status", "--url", "localhost:6379", "k"}, "without a scheme"},
		{"unknown scheme from DLOCK_URL", []string{"DLOCK_URL=ftp://x"}, []string{"status", "k"}, `unknown URL scheme "ftp"`},
		{"mixed schemes", nil, []string{"run", "--url", r, "--url", "postgres://h/db", "--key", "k", "--", "true"}, "mixed storage URLs"},
		{"several postgres URLs", nil, []string{"status", "--url", "postgres://a/db", "--url", "postgresql://b/db", "k"}, "only Redis takes several URLs"},
		{"several mongo URLs", nil, []string{"status", "--url", "mongodb://a/db", "--url", "mongodb://b/db", "k"}, "only Redis takes several URLs"},
		{"undefined flag", nil, []string{"run", "--url", r, "--key", "k", "--bogus", "--", "true"}, "flag provided but not defined: -bogus"},
		{"bad duration", nil, []string{"run", "--url", r, "--key", "k", "--ttl", "soon", "--", "true"}, `invalid value "soon" for flag -ttl`},
		{"zero ttl", nil, []string{"run", "--url", r, "--key", "k", "--ttl", "0s", "--", "true"}, "--ttl"},
		{"negative wait", nil, []string{"run", "--url", r, "--key", "k", "--wait", "-1s", "--", "true"}, "--wait -1s is negative"},
		{"negative grace", nil, []string{"run", "--url", r, "--key", "k", "--grace", "-1s", "--", "true"}, "--grace -1s is negative"},
		{"no key", nil, []string{"run", "--url", r, "--", "true"}, "--key is required"},
		{"key too long", nil, []string{"run", "--url", r, "--key", strings.Repeat("k", 513), "--", "true"}, "invalid key"},
		{"no command to run", nil, []string{"run", "--url", r, "--key", "k"}, "no command to run"},
		{"table for redis", nil, []string{"run", "--url", r, "--table", "t", "--key", "k", "--", "true"}, "--table applies to PostgreSQL URLs only"},
		{"prefix for postgres", nil, []string{"status", "--url", "postgres://h/db", "--prefix", "p", "k"}, "--prefix applies to Redis URLs only"},
		{"collection for redis", nil, []string{"status", "--url", r, "--collection", "c", "k"}, "--collection applies to MongoDB URLs only"},
		{"bad prefix", nil, []string{"status", "--url", r, "--prefix", "a b", "k"}, "prefix"},
		{"bad table", nil, []string{"status", "--url", "postgres://h/db", "--table", `a"b`, "k"}, "invalid option"},
		{"password not repeated", nil, []string{"status", "--url", "redis://:hunter2@127.0.0.1:1/notanumber", "k"}, "is not a number"},
		{"status without key", nil, []string{"status", "--url", r}, "no KEY given"},
		{"status with two keys", nil, []string{"status", "--url", r, "a", "b"}, "one KEY expected, got 2"},
		{"release without force", nil, []string{"release", "--url", r, "k"}, "without --force"},
		{"migrate redis", nil, []string{"migrate", "--url", r}, "migrate sets up PostgreSQL; redis needs no set-up"},
		{"migrate bad table", nil, []string{"migrate", "--url", "postgres://h/db", "--table", "a.b.c"}, "--table"},
		{"migrate argument", nil, []string{"migrate", "--url", "postgres://h/db", "extra"}, `unexpected argument "extra"`},
		{"help for unknown command", nil, []string{"help", "frobnicate"}, `unknown command "frobnicate"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			code, out, errOut := dlock(t, tt.env, tt.args...)
			wantCode(t, "dlock "+strings.Join(tt.args, " "), code, exitUsage, errOut)
			if !strings.Contains(errOut, tt.want) {
				t.Errorf("stderr %q does not contain %q", errOut, tt.want)
			}
			for _, bad := range []string{"goroutine ", "panic:", "hunter2"} {
				if strings.Contains(errOut+out, bad) {
					t.Errorf("output contains %q: %s%s", bad, out, errOut)
				}
			}
			if len(tt.args) > 0 && !strings.HasPrefix(errOut, "dlock") {
				t.Errorf("stderr %q does not start with dlock", errOut)
			}
		})
	}
}

// TestHelp: every command has --help with examples, on stdout, exit 0.
func TestHelp(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{
		{"--help"}, {"help"}, {"help", "run"},
		{"run", "--help"}, {"migrate", "-h"}, {"status", "--help"}, {"release", "--help"},
	} {
		code, out, errOut := dlock(t, nil, args...)
		wantCode(t, "dlock "+strings.Join(args, " "), code, 0, errOut)
		if !strings.Contains(out, "Usage") {
			t.Errorf("dlock %s: no usage on stdout: %q", strings.Join(args, " "), out)
		}
		if len(args) > 1 && !strings.Contains(out, "Examples:") {
			t.Errorf("dlock %s: help without examples: %q", strings.Join(args, " "), out)
		}
	}
	code, out, _ := dlock(t, nil, "--version")
	if code != 0 || !strings.HasPrefix(out, "dlock ") {
		t.Errorf("dlock --version: exit %d, %q", code, out)
	}
}

// TestRunExclusion: processes started together on one key never run their
// commands at the same time; without --wait each either ran or exited 75
// with one line on stderr; with --wait they all run, one after the other,
// with increasing fencing tokens.
func TestRunExclusion(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		// Each command appends "start ID TOKEN" and "end ID" around a
		// short critical section.
		const script = `echo "start $1 $DLOCK_TOKEN" >> "$2"; sleep 0.2; echo "end $1" >> "$2"`
		for _, mode := range []struct {
			name string
			n    int
			wait []string
		}{
			{"no-wait", 8, nil},
			{"wait", 4, []string{"--wait", "2m"}},
		} {
			key := testutil.Key(t)
			log := filepath.Join(t.TempDir(), "log")
			procs := make([]*proc, mode.n)
			for i := range procs {
				args := append([]string{"run"}, b.flags(append([]string{"--key", key}, mode.wait...)...)...)
				args = append(args, "--", "sh", "-c", script, "sh", strconv.Itoa(i), log)
				procs[i] = start(t, nil, args...)
			}
			ran := 0
			for i, p := range procs {
				switch code := p.wait(t, 2*time.Minute); code {
				case 0:
					ran++
				case exitNotObtained:
					if mode.wait != nil {
						t.Fatalf("%s: process %d exited 75 despite --wait; stderr: %s", mode.name, i, p.stderr.String())
					}
					oneLineMsg(t, p.stderr.String(), "is held elsewhere")
				default:
					t.Fatalf("%s: process %d exited %d; stderr: %s", mode.name, i, code, p.stderr.String())
				}
			}
			if ran == 0 || (mode.wait != nil && ran != mode.n) {
				t.Fatalf("%s: %d of %d processes ran their command", mode.name, ran, mode.n)
			}
			checkSerial(t, readFile(t, log), ran)
			t.Logf("%s: %d of %d ran", mode.name, ran, mode.n)
		}
	})
}

// checkSerial checks that a log of "start ID TOKEN" / "end ID" lines shows
// n critical sections that never overlapped, with increasing tokens.
func checkSerial(t *testing.T, log string, n int) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(log), "\n")
	if len(lines) != 2*n {
		t.Fatalf("log has %d lines, want %d:\n%s", len(lines), 2*n, log)
	}
	var last int64
	for i := 0; i < len(lines); i += 2 {
		start, end := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(start) != 3 || start[0] != "start" || len(end) != 2 || end[0] != "end" || start[1] != end[1] {
			t.Fatalf("critical sections overlap at line %d:\n%s", i+1, log)
		}
		tok, err := strconv.ParseInt(start[2], 10, 64)
		if err != nil || tok <= last {
			t.Fatalf("token %q at line %d does not exceed the previous %d:\n%s", start[2], i+1, last, log)
		}
		last = tok
	}
}

// TestRunExitStatus: dlock exits with its command's status (128+N for a
// signal), 127 for a command not found (without taking the lock), and the
// command sees DLOCK_KEY and DLOCK_TOKEN.
func TestRunExitStatus(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := testutil.Key(t)
		run := func(command ...string) (int, string, string) {
			args := append([]string{"run"}, b.flags("--key", key, "--")...)
			return dlock(t, nil, append(args, command...)...)
		}
		code, out, errOut := run("sh", "-c", `echo "$DLOCK_KEY $DLOCK_TOKEN"`)
		wantCode(t, "echo", code, 0, errOut)
		fields := strings.Fields(out)
		if len(fields) != 2 || fields[0] != key {
			t.Fatalf("command printed %q, want %q and a token", out, key)
		}
		tok1, err := strconv.ParseInt(fields[1], 10, 64)
		if err != nil || tok1 <= 0 {
			t.Fatalf("DLOCK_TOKEN = %q, want a positive integer", fields[1])
		}

		code, _, errOut = run("sh", "-c", "exit 7")
		wantCode(t, "exit 7", code, 7, errOut)
		code, _, errOut = run("sh", "-c", "kill -TERM $$")
		wantCode(t, "killed by SIGTERM", code, 128+int(syscall.SIGTERM), errOut)
		code, _, errOut = run("sh", "-c", "kill -KILL $$")
		wantCode(t, "killed by SIGKILL", code, 128+int(syscall.SIGKILL), errOut)

		code, _, errOut = run("dlock-no-such-command-here")
		wantCode(t, "command not found", code, exitNotFound, errOut)
		oneLineMsg(t, errOut, "command not found")
		notExec := filepath.Join(t.TempDir(), "script")
		if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, errOut = run(notExec)
		wantCode(t, "command not executable", code, exitCannotRun, errOut)

		// The lock was released after each run, and the failed lookups
		// never took it: the next token follows closely.
		if s := status(t, b, key); s.Held {
			t.Fatalf("lock still held after the runs: %+v", s)
		}
		code, out, errOut = run("sh", "-c", `echo "$DLOCK_TOKEN"`)
		wantCode(t, "echo", code, 0, errOut)
		tok2, _ := strconv.ParseInt(strings.TrimSpace(out), 10, 64)
		if tok2 <= tok1 {
			t.Fatalf("token %d after %d: tokens must increase", tok2, tok1)
		}
	})
}

// TestRunHeldAndWait: while a lock is held, dlock run exits 75 without
// running anything (after --wait if given), and status shows the holder; a
// waiter with a long --wait runs as soon as the holder finishes.
func TestRunHeldAndWait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := testutil.Key(t)
		h := startHolder(t, b, key)

		s := status(t, b, key)
		if !s.Held || s.Token != h.token || s.Owner == "" || s.TTLms <= 0 || s.TTLms > 30000 {
			t.Fatalf("status while held: %+v, want held with token %d and a TTL up to 30s", s, h.token)
		}
		code, out, errOut := dlock(t, nil, append([]string{"status"}, b.flags(key)...)...)
		wantCode(t, "status", code, 0, errOut)
		if want := fmt.Sprintf("%s: held by %s, token %d, ", key, s.Owner, s.Token); !strings.HasPrefix(out, want) || !strings.HasSuffix(out, " left\n") {
			t.Fatalf("status printed %q, want %q…", out, want)
		}

		marker := filepath.Join(t.TempDir(), "ran")
		runArgs := func(extra ...string) []string {
			args := append([]string{"run"}, b.flags(append([]string{"--key", key}, extra...)...)...)
			return append(args, "--", "touch", marker)
		}
		code, _, errOut = dlock(t, nil, runArgs()...)
		wantCode(t, "run while held", code, exitNotObtained, errOut)
		oneLineMsg(t, errOut, fmt.Sprintf("lock %q is held elsewhere; touch not run", key))

		code, _, errOut = dlock(t, nil, runArgs("-q")...)
		wantCode(t, "run -q while held", code, exitNotObtained, errOut)
		if errOut != "" {
			t.Fatalf("run -q printed %q", errOut)
		}

		begin := time.Now()
		code, _, errOut = dlock(t, nil, runArgs("--wait", "300ms")...)
		wantCode(t, "run --wait 300ms while held", code, exitNotObtained, errOut)
		oneLineMsg(t, errOut, "still held elsewhere after waiting 300ms")
		if d := time.Since(begin); d < 300*time.Millisecond {
			t.Fatalf("run --wait 300ms gave up after %v", d)
		}
		if exists(marker) {
			t.Fatal("a command ran while the lock was held elsewhere")
		}

		waiter := start(t, nil, runArgs("--wait", "2m", "-v")...)
		waitFor(t, 30*time.Second, "the waiter to report waiting", func() bool {
			if waiter.exited() {
				t.Fatalf("waiter exited %d while the lock was held; stderr: %s", waiter.code, waiter.stderr.String())
			}
			return strings.Contains(waiter.stderr.String(), "waiting up to 2m0s")
		})
		h.stop()
		wantCode(t, "holder", h.wait(t, time.Minute), 0, h.stderr.String())
		wantCode(t, "waiter", waiter.wait(t, time.Minute), 0, waiter.stderr.String())
		if !exists(marker) {
			t.Fatal("the waiter's command did not run")
		}
		if s := status(t, b, key); s.Held {
			t.Fatalf("lock held after both runs: %+v", s)
		}
	})
}

// TestRunForwardsSignals: the signals dlock forwards reach the command
// (which here traps them and exits 40+N), and a command that does not trap
// one dies of it, making dlock exit 128+N.
func TestRunForwardsSignals(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2} {
			name := strings.TrimPrefix(signalName(sig), "SIG")
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				script := fmt.Sprintf(`trap 'echo %[1]s > "$1/got"; exit %[2]d' %[1]s
touch "$1/ready"
i=0; while [ $i -lt 15000 ]; do sleep 0.02; i=$((i+1)); done`, name, 40+int(sig))
				args := append([]string{"run"}, b.flags("--key", testutil.Key(t), "--", "sh", "-c", script, "sh", dir)...)
				p := start(t, nil, args...)
				waitFor(t, 30*time.Second, "the command to start", func() bool { return p.exited() || exists(filepath.Join(dir, "ready")) })
				if err := p.cmd.Process.Signal(sig); err != nil {
					t.Fatal(err)
				}
				wantCode(t, "dlock after "+name, p.wait(t, 30*time.Second), 40+int(sig), p.stderr.String())
				if got := strings.TrimSpace(readFile(t, filepath.Join(dir, "got"))); got != name {
					t.Fatalf("command got %q, want %s", got, name)
				}
			})
		}
		t.Run("untrapped", func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := append([]string{"run"}, b.flags("--key", testutil.Key(t), "--", "sh", "-c", `touch "$1/ready"; exec sleep 300`, "sh", dir)...)
			p := start(t, nil, args...)
			waitFor(t, 30*time.Second, "the command to start", func() bool { return p.exited() || exists(filepath.Join(dir, "ready")) })
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			wantCode(t, "dlock after SIGTERM", p.wait(t, 30*time.Second), 128+int(syscall.SIGTERM), p.stderr.String())
		})
	})
}

// TestRunSignalWhileWaiting: a signal while dlock waits for the lock ends
// the wait; nothing runs and dlock exits 128+N.
func TestRunSignalWhileWaiting(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := testutil.Key(t)
		startHolder(t, b, key)
		marker := filepath.Join(t.TempDir(), "ran")
		args := append([]string{"run"}, b.flags("--key", key, "--wait", "5m", "-v", "--", "touch", marker)...)
		p := start(t, nil, args...)
		waitFor(t, 30*time.Second, "the waiter to report waiting", func() bool {
			return p.exited() || strings.Contains(p.stderr.String(), "waiting up to 5m0s")
		})
		if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		wantCode(t, "waiter after SIGINT", p.wait(t, 30*time.Second), 128+int(syscall.SIGINT), p.stderr.String())
		if !strings.Contains(p.stderr.String(), "got SIGINT while waiting") {
			t.Fatalf("stderr %q does not say why the wait ended", p.stderr.String())
		}
		if exists(marker) {
			t.Fatal("the command ran")
		}
	})
}

// TestRunLostLock (Redis): a holder whose storage vanishes loses its lock
// within the TTL; its command gets SIGTERM and dlock exits 76. A command
// that ignores SIGTERM is killed after --grace.
func TestRunLostLock(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		script string
	}{
		{"term", holdScript},
		{"ignores-term", `trap '' TERM; touch "$1/token"; i=0; while [ $i -lt 15000 ]; do sleep 0.02; i=$((i+1)); done`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := testutil.StartRedisServer(t)
			dir := t.TempDir()
			p := start(t, nil, "run", "--url", srv.URL(), "--key", testutil.Key(t), "--ttl", "1s", "--grace", "500ms",
				"--", "sh", "-c", tc.script, "sh", dir)
			waitFor(t, 30*time.Second, "the command to start", func() bool { return p.exited() || exists(filepath.Join(dir, "token")) })
			srv.Stop()
			stopped := time.Now()
			code := p.wait(t, 30*time.Second)
			wantCode(t, "dlock after its storage vanished", code, exitLost, p.stderr.String())
			if !strings.Contains(p.stderr.String(), "lost") {
				t.Fatalf("stderr %q does not say the lock was lost", p.stderr.String())
			}
			if tc.name == "term" && !strings.Contains(readFile(t, filepath.Join(dir, "term")), "TERM") {
				t.Fatal("the command did not get SIGTERM")
			}
			if d := time.Since(stopped); d > 10*time.Second {
				t.Fatalf("dlock took %v to stop after the storage vanished (ttl 1s, grace 500ms)", d)
			}
		})
	}
}

// TestRunLostLockDeleted (PostgreSQL): a holder whose lock row is deleted
// learns of it at its next refresh; its command gets SIGTERM and dlock
// exits 76.
func TestRunLostLockDeleted(t *testing.T) {
	t.Parallel()
	b := getBackend(t, "postgres")
	key := testutil.Key(t)
	h := startHolder(t, b, key, "--ttl", "2s")
	b.deleteLock(t, key)
	wantCode(t, "dlock after its row was deleted", h.wait(t, 30*time.Second), exitLost, h.stderr.String())
	if !strings.Contains(readFile(t, filepath.Join(h.dir, "term")), "TERM") {
		t.Fatal("the command did not get SIGTERM")
	}
}

// TestRelease: release refuses without --force; with it, it removes the
// lock and says what it removed, and the holder, finding its lease gone,
// terminates its command and exits 76. Releasing a free lock removes
// nothing.
func TestRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := testutil.Key(t)
		h := startHolder(t, b, key, "--ttl", "3s")
		before := status(t, b, key)

		code, _, errOut := dlock(t, nil, append([]string{"release"}, b.flags(key)...)...)
		wantCode(t, "release without --force", code, exitUsage, errOut)
		if s := status(t, b, key); !s.Held || s.Token != h.token {
			t.Fatalf("release without --force changed the lock: %+v", s)
		}

		code, out, errOut := dlock(t, nil, append([]string{"release"}, b.flags("--force", key)...)...)
		wantCode(t, "release --force", code, 0, errOut)
		want := fmt.Sprintf("%s: released; it was held by %s, token %d, ", key, before.Owner, h.token)
		if !strings.HasPrefix(out, want) {
			t.Fatalf("release printed %q, want %q…", out, want)
		}
		if s := status(t, b, key); s.Held && s.Token == h.token {
			t.Fatalf("lock still held by the old holder after release --force: %+v", s)
		}
		wantCode(t, "holder after release --force", h.wait(t, 30*time.Second), exitLost, h.stderr.String())
		if !strings.Contains(readFile(t, filepath.Join(h.dir, "term")), "TERM") {
			t.Fatal("the holder's command did not get SIGTERM")
		}

		code, out, errOut = dlock(t, nil, append([]string{"release"}, b.flags(key, "--force")...)...)
		wantCode(t, "release --force of a free lock", code, 0, errOut)
		if out != key+": free; nothing to remove\n" {
			t.Fatalf("release of a free lock printed %q", out)
		}
		code, out, errOut = dlock(t, nil, append([]string{"status"}, b.flags(key)...)...)
		wantCode(t, "status", code, 0, errOut)
		if out != key+": free\n" {
			t.Fatalf("status printed %q, want free", out)
		}
	})
}

// TestStorageDown: a storage that does not answer is not contention: dlock
// run exits 69 with the backend's error and runs nothing; status fails
// with exit 1.
func TestStorageDown(t *testing.T) {
	t.Parallel()
	url := fmt.Sprintf("redis://127.0.0.1:%d", testutil.FreePort(t))
	marker := filepath.Join(t.TempDir(), "ran")
	code, _, errOut := dlock(t, nil, "run", "--url", url, "--key", "k", "--", "touch", marker)
	wantCode(t, "run on a dead server", code, exitUnavailable, errOut)
	oneLineMsg(t, errOut, "connection refused")
	code, _, errOut = dlock(t, nil, "run", "--url", url, "--key", "k", "--wait", "300ms", "--", "touch", marker)
	wantCode(t, "run --wait on a dead server", code, exitUnavailable, errOut)
	oneLineMsg(t, errOut, "cannot take lock")
	if exists(marker) {
		t.Fatal("the command ran")
	}
	code, _, errOut = dlock(t, nil, "status", "--url", url, "k")
	wantCode(t, "status on a dead server", code, exitFailure, errOut)
	oneLineMsg(t, errOut, "connection refused")

	// A server that accepts connections and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan net.Conn, 100)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range accepted {
			c.Close()
		}
	})
	// The short TTL bounds the clean-up release of the cut-short attempt.
	code, _, errOut = dlock(t, nil, "run", "--url", "redis://"+ln.Addr().String(), "--key", "k", "--ttl", "1s", "--wait", "300ms", "--", "touch", marker)
	wantCode(t, "run --wait on a silent server", code, exitUnavailable, errOut)
	oneLineMsg(t, errOut, "the storage did not answer within 300ms")
	if exists(marker) {
		t.Fatal("the command ran")
	}
}

// TestURLFromEnvironment: DLOCK_URL stands in for --url, and may list
// several Redis URLs (Redlock).
func TestURLFromEnvironment(t *testing.T) {
	t.Parallel()
	b := getBackend(t, "redlock")
	var urls []string
	for i := 0; i+1 < len(b.args); i += 2 {
		if b.args[i] == "--url" {
			urls = append(urls, b.args[i+1])
		}
	}
	prefix, _ := testutil.RedisPrefix()
	key := testutil.Key(t)
	env := []string{"DLOCK_URL=" + strings.Join(urls, ",")}
	code, out, errOut := dlock(t, env, "run", "--prefix", prefix, "--key", key, "--", "sh", "-c", `echo "$DLOCK_TOKEN"`)
	wantCode(t, "run with DLOCK_URL", code, 0, errOut)
	if tok, err := strconv.ParseInt(strings.TrimSpace(out), 10, 64); err != nil || tok <= 0 {
		t.Fatalf("command printed %q", out)
	}
	code, out, errOut = dlock(t, env, "status", "--prefix", prefix, key)
	wantCode(t, "status with DLOCK_URL", code, 0, errOut)
	if out != key+": free\n" {
		t.Fatalf("status printed %q", out)
	}
}

// TestMigrate: migrate creates a fresh table and says so, is idempotent,
// and --down rolls back one step at a time.
func TestMigrate(t *testing.T) {
	t.Parallel()
	url, schema := testutil.PostgresSchema(t)
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	table := schema + ".migrate_" + hex.EncodeToString(suffix[:])
	steps := []struct {
		args []string
		want []string
	}{
		{nil, []string{"applied 00001_create_dlock_locks.sql (", table + ": at version 1"}},
		{nil, []string{"nothing to apply", table + ": at version 1"}},
		{[]string{"--down"}, []string{"rolled back 00001_create_dlock_locks.sql (", table + ": at version 0"}},
		{[]string{"--down"}, []string{"nothing to roll back", table + ": at version 0"}},
		{nil, []string{"applied 00001_create_dlock_locks.sql (", table + ": at version 1"}},
	}
	for i, s := range steps {
		args := append([]string{"migrate", "--url", url, "--table", table}, s.args...)
		code, out, errOut := dlock(t, nil, args...)
		wantCode(t, fmt.Sprintf("step %d: dlock %s", i, strings.Join(args, " ")), code, 0, errOut)
		lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
		if len(lines) != len(s.want) {
			t.Fatalf("step %d: printed %q, want lines starting %q", i, out, s.want)
		}
		for j, w := range s.want {
			if !strings.HasPrefix(lines[j], w) {
				t.Fatalf("step %d: line %q, want it to start with %q", i, lines[j], w)
			}
		}
	}
	// The table works: a run on it succeeds.
	code, _, errOut := dlock(t, nil, "run", "--url", url, "--table", table, "--key", testutil.Key(t), "--", "true")
	wantCode(t, "run on the migrated table", code, 0, errOut)

	// A table that was never migrated is a backend error, not contention.
	code, _, errOut = dlock(t, nil, "run", "--url", url, "--table", schema+".never_migrated", "--key", "k", "--", "true")
	wantCode(t, "run on a missing table", code, exitUnavailable, errOut)
	oneLineMsg(t, errOut, "never_migrated")
}

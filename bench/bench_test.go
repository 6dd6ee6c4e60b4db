package main

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dlock-go/dlock/testutil"
)

// smokeEnv is the environment of the smoke tests: the fixtures' servers,
// short leases (a stuck lock frees itself quickly) and the default polling.
func smokeEnv(t *testing.T) env {
	t.Helper()
	e := defaultEnv()
	e.TTL = 5 * time.Second
	e.Conns = 8
	return e
}

// openOrAbsent opens s, or ends the test as the fixtures do for a backend
// that is not there.
func openOrAbsent(t *testing.T, s subject, e *env) *client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := s.open(ctx, e)
	if err != nil {
		testutil.Absent(t, s.Backend, err.Error())
	}
	t.Cleanup(c.close)
	return c
}

// TestWorkloadsHoldMutualExclusion runs every workload briefly on every
// subject whose server answers: each must complete operations without
// errors, and the contended one must see no overlap.
func TestWorkloadsHoldMutualExclusion(t *testing.T) {
	e := smokeEnv(t)
	const d = 150 * time.Millisecond
	run := time.Now().UnixNano()
	for _, s := range subjects() {
		t.Run(slug(s.Backend)+"/"+slug(s.Name), func(t *testing.T) {
			c := openOrAbsent(t, s, &e)
			ctx := context.Background()
			key := func(w string) string {
				return "smoke:" + slug(s.Name) + ":" + w + ":" + time.Unix(0, run).Format("150405.000000")
			}

			newMutex := func(key string) mutex { return c.newMutex(key, time.Millisecond) }
			u := runUncontended(ctx, newMutex, key(wUncontended), d)
			if u.Ops == 0 || u.Errors > 0 || len(u.Acquire) != u.Ops || len(u.Pair) != u.Ops {
				t.Errorf("uncontended: %d ops, %d acquire and %d pair samples, %d errors (first: %v)", u.Ops, len(u.Acquire), len(u.Pair), u.Errors, u.FirstErr)
			}

			p := runParallel(ctx, newMutex, key(wParallel), 4, d)
			if p.Ops == 0 || p.Errors > 0 {
				t.Errorf("parallel: %d ops, %d errors (first: %v)", p.Ops, p.Errors, p.FirstErr)
			}

			r := runContended(ctx, newMutex, key(wContended), 4, time.Millisecond, 4*d)
			if r.Overlaps != 0 {
				t.Errorf("contended: %d overlaps in %d critical sections", r.Overlaps, r.Ops)
			}
			if r.Ops == 0 || r.Errors > 0 {
				t.Errorf("contended: %d critical sections, %d errors (first: %v)", r.Ops, r.Errors, r.FirstErr)
			}
		})
	}
}

// TestOverlapIsCounted checks the occupancy counter itself, with a "lock"
// that excludes nobody.
func TestOverlapIsCounted(t *testing.T) {
	r := runContended(context.Background(), func(string) mutex { return noLock{} }, "k", 4, 2*time.Millisecond, 50*time.Millisecond)
	if r.Overlaps == 0 {
		t.Fatalf("no overlap counted in %d critical sections of a lock that excludes nobody", r.Ops)
	}
}

// TestHandoffsAreMeasured checks the hand-off bookkeeping with a process
// lock: every critical section is either a hand-off or a take-back.
func TestHandoffsAreMeasured(t *testing.T) {
	var mu sync.Mutex
	r := runContended(context.Background(), func(string) mutex { return (*procLock)(&mu) }, "k", 4, time.Millisecond, 100*time.Millisecond)
	if r.Overlaps != 0 || r.Errors != 0 {
		t.Fatalf("%d overlaps, %d errors (first: %v)", r.Overlaps, r.Errors, r.FirstErr)
	}
	if len(r.Handoff) == 0 || len(r.Handoff)+r.Same != r.Ops-1 {
		t.Fatalf("%d hand-offs and %d take-backs in %d critical sections; want them to add up to all but the first", len(r.Handoff), r.Same, r.Ops)
	}
	for _, d := range r.Handoff {
		if d <= 0 || d > time.Second {
			t.Fatalf("hand-off latency %v", d)
		}
	}
}

// procLock is a mutex of this process.
type procLock sync.Mutex

func (l *procLock) Lock(context.Context) error   { (*sync.Mutex)(l).Lock(); return nil }
func (l *procLock) Unlock(context.Context) error { (*sync.Mutex)(l).Unlock(); return nil }

type noLock struct{}

func (noLock) Lock(context.Context) error   { return nil }
func (noLock) Unlock(context.Context) error { return nil }

// TestReportFromOneRun runs the program's whole path (open, warm up, rounds,
// report) on the floors whose servers answer and checks the report's shape.
func TestReportFromOneRun(t *testing.T) {
	e := smokeEnv(t)
	cfg := config{
		Rounds: 2, Duration: 50 * time.Millisecond, Warmup: 10 * time.Millisecond,
		Parallel: 4, Contenders: 3, Hold: time.Millisecond,
		Only:      regexp.MustCompile(`^(PostgreSQL|Redis)/`),
		Workloads: map[string]bool{wUncontended: true, wParallel: true, wContended: true, wRelaxed: true},
		Poll:      time.Millisecond, Relaxed: 5 * time.Millisecond, RoundTrips: 10,
		Env: e,
	}
	var log bytes.Buffer
	rep := run(context.Background(), &cfg, &log)
	if len(rep.subjects) == 0 {
		testutil.Absent(t, "PostgreSQL and Redis", strings.Join(rep.skipped, "; "))
	}
	rep.Command = "test"
	var out bytes.Buffer
	if err := rep.write(&out); err != nil {
		t.Fatal(err)
	}
	text := out.String()
	for _, want := range []string{"# dlock benchmark results", "## Summary", "## Uncontended", "## 4 goroutines, a key each", "## 3 goroutines on one key, 1ms critical section, waiters retrying every 1ms", "retrying every 5ms", "round trips", "## Settings", "nproc"} {
		if !strings.Contains(text, want) {
			t.Errorf("report lacks %q:\n%s", want, text)
		}
	}
	for _, s := range rep.subjects {
		if !strings.Contains(text, "| "+s.Name+" |") {
			t.Errorf("report has no row for %s:\n%s", s.Name, text)
		}
	}
	if n := rep.overlaps(); n != 0 {
		t.Errorf("%d overlaps", n)
	}
	if t.Failed() {
		t.Logf("progress:\n%s", log.String())
	}
}

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// report gathers the results of a run and writes them as Markdown.
type report struct {
	Command  string
	Date     time.Time
	cfg      *config
	subjects []subject
	skipped  []string
	servers  []string
	res      map[string]map[string][]*result // subject name → workload → by round
	// roundTrips is each subject's replies per uncontended lock+unlock,
	// summed over its servers.
	roundTrips map[string]map[string]trips // subject name → workload →
	load       string
	sleepCap   float64 // critical sections per second that time.Sleep(hold) alone allows
}

func newReport(cfg *config) *report {
	r := &report{Date: time.Now().UTC(), cfg: cfg, res: map[string]map[string][]*result{}, roundTrips: map[string]map[string]trips{}}
	if b, err := os.ReadFile("/proc/loadavg"); err == nil {
		r.load = strings.Join(strings.Fields(string(b))[:3], " ")
	}
	return r
}

func (r *report) add(s subject) {
	r.subjects = append(r.subjects, s)
	r.res[s.Name] = map[string][]*result{}
}

func (r *report) skip(s subject, err error) {
	r.skipped = append(r.skipped, fmt.Sprintf("%s / %s: %v", s.Backend, s.Name, err))
}

func (r *report) record(s subject, w string, round int, res *result) {
	rs := r.res[s.Name][w]
	for len(rs) <= round {
		rs = append(rs, nil)
	}
	rs[round] = res
	r.res[s.Name][w] = rs
}

func (r *report) overlaps() int64 {
	var n int64
	for _, ws := range r.res {
		for _, rs := range ws {
			for _, x := range rs {
				if x != nil {
					n += x.Overlaps
				}
			}
		}
	}
	return n
}

// versions asks each kind of server for its version, through the first
// opened subject of that backend's kind.
func (r *report) versions(ctx context.Context, e *env, subs []opened) {
	have := map[string]bool{}
	for _, s := range subs {
		have[s.Backend] = true
	}
	if have[bPostgres] {
		if db, err := openPGDB(ctx, e); err == nil {
			var v string
			if err := db.QueryRowContext(ctx, "SHOW server_version").Scan(&v); err == nil {
				var sc string
				_ = db.QueryRowContext(ctx, "SHOW synchronous_commit").Scan(&sc)
				r.servers = append(r.servers, fmt.Sprintf("PostgreSQL %s (synchronous_commit=%s) at %s", v, sc, redactURL(e.PostgresURL)))
			}
			db.Close()
		}
	}
	redisVersion := func(url string) string {
		c, err := redis.DialURLContext(ctx, url)
		if err != nil {
			return "?"
		}
		defer c.Close()
		info, err := redis.String(c.Do("INFO", "server"))
		if err != nil {
			return "?"
		}
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				return v
			}
		}
		return "?"
	}
	if have[bRedis] {
		r.servers = append(r.servers, fmt.Sprintf("Redis %s at %s", redisVersion(e.RedisURL), redactURL(e.RedisURL)))
	}
	if have[bRedlock] {
		var vs []string
		for _, u := range e.RedlockURLs[:3] {
			vs = append(vs, fmt.Sprintf("%s at %s", redisVersion(u), redactURL(u)))
		}
		r.servers = append(r.servers, "Redlock: Redis "+strings.Join(vs, ", "))
	}
	if have[bMongo] {
		if mc, err := openMongo(ctx, e); err == nil {
			var doc bson.M
			if err := mc.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&doc); err == nil {
				s := fmt.Sprintf("MongoDB wire protocol %v", doc["version"])
				if fv, ok := doc["ferretdbVersion"]; ok {
					if fv == "unknown" {
						fv = ferretdbModuleVersion()
					}
					s = fmt.Sprintf("FerretDB %v (SQLite backend; reports MongoDB %v)", fv, doc["version"])
				}
				r.servers = append(r.servers, s+" at "+redactURL(e.MongoURL))
			}
			_ = mc.Disconnect(context.WithoutCancel(ctx))
		}
	}
}

// ferretdbModuleVersion reads the FerretDB version the project's embedding
// server (tools/ferretdb) is built from; an embedded build reports "unknown".
func ferretdbModuleVersion() string {
	b, err := os.ReadFile("../tools/ferretdb/go.mod")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(line), "require "))
		if len(f) >= 2 && f[0] == "github.com/FerretDB/FerretDB" {
			return f[1]
		}
	}
	return "unknown"
}

func redactURL(u string) string {
	if i := strings.Index(u, "://"); i >= 0 {
		if j := strings.Index(u[i+3:], "@"); j >= 0 {
			return u[:i+3] + "…@" + u[i+3+j+1:]
		}
	}
	return u
}

// --- figures across rounds ---

// across computes f for every round that has a result and returns the spread.
func (r *report) across(name, w string, f func(*result) (float64, bool)) spread {
	var xs []float64
	for _, x := range r.res[name][w] {
		if x == nil {
			continue
		}
		if v, ok := f(x); ok {
			xs = append(xs, v)
		}
	}
	return spreadOf(xs)
}

// vsFloor computes f(subject's result, floor's result of the same round) for
// every round and returns the spread.
func (r *report) vsFloor(s subject, w string, f func(x, floor *result) (float64, bool)) spread {
	fl := r.floorOf(s.Backend)
	if fl == "" {
		return spread{}
	}
	var xs []float64
	mine, theirs := r.res[s.Name][w], r.res[fl][w]
	for i := range min(len(mine), len(theirs)) {
		if mine[i] == nil || theirs[i] == nil {
			continue
		}
		if v, ok := f(mine[i], theirs[i]); ok {
			xs = append(xs, v)
		}
	}
	return spreadOf(xs)
}

func (r *report) floorOf(backend string) string {
	for _, s := range r.subjects {
		if s.Backend == backend && s.Kind == kFloor {
			return s.Name
		}
	}
	return ""
}

func handoffRate(x *result) (float64, bool) {
	return float64(len(x.Handoff)) / x.Elapsed.Seconds(), x.Elapsed > 0
}

func opsRate(x *result) (float64, bool) { return x.opsPerSec(), x.Elapsed > 0 }

// timeRatio is how many times longer than the floor one operation takes
// (the inverse ratio of throughputs).
func timeRatio(x, fl *result) (float64, bool) {
	if x.Ops == 0 || fl.Ops == 0 {
		return 0, false
	}
	return fl.opsPerSec() / x.opsPerSec(), true
}

// p50Ratio is the subject's lock+unlock p50 over the floor's.
func p50Ratio(x, fl *result) (float64, bool) {
	a, b := percentile(x.Pair, .5), percentile(fl.Pair, .5)
	return float64(a) / float64(b), a > 0 && b > 0
}

func pct(p float64, get func(*result) []time.Duration) func(*result) (float64, bool) {
	return func(x *result) (float64, bool) {
		d := get(x)
		return ms(percentile(d, p)), len(d) > 0
	}
}

func acquireOf(x *result) []time.Duration { return x.Acquire }
func pairOf(x *result) []time.Duration    { return x.Pair }
func handoffOf(x *result) []time.Duration { return x.Handoff }

// --- formatting ---

// f formats a spread as "median [min–max]" with the given precision.
func f(s spread, prec int) string {
	if !s.ok() {
		return "–"
	}
	if s.N == 1 || s.Min == s.Max {
		return fmt.Sprintf("%.*f", prec, s.Med)
	}
	return fmt.Sprintf("%.*f [%.*f–%.*f]", prec, s.Med, prec, s.Min, prec, s.Max)
}

// fm formats only the median.
func fm(s spread, prec int) string {
	if !s.ok() {
		return "–"
	}
	return fmt.Sprintf("%.*f", prec, s.Med)
}

func (r *report) write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	cfg := r.cfg

	p("# dlock benchmark results\n\n")
	p("Written by the program in `bench/` from one run; do not edit by hand.\n\n")
	p("- Command: `%s`\n", r.Command)
	p("- Date: %s\n", r.Date.Format("2006-01-02 15:04 MST"))
	p("- Machine: %s, nproc %d, GOMAXPROCS %d, %s/%s, %s", cpuModel(), runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.GOOS, runtime.GOARCH, runtime.Version())
	if r.load != "" {
		p(", load average at start %s", r.load)
	}
	if cfg.Spinners > 0 {
		p("; %d spinner process(es) at nice 19 kept the CPUs from idling during the run (an idle vCPU can take longer to wake than a loopback round trip)", cfg.Spinners)
	}
	p("\n")
	if rev := dlockRevision(); rev != "" {
		p("- dlock: %s\n", rev)
	}
	p("- Libraries: %s\n", libraryVersions())
	for _, s := range r.servers {
		p("- Server: %s\n", s)
	}
	p("- Method: %d round(s); in each, every workload runs for %v per subject, subjects interleaved (their order rotates every round). Figures are the median over rounds, with [min–max] across rounds. Ratios are taken within each round against the floor of the same backend, then summarised the same way. The uncontended workload runs in %d turns of %v per subject within a round, the subjects taking turns in rotation, so that the machine's changes of speed fall on all of them alike. Lease %v for every library; pools of %d connections per subject.\n",
		cfg.Rounds, cfg.Duration, turns, cfg.Duration/turns, cfg.Env.TTL, cfg.Env.Conns)
	for _, s := range r.skipped {
		p("- Not measured: %s\n", s)
	}

	p("\n## Summary\n\n")
	p("Uncontended: the lock+unlock p50 as a multiple of the raw floor's in the same round (1.00 = as fast as the floor; lower is better). %d goroutines: time per lock+unlock (the inverse of throughput) as a multiple of the floor's. Then, for %d goroutines taking turns on one key with a %v critical section, critical sections per second (higher is better; `time.Sleep(%v)` caps it near %.0f here) and the hand-off p50 in milliseconds, with waiters retrying every %v and every %v; with the slower retries, *hand-offs/s* counts only the critical sections that went to another goroutine than the one that had just released (the rest were taken straight back while the waiters slept).\n\n",
		cfg.Parallel, cfg.Contenders, cfg.Hold, cfg.Hold, r.sleepCap, cfg.Poll, cfg.Relaxed)
	p("| Backend | Library | uncontended × floor | %d goroutines × floor | CS/s, poll %v | hand-off p50, poll %v | CS/s, poll %v | hand-offs/s, poll %v | hand-off p50, poll %v | overlaps |\n",
		cfg.Parallel, cfg.Poll, cfg.Poll, cfg.Relaxed, cfg.Relaxed, cfg.Relaxed)
	p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.subjects {
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Backend, s.Name,
			fm(r.vsFloor(s, wUncontended, p50Ratio), 2),
			fm(r.vsFloor(s, wParallel, timeRatio), 2),
			fm(r.across(s.Name, wContended, opsRate), 0),
			fm(r.across(s.Name, wContended, pct(.5, handoffOf)), 3),
			fm(r.across(s.Name, wRelaxed, opsRate), 0),
			fm(r.across(s.Name, wRelaxed, handoffRate), 0),
			fm(r.across(s.Name, wRelaxed, pct(.5, handoffOf)), 3),
			r.overlapCount(s.Name))
	}

	if cfg.Workloads[wUncontended] {
		p("\n## Uncontended: lock+unlock on one goroutine\n\n")
		p("Latencies in milliseconds. *acquire* is the lock call alone; *lock+unlock* the pair. *CPU* is the whole process's CPU time (user and system) per pair, in microseconds: the client's cost, which a busy machine inflates less than latency. *Allocs* are the whole process's heap allocations per pair. *Round trips* are the server replies per pair, summed over the servers, counted through a loopback proxy over %d pairs before the rounds.\n\n", cfg.RoundTrips)
		p("| Backend | Library | acquire p50 | lock+unlock p50 | × floor p50 | lock+unlock p99 | ops/s | × floor time/op | round trips | CPU µs/op | allocs/op | errors |\n")
		p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, s := range r.subjects {
			rt := r.tripsOf(s.Name, wUncontended)
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Backend, s.Name,
				f(r.across(s.Name, wUncontended, pct(.5, acquireOf)), 3),
				f(r.across(s.Name, wUncontended, pct(.5, pairOf)), 3),
				f(r.vsFloor(s, wUncontended, p50Ratio), 2),
				f(r.across(s.Name, wUncontended, pct(.99, pairOf)), 3),
				f(r.across(s.Name, wUncontended, opsRate), 0),
				f(r.vsFloor(s, wUncontended, timeRatio), 2),
				rt,
				f(r.across(s.Name, wUncontended, func(x *result) (float64, bool) { return float64(x.CPU) / 1e3, x.Ops > 0 }), 0),
				fm(r.across(s.Name, wUncontended, func(x *result) (float64, bool) { return x.Allocs, x.Ops > 0 }), 0),
				r.errorCount(s.Name, wUncontended))
		}
	}

	if cfg.Workloads[wParallel] {
		p("\n## %d goroutines, a key each\n\n", cfg.Parallel)
		p("| Backend | Library | ops/s | × floor (time per op) | errors |\n")
		p("|---|---|---:|---:|---:|\n")
		for _, s := range r.subjects {
			p("| %s | %s | %s | %s | %s |\n", s.Backend, s.Name,
				f(r.across(s.Name, wParallel, opsRate), 0),
				f(r.vsFloor(s, wParallel, timeRatio), 2),
				r.errorCount(s.Name, wParallel))
		}
	}

	for _, w := range []string{wContended, wRelaxed} {
		if !cfg.Workloads[w] {
			continue
		}
		p("\n## %d goroutines on one key, %v critical section, waiters retrying every %v\n\n", cfg.Contenders, cfg.Hold, cfg.pollOf(w))
		p("*CS/s*: critical sections completed per second (`time.Sleep(%v)` alone allows ≈ %.0f per second here). Every goroutine asks again as soon as it has released, so a library whose waiters sleep lets the releaser take the lock straight back: *hand-offs/s* counts only the critical sections that went to another goroutine. *Hand-off*: when another goroutine takes the lock next, the time from the moment the holder starts its unlock to the moment the next holder's lock call returns, in milliseconds; *÷ acquire* divides its p50 by the same library's uncontended acquire p50 of the same round. *Same holder*: share of acquisitions won back by the goroutine that had just released (not hand-offs; high means the waiters starve). *Round trips per CS*: server replies per critical section (summed over the servers, failed attempts and wake-ups included) and connections opened, counted through a loopback proxy in a separate pass before the rounds. *Overlaps*: acquisitions that found another goroutine inside the critical section (must be 0).\n\n", cfg.Hold, r.sleepCap)
		p("| Backend | Library | CS/s | hand-offs/s | hand-off p50 | hand-off p99 | ÷ acquire | same holder | round trips per CS | overlaps | errors |\n")
		p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
		for _, s := range r.subjects {
			ratio := r.pairWith(s.Name, w, wUncontended, func(c, u *result) (float64, bool) {
				a := percentile(u.Acquire, .5)
				return float64(percentile(c.Handoff, .5)) / float64(a), len(c.Handoff) > 0 && a > 0
			})
			p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Backend, s.Name,
				f(r.across(s.Name, w, opsRate), 0),
				f(r.across(s.Name, w, handoffRate), 0),
				f(r.across(s.Name, w, pct(.5, handoffOf)), 3),
				f(r.across(s.Name, w, pct(.99, handoffOf)), 3),
				f(ratio, 1),
				fm(r.across(s.Name, w, func(x *result) (float64, bool) {
					return 100 * float64(x.Same) / float64(x.Ops), x.Ops > 0
				}), 0)+"%",
				r.tripsOf(s.Name, w),
				r.overlaps1(s.Name, w),
				r.errorCount(s.Name, w))
		}
	}

	p("\n## Settings\n\n")
	p("Every library gets the same lease (%v) and, in each contended workload, the same retry interval for its waiters (%v, then %v, ±50%% where the library allows jitter); dlock's waiters are also woken on release when its driver is a `locker.Watcher`. A retry interval of %v is about the fastest that is sensible here (a tighter one mostly burns CPU on two vCPUs); %v is closer to the libraries' defaults (redsync: 50–250 ms; dlock: 1 s).\n\n", cfg.Env.TTL, cfg.Poll, cfg.Relaxed, cfg.Poll, cfg.Relaxed)
	for _, s := range r.subjects {
		p("- **%s / %s** (%s): %s\n", s.Backend, s.Name, s.Kind, s.Settings)
	}
	if errs := r.firstErrors(); len(errs) > 0 {
		p("\n## Errors\n\n")
		for _, e := range errs {
			p("- %s\n", e)
		}
	}
	return bw.Flush()
}

// pairWith computes f over the results of workloads a and b of one round.
func (r *report) pairWith(name, a, b string, fn func(x, y *result) (float64, bool)) spread {
	var xs []float64
	ra, rb := r.res[name][a], r.res[name][b]
	for i := range min(len(ra), len(rb)) {
		if ra[i] == nil || rb[i] == nil {
			continue
		}
		if v, ok := fn(ra[i], rb[i]); ok {
			xs = append(xs, v)
		}
	}
	return spreadOf(xs)
}

// tripsOf formats the round trips counted for name in workload w.
func (r *report) tripsOf(name, w string) string {
	t, ok := r.roundTrips[name][w]
	if !ok {
		return "–"
	}
	s := fmt.Sprintf("%.1f", t.PerOp)
	if t.Conns > 0 {
		s += fmt.Sprintf(" (+%d connections)", t.Conns)
	}
	return s
}

// overlapCount totals the overlaps of every contended workload of name.
func (r *report) overlapCount(name string) string {
	var n int64
	seen := false
	for _, w := range []string{wContended, wRelaxed} {
		for _, x := range r.res[name][w] {
			if x != nil {
				n += x.Overlaps
				seen = true
			}
		}
	}
	if !seen {
		return "–"
	}
	return fmt.Sprint(n)
}

func (r *report) overlaps1(name, w string) string {
	var n int64
	for _, x := range r.res[name][w] {
		if x != nil {
			n += x.Overlaps
		}
	}
	return fmt.Sprint(n)
}

func (r *report) errorCount(name, w string) string {
	var n int64
	for _, x := range r.res[name][w] {
		if x != nil {
			n += x.Errors
		}
	}
	return fmt.Sprint(n)
}

func (r *report) firstErrors() []string {
	var out []string
	for _, s := range r.subjects {
		for _, w := range workloads {
			for i, x := range r.res[s.Name][w] {
				if x != nil && x.FirstErr != nil {
					out = append(out, fmt.Sprintf("%s / %s, %s, round %d: %d errors, first: %v", s.Backend, s.Name, w, i+1, x.Errors, x.FirstErr))
					break
				}
			}
		}
	}
	return out
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// libraryVersions lists the versions of the measured modules, from the
// build information.
func libraryVersions() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	want := []string{
		"github.com/go-redsync/redsync/v4", "github.com/bsm/redislock", "cirello.io/pglock",
		"github.com/gomodule/redigo", "github.com/redis/go-redis/v9", "github.com/lib/pq",
		"go.mongodb.org/mongo-driver/v2",
	}
	var out []string
	for _, path := range want {
		for _, d := range bi.Deps {
			if d.Path == path {
				out = append(out, path+" "+d.Version)
			}
		}
	}
	return strings.Join(out, ", ")
}

// dlockRevision describes the working tree measured: its commit, and
// whether it had uncommitted changes.
func dlockRevision() string {
	out, err := exec.Command("git", "-C", "..", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return ""
	}
	rev := "commit " + strings.TrimSpace(string(out))
	if st, err := exec.Command("git", "-C", "..", "status", "--porcelain", "--untracked-files=no", "--", "locker", "drivers").Output(); err == nil && len(strings.TrimSpace(string(st))) > 0 {
		rev += " with uncommitted changes in locker/ or drivers/"
	}
	return rev + " (working tree, through the replace directive)"
}

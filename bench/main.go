// Command bench measures dlock's drivers against the Go libraries users would
// pick instead and against raw floors (the fewest commands a lock with a TTL
// and an owner check can take), on the same servers in the same run.
//
// Workloads, each run for -duration per subject per round:
//
//   - uncontended: one goroutine locks and unlocks one key (p50, p99, ops/s,
//     heap allocations per lock+unlock);
//   - parallel: -parallel goroutines, each on a key of its own (ops/s);
//   - contended: -contenders goroutines on one key, each holding it for
//     -hold (critical sections per second, hand-off latency from the start of
//     a release to the next holder's acquisition, and overlaps seen by an
//     occupancy counter, which must be zero).
//
// Subjects are interleaved (their order rotates every round) and every
// figure is the median over -rounds rounds, with the extremes beside it.
// The report goes to -out (bench/RESULTS.md by default) and a summary to
// standard error.
//
// Servers come from the test fixtures' variables: DLOCK_TEST_POSTGRES_URL,
// DLOCK_TEST_REDIS_URL (with local defaults), DLOCK_TEST_REDLOCK_URLS (the
// first three servers) and DLOCK_TEST_MONGO_URL. A server that does not
// answer is left out, and the report says so. scripts/bench.sh starts the
// extra servers and runs this program.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"runtime/pprof"
	"strings"
	"time"
)

// config is what the flags set.
type config struct {
	Rounds     int
	Duration   time.Duration
	Warmup     time.Duration
	Parallel   int
	Contenders int
	Hold       time.Duration
	Only       *regexp.Regexp
	Workloads  map[string]bool
	RoundTrips int           // lock+unlock pairs counted through a proxy; 0: none
	Poll       time.Duration // retry interval of every waiter (±50%)
	Relaxed    time.Duration // the same, in the relaxed contended workload
	Spinners   int           // nice-19 processes that keep the CPUs from idling
	Env        env
}

func defaultEnv() env {
	e := env{
		PostgresURL: getenv("DLOCK_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"),
		RedisURL:    getenv("DLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379"),
		MongoURL:    os.Getenv("DLOCK_TEST_MONGO_URL"),
		TTL:         10 * time.Second,
		Conns:       32,
	}
	for _, u := range strings.Split(os.Getenv("DLOCK_TEST_REDLOCK_URLS"), ",") {
		if u = strings.TrimSpace(u); u != "" {
			e.RedlockURLs = append(e.RedlockURLs, u)
		}
	}
	return e
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	spinIfAsked()
	cfg := config{Env: defaultEnv()}
	var (
		quick     = flag.Bool("quick", false, "smoke run: 1 round of 300ms per workload, report to standard output unless -out is given")
		out       = flag.String("out", "", "report file (default RESULTS.md, or standard output with -quick)")
		only      = flag.String("only", "", "regexp: measure only the subjects whose backend/name matches")
		wl        = flag.String("workloads", strings.Join(workloads, ","), "comma-separated workloads to run")
		cpuprof   = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
		memprof   = flag.String("memprofile", "", "record every allocation and write the allocation profile of the whole run to this file (slows the run)")
		commandAs = flag.String("command", "", "the command line to state in the report (default: this program's arguments)")
	)
	flag.IntVar(&cfg.Rounds, "rounds", 5, "rounds; subjects are interleaved within each")
	flag.DurationVar(&cfg.Duration, "duration", time.Second, "measurement time per subject, workload and round")
	flag.DurationVar(&cfg.Warmup, "warmup", 300*time.Millisecond, "uncontended warm-up per subject before the first round")
	flag.IntVar(&cfg.Parallel, "parallel", 16, "goroutines of the parallel workload")
	flag.IntVar(&cfg.Contenders, "contenders", 8, "goroutines of the contended workload")
	flag.DurationVar(&cfg.Hold, "hold", time.Millisecond, "critical section of the contended workload")
	flag.IntVar(&cfg.RoundTrips, "roundtrips", 200, "lock+unlock pairs whose round trips are counted through a loopback proxy before the rounds (0: skip)")
	flag.DurationVar(&cfg.Env.TTL, "ttl", cfg.Env.TTL, "lease of every lock")
	flag.DurationVar(&cfg.Poll, "poll", time.Millisecond, "retry interval (±50%) of every waiter in the contended workload, dlock's included")
	flag.DurationVar(&cfg.Relaxed, "relaxed-poll", 50*time.Millisecond, "retry interval (±50%) of every waiter in the contended-relaxed workload")
	flag.IntVar(&cfg.Env.Conns, "conns", cfg.Env.Conns, "connection pool size of every subject")
	flag.IntVar(&cfg.Spinners, "spinners", 0, "processes at nice 19 that keep the CPUs from idling during the run (see spin.go); 0: none")
	flag.Parse()

	set := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if *quick {
		if !set["rounds"] {
			cfg.Rounds = 1
		}
		if !set["duration"] {
			cfg.Duration = 300 * time.Millisecond
		}
		if !set["warmup"] {
			cfg.Warmup = 50 * time.Millisecond
		}
	}
	if *out == "" && !*quick {
		*out = "RESULTS.md"
	}
	if *only != "" {
		re, err := regexp.Compile(*only)
		if err != nil {
			fatalf("-only: %v", err)
		}
		cfg.Only = re
	}
	cfg.Workloads = map[string]bool{}
	for _, w := range strings.Split(*wl, ",") {
		w = strings.TrimSpace(w)
		if !contains(workloads, w) {
			fatalf("-workloads: unknown workload %q (have %s)", w, strings.Join(workloads, ", "))
		}
		cfg.Workloads[w] = true
	}
	if cfg.Spinners < 0 {
		fatalf("-spinners must not be negative")
	}
	if cfg.Rounds < 1 || cfg.Duration <= 0 || cfg.Parallel < 1 || cfg.Contenders < 2 || cfg.Hold < 0 || cfg.Poll <= 0 || cfg.Relaxed <= 0 {
		fatalf("-rounds, -duration, -parallel, -poll, -relaxed-poll must be positive and -contenders at least 2")
	}
	command := strings.TrimSpace(*commandAs)
	if command == "" {
		command = strings.TrimSpace("go run . " + strings.Join(os.Args[1:], " "))
	}

	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			fatalf("%v", err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fatalf("%v", err)
		}
		defer pprof.StopCPUProfile()
	}

	if *memprof != "" {
		runtime.MemProfileRate = 1
		defer func() {
			f, err := os.Create(*memprof)
			if err != nil {
				fatalf("%v", err)
			}
			defer f.Close()
			if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
				fatalf("%v", err)
			}
		}()
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if cfg.Spinners > 0 {
		stopSpin, err := startSpinners(cfg.Spinners)
		if err != nil {
			fatalf("%v", err)
		}
		defer stopSpin()
	}
	rep := run(ctx, &cfg, os.Stderr)
	rep.Command = command
	if ctx.Err() != nil {
		fmt.Fprintln(os.Stderr, "bench: interrupted; no report written")
		os.Exit(1)
	}

	var w io.Writer = os.Stdout
	if *out != "" {
		f, err := os.Create(*out)
		if err != nil {
			fatalf("%v", err)
		}
		defer f.Close()
		w = f
	}
	if err := rep.write(w); err != nil {
		fatalf("writing the report: %v", err)
	}
	if *out != "" {
		fmt.Fprintf(os.Stderr, "bench: report written to %s\n", *out)
	}
	if n := rep.overlaps(); n > 0 {
		fmt.Fprintf(os.Stderr, "bench: %d overlaps seen\n", n)
		os.Exit(3)
	}
}

// pollOf is the retry interval of workload w's waiters.
func (cfg *config) pollOf(w string) time.Duration {
	if w == wRelaxed {
		return cfg.Relaxed
	}
	return cfg.Poll
}

// mutexes returns c's mutex maker for workload w.
func (cfg *config) mutexes(c *client, w string) func(string) mutex {
	poll := cfg.pollOf(w)
	return func(key string) mutex { return c.newMutex(key, poll) }
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if x == y {
			return true
		}
	}
	return false
}

// opened is a subject whose client is open.
type opened struct {
	subject
	c *client
}

// run opens every selected subject, warms it up, runs the rounds and closes
// everything. Progress goes to log.
func run(ctx context.Context, cfg *config, log io.Writer) *report {
	rep := newReport(cfg)
	var subs []opened
	for _, s := range subjects() {
		if cfg.Only != nil && !cfg.Only.MatchString(s.Backend+"/"+s.Name) {
			continue
		}
		octx, cancel := context.WithTimeout(ctx, 30*time.Second)
		c, err := s.open(octx, &cfg.Env)
		cancel()
		if err != nil {
			fmt.Fprintf(log, "bench: %s / %s: not measured: %v\n", s.Backend, s.Name, err)
			rep.skip(s, err)
			continue
		}
		subs = append(subs, opened{s, c})
		rep.add(s)
	}
	defer func() {
		for _, s := range subs {
			s.c.close()
		}
	}()
	rep.versions(ctx, &cfg.Env, subs)
	rep.sleepCap = sleepRate(cfg.Hold, min(cfg.Duration, time.Second))
	if cfg.RoundTrips > 0 {
		for _, s := range subs {
			t, err := roundTrips(ctx, s.subject, cfg, cfg.RoundTrips, max(cfg.Duration/4, 100*time.Millisecond))
			if err != nil {
				fmt.Fprintf(log, "bench: round trips of %s / %s: %v\n", s.Backend, s.Name, err)
				continue
			}
			rep.roundTrips[s.Name] = t
		}
	}

	runID := fmt.Sprintf("%x", time.Now().UnixNano()&0xffffffffff)
	key := func(s opened, w string, round int) string {
		return fmt.Sprintf("bench:%s:%s:%s:%d", runID, slug(s.Name), w, round)
	}
	for _, s := range subs {
		if ctx.Err() != nil {
			return rep
		}
		r := runUncontended(ctx, cfg.mutexes(s.c, wUncontended), key(s, "warmup", 0), cfg.Warmup)
		if r.Errors > 0 {
			fmt.Fprintf(log, "bench: warm-up %s / %s: %d errors, first: %v\n", s.Backend, s.Name, r.Errors, r.FirstErr)
		}
	}
	for round := range cfg.Rounds {
		for _, w := range workloads {
			if !cfg.Workloads[w] {
				continue
			}
			if w == wUncontended {
				if !uncontendedRound(ctx, cfg, rep, subs, round, func(s opened) string { return key(s, w, round) }, log) {
					return rep
				}
				continue
			}
			for i := range subs {
				s := subs[(i+round)%len(subs)]
				if ctx.Err() != nil {
					return rep
				}
				var r result
				k := key(s, w, round)
				m := cfg.mutexes(s.c, w)
				switch w {
				case wUncontended:
					r = runUncontended(ctx, m, k, cfg.Duration)
				case wParallel:
					r = runParallel(ctx, m, k, cfg.Parallel, cfg.Duration)
				case wContended, wRelaxed:
					r = runContended(ctx, m, k, cfg.Contenders, cfg.Hold, cfg.Duration)
				}
				rep.record(s.subject, w, round, &r)
				fmt.Fprintf(log, "round %d/%d %-11s %-10s %-26s %s\n", round+1, cfg.Rounds, w, s.Backend, s.Name, r.summary(w))
			}
		}
	}
	return rep
}

// turns is how many turns each subject takes in an uncontended round.
const turns = 10

// uncontendedRound measures every subject's uncontended lock+unlock in
// turns of Duration/turns each, the subjects taking their turns in
// rotation, so that a change in the machine's speed during the round (a
// busy neighbour, the host's scheduling) falls on every subject alike
// instead of on whichever ran then. It reports false if ctx ended.
func uncontendedRound(ctx context.Context, cfg *config, rep *report, subs []opened, round int, key func(opened) string, log io.Writer) bool {
	total := make([]result, len(subs))
	for turn := range turns {
		for i := range subs {
			j := (i + round + turn) % len(subs)
			if ctx.Err() != nil {
				return false
			}
			r := runUncontended(ctx, cfg.mutexes(subs[j].c, wUncontended), key(subs[j]), cfg.Duration/turns)
			total[j].merge(&r)
		}
	}
	for i, s := range subs {
		rep.record(s.subject, wUncontended, round, &total[i])
		fmt.Fprintf(log, "round %d/%d %-11s %-10s %-26s %s\n", round+1, cfg.Rounds, wUncontended, s.Backend, s.Name, total[i].summary(wUncontended))
	}
	return true
}

func slug(name string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			return r
		case r >= 'A' && r <= 'Z':
			return r - 'A' + 'a'
		}
		return '-'
	}, name)
}

// summary is a one-line progress report.
func (r *result) summary(w string) string {
	s := fmt.Sprintf("%8.0f ops/s", r.opsPerSec())
	switch w {
	case wUncontended:
		s += fmt.Sprintf("  acquire p50 %.3fms  pair p50 %.3fms p99 %.3fms  %.0f allocs/op",
			ms(percentile(r.Acquire, .5)), ms(percentile(r.Pair, .5)), ms(percentile(r.Pair, .99)), r.Allocs)
	case wContended, wRelaxed:
		s += fmt.Sprintf("  hand-off p50 %.3fms p99 %.3fms  overlaps %d",
			ms(percentile(r.Handoff, .5)), ms(percentile(r.Handoff, .99)), r.Overlaps)
	}
	if r.Errors > 0 {
		s += fmt.Sprintf("  errors %d (first: %v)", r.Errors, r.FirstErr)
	}
	return s
}

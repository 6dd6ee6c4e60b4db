// Command dlock-torture runs dlock's fault-injecting torture test against one
// storage: several worker processes (re-executions of this binary), each with
// several goroutines, contend for a few keys while faults are injected, and
// every critical section is written to a fenced log in PostgreSQL that is
// checked at the end. It prints a summary and exits 1 if two accepted
// sections of a key overlapped, tokens did not rise, or another check failed.
//
// Usage:
//
//	dlock-torture -backend pg|redis|redlock|mongo -duration 1m -faults kill,stop,pgterm,drop
//
// See docs/torture.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/dlock-go/dlock/internal/torture"
)

func main() {
	if torture.IsChild() {
		os.Exit(torture.ChildMain())
	}
	os.Exit(run())
}

func run() int {
	var cfg torture.Config
	var faults, restartCmd string
	var asJSON bool
	flag.StringVar(&cfg.Backend, "backend", "pg", "storage under test: pg, redis, redlock or mongo")
	flag.DurationVar(&cfg.Duration, "duration", 30*time.Second, "how long the workers contend")
	flag.IntVar(&cfg.Procs, "procs", 3, "worker processes")
	flag.IntVar(&cfg.Workers, "workers", 3, "goroutines per worker process")
	flag.IntVar(&cfg.Keys, "keys", 3, "keys contended for")
	flag.DurationVar(&cfg.TTL, "ttl", time.Second, "lease length")
	flag.DurationVar(&cfg.Hold, "hold", 0, "longest ordinary critical section (default ttl/10)")
	flag.StringVar(&faults, "faults", "kill,stop,pgterm,drop,latency,partition",
		"comma-separated faults: "+strings.Join(torture.AllFaults, ", ")+`; "all" is every fault that applies except pgrestart`)
	flag.DurationVar(&cfg.FaultEvery, "fault-every", 2*time.Second, "mean pause between faults")
	flag.StringVar(&cfg.PostgresURL, "postgres", "", "PostgreSQL URL of the fenced log and of pg locks (default $DLOCK_TEST_POSTGRES_URL or the local test server)")
	flag.StringVar(&cfg.RedisURL, "redis", "", "Redis URL of the redis backend (default $DLOCK_TEST_REDIS_URL or redis://127.0.0.1:6379)")
	flag.StringVar(&cfg.MongoURL, "mongo", "", "MongoDB URL of the mongo backend (default $DLOCK_TEST_MONGO_URL)")
	flag.IntVar(&cfg.RedlockNodes, "redlock-nodes", 5, "size of the private Redlock group")
	flag.BoolVar(&cfg.RedlockPersist, "redlock-persist", false, "give the Redlock nodes an append-only file fsynced on every write")
	flag.DurationVar(&cfg.RedisRestartDelay, "redis-restart-delay", 0, "how long a killed Redlock node stays down (default ttl/4)")
	flag.BoolVar(&cfg.AllowPGRestart, "allow-pg-restart", false, "allow the pgrestart fault, which restarts the shared PostgreSQL server")
	flag.IntVar(&cfg.MaxPGRestarts, "max-pg-restarts", 3, "at most this many PostgreSQL restarts in the run")
	flag.StringVar(&restartCmd, "pg-restart-cmd", "pg_ctlcluster --skip-systemctl-redirect 15 main restart", "command of the pgrestart fault")
	flag.BoolVar(&cfg.LockOverlapOK, "lock-overlap-ok", false, "report lock overlaps seen by the fence instead of failing on them (FerretDB; Redlock without persistence)")
	flag.BoolVar(&cfg.Keep, "keep", false, "keep the run's schema, key prefix and collection for inspection")
	flag.BoolVar(&cfg.Verbose, "v", false, "print faults and worker errors as they happen")
	flag.BoolVar(&asJSON, "json", false, "print the summary as JSON after the text")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "dlock-torture: unexpected arguments %q\n", flag.Args())
		return 2
	}
	cfg.Faults = torture.ParseFaults(faults, cfg.Backend)
	cfg.PGRestartCmd = strings.Fields(restartCmd)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	s, err := torture.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "dlock-torture: %v\n", err)
		return 2
	}
	s.Print(os.Stdout)
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(s)
	}
	if s.Failed() {
		return 1
	}
	return 0
}

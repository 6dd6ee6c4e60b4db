// Package torture is dlock's fault-injecting torture run: several OS
// processes, each with several goroutines, contend for a few keys on one
// storage while faults are injected, and every critical section is written
// to a fenced log in PostgreSQL that is checked afterwards.
//
// [Run] is the coordinator; it re-executes the current binary for its worker
// processes, which must call [ChildMain] early when [IsChild] reports true
// (cmd/dlock-torture's main and this package's TestMain do).
//
// See docs/torture.md for what is checked, the faults and the results.
package torture

import (
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// Fault names, as given to Config.Faults.
const (
	FaultKill          = "kill"           // SIGKILL a holder process; a new process replaces it
	FaultStop          = "stop"           // SIGSTOP a holder process past its TTL, then SIGCONT
	FaultPGTerminate   = "pgterm"         // pg_terminate_backend on the run's client connections
	FaultPGRestart     = "pgrestart"      // restart the PostgreSQL server (needs AllowPGRestart)
	FaultRedisRestart  = "redis-restart"  // Redlock: SIGKILL one node of the private group, restart it
	FaultRedisMajority = "redis-majority" // Redlock: SIGKILL a majority of the nodes at once, restart them
	FaultLatency       = "latency"        // add latency through the fault proxy for a while
	FaultDrop          = "drop"           // reset every proxied connection, refuse new ones briefly
	FaultPartition     = "partition"      // stop forwarding through the proxy (up to 2 TTLs)
)

// AllFaults lists every fault, in the order the summary prints them.
var AllFaults = []string{FaultKill, FaultStop, FaultPGTerminate, FaultPGRestart, FaultRedisRestart,
	FaultRedisMajority, FaultLatency, FaultDrop, FaultPartition}

// Backends the run can torture.
const (
	BackendPostgres = "pg"
	BackendRedis    = "redis"
	BackendRedlock  = "redlock"
	BackendMongo    = "mongo"
)

// Config describes one torture run.
type Config struct {
	Backend  string        // pg, redis, redlock or mongo
	Duration time.Duration // how long the workers contend
	Procs    int           // worker processes (default 3)
	Workers  int           // goroutines per process (default 3)
	Keys     int           // keys contended for (default 3)
	TTL      time.Duration // lease length (default 1s)
	Hold     time.Duration // longest ordinary critical section (default TTL/10); one in twenty holds 1.5 TTL under auto-refresh

	Faults     []string      // faults to inject, see AllFaults; the first round in this order
	FaultEvery time.Duration // pause between faults (default 2s)

	// PostgresURL is the server of the fenced log, and of the locks for the
	// pg backend. Default: $DLOCK_TEST_POSTGRES_URL, else the local test URL.
	PostgresURL string
	// RedisURL is the single server of the redis backend. Default:
	// $DLOCK_TEST_REDIS_URL, else redis://127.0.0.1:6379.
	RedisURL string
	// MongoURL is the server of the mongo backend. Default: $DLOCK_TEST_MONGO_URL.
	MongoURL string

	// RedlockNodes is the size of the private Redlock group (default 5).
	RedlockNodes int
	// RedlockPersist starts the Redlock group with an append-only file
	// fsynced on every write, so that a restarted node remembers its locks.
	RedlockPersist bool
	// RedisRestartDelay is how long a killed Redlock node stays down.
	RedisRestartDelay time.Duration

	// AllowPGRestart must be set for the pgrestart fault: it restarts the
	// shared PostgreSQL server with PGRestartCmd.
	AllowPGRestart bool
	PGRestartCmd   []string // default: pg_ctlcluster --skip-systemctl-redirect 15 main restart
	MaxPGRestarts  int      // at most this many restarts in the run (default 3); others' tests share the server

	// LockOverlapOK makes lock overlaps seen by the fence (rejections of a
	// write whose writer still trusted its lease) a reported finding rather
	// than a failure: for storages documented not to guarantee exclusion
	// under the faults chosen (FerretDB takeover races, Redlock nodes that
	// restart without persistence).
	LockOverlapOK bool

	// splitNamespace breaks the lock on purpose, for the test that proves
	// the judge: each worker process locks in a key prefix of its own, so
	// processes do not exclude one another (redis and redlock backends).
	splitNamespace bool

	Keep    bool      // keep the run's schema, key prefix and collection
	Verbose bool      // print faults and worker errors as they happen
	Log     io.Writer // progress messages (default os.Stderr)
}

func (c *Config) setDefaults() {
	if c.Procs == 0 {
		c.Procs = 3
	}
	if c.Workers == 0 {
		c.Workers = 3
	}
	if c.Keys == 0 {
		c.Keys = 3
	}
	if c.TTL == 0 {
		c.TTL = time.Second
	}
	if c.Hold == 0 {
		c.Hold = c.TTL / 10
	}
	if c.FaultEvery == 0 {
		c.FaultEvery = 2 * time.Second
	}
	if c.RedlockNodes == 0 {
		c.RedlockNodes = 5
	}
	if c.RedisRestartDelay == 0 {
		c.RedisRestartDelay = c.TTL / 4
	}
	if c.PostgresURL == "" {
		c.PostgresURL = envOr("DLOCK_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test?sslmode=disable")
	}
	if c.RedisURL == "" {
		c.RedisURL = envOr("DLOCK_TEST_REDIS_URL", "redis://127.0.0.1:6379")
	}
	if c.MongoURL == "" {
		c.MongoURL = os.Getenv("DLOCK_TEST_MONGO_URL")
	}
	if c.MaxPGRestarts == 0 {
		c.MaxPGRestarts = 3
	}
	if len(c.PGRestartCmd) == 0 {
		c.PGRestartCmd = []string{"pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"}
	}
	if c.Log == nil {
		c.Log = os.Stderr
	}
}

func (c *Config) validate() error {
	switch c.Backend {
	case BackendPostgres, BackendRedis, BackendRedlock, BackendMongo:
	default:
		return fmt.Errorf("torture: unknown backend %q (want pg, redis, redlock or mongo)", c.Backend)
	}
	if c.Duration <= 0 {
		return fmt.Errorf("torture: duration %v is not positive", c.Duration)
	}
	if c.Procs < 1 || c.Workers < 1 || c.Keys < 1 {
		return fmt.Errorf("torture: procs, workers and keys must be at least 1")
	}
	if c.TTL < 50*time.Millisecond {
		return fmt.Errorf("torture: ttl %v is under 50ms", c.TTL)
	}
	if c.Hold <= 0 || c.Hold >= c.TTL {
		return fmt.Errorf("torture: hold %v must be positive and under the ttl %v", c.Hold, c.TTL)
	}
	for _, f := range c.Faults {
		switch {
		case !slices.Contains(AllFaults, f):
			return fmt.Errorf("torture: unknown fault %q (want %s)", f, strings.Join(AllFaults, ", "))
		case f == FaultPGRestart && !c.AllowPGRestart:
			return fmt.Errorf("torture: the pgrestart fault restarts the shared PostgreSQL server; allow it explicitly")
		case (f == FaultRedisRestart || f == FaultRedisMajority) && c.Backend != BackendRedlock:
			return fmt.Errorf("torture: fault %s applies to the redlock backend only", f)
		}
	}
	if c.Backend == BackendMongo && c.MongoURL == "" {
		return fmt.Errorf("torture: mongo backend needs a server URL ($DLOCK_TEST_MONGO_URL; scripts/ferretdb.sh start)")
	}
	return nil
}

// knownLimits says why the chosen storage and faults are documented not to
// guarantee mutual exclusion (exclusion) or rising fencing tokens (tokens);
// empty strings when they are expected to.
func (c *Config) knownLimits() (exclusion, tokens string) {
	restarts := slices.Contains(c.Faults, FaultRedisRestart) || slices.Contains(c.Faults, FaultRedisMajority)
	if c.Backend != BackendRedlock || c.RedlockPersist || !restarts {
		return "", ""
	}
	tokens = "Redlock nodes restart without persistence: they lose their token counters, so a quorum of restarted nodes hands out tokens from 1 again (Redlock promises no fencing tokens)"
	if c.RedisRestartDelay < c.TTL {
		exclusion = "Redlock nodes restart without persistence sooner than a TTL: a restarted node forgets the leases it granted (the Redlock documentation asks for fsync'd persistence or restarts delayed past the TTL)"
	}
	return exclusion, tokens
}

// ParseFaults splits a comma-separated list of fault names; "all" stands for
// every fault that applies to backend except pgrestart, "none" for none.
func ParseFaults(s, backend string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		if f == "none" {
			continue
		}
		if f == "all" {
			for _, a := range AllFaults {
				if a == FaultPGRestart || (a == FaultRedisRestart || a == FaultRedisMajority) && backend != BackendRedlock {
					continue
				}
				if !slices.Contains(out, a) {
					out = append(out, a)
				}
			}
			continue
		}
		if !slices.Contains(out, f) {
			out = append(out, f)
		}
	}
	return out
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

package torture

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	_ "github.com/lib/pq" // the fenced log is written through lib/pq
)

// runner is the coordinator of one run.
type runner struct {
	cfg      Config
	id       string // unique to the run: <unix seconds>_<random>
	schema   string // PostgreSQL schema of the fenced log (and pg locks)
	lockApp  string // application_name of the pg lock clients
	fenceApp string // application_name of the fence clients
	admin    *sql.DB
	fence    *fence
	be       *backend
	child    childConfig

	mu     sync.Mutex
	procs  []*proc
	faults map[string]int64
	kills  []killRecord
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.cfg.Log, "torture: "+format+"\n", args...)
}

// Run runs one torture: it prepares a fenced log and a private namespace on
// the storage, starts the worker processes, injects faults until
// cfg.Duration has passed, stops the workers, checks the fenced log and
// returns the summary. It returns an error only when the run could not be
// set up or checked; a run that found a problem returns a Summary whose
// Failed method reports true.
func Run(ctx context.Context, cfg Config) (*Summary, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	r := &runner{cfg: cfg, faults: map[string]int64{}}
	r.id = fmt.Sprintf("%d_%s", time.Now().Unix(), hex.EncodeToString(b[:]))
	r.schema = "dlock_torture_" + r.id
	r.lockApp = "dlock-torture-lock-" + r.id
	r.fenceApp = "dlock-torture-fence-" + r.id

	var err error
	if r.admin, err = openAdmin(ctx, cfg.PostgresURL, "dlock-torture-admin-"+r.id); err != nil {
		return nil, err
	}
	defer r.admin.Close()
	dropStaleSchemas(ctx, r.admin)
	if _, err := r.admin.ExecContext(ctx, `CREATE SCHEMA `+quoteIdent(r.schema)); err != nil {
		return nil, fmt.Errorf("create schema: %w", err)
	}
	if !cfg.Keep {
		defer func() {
			dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = waitPG(dctx, r.admin, 30*time.Second)
			if _, err := r.admin.ExecContext(dctx, `DROP SCHEMA `+quoteIdent(r.schema)+` CASCADE`); err != nil {
				r.logf("drop schema %s: %v", r.schema, err)
			}
		}()
	}
	keys := make([]string, cfg.Keys)
	for i := range keys {
		keys[i] = fmt.Sprintf("torture-key-%d", i)
	}
	if err := createFence(ctx, r.admin, r.schema, keys); err != nil {
		return nil, err
	}
	r.fence = newFence(r.admin, r.schema)

	if r.be, err = r.setUpBackend(ctx); err != nil {
		return nil, fmt.Errorf("set up %s: %w", cfg.Backend, err)
	}
	defer r.be.close()

	fenceURL, err := withHost(cfg.PostgresURL, "", map[string]string{"application_name": r.fenceApp})
	if err != nil {
		return nil, err
	}
	r.child = childConfig{
		Run: r.id, URLs: r.be.proxied, Options: r.be.opts, FenceURL: fenceURL, Schema: r.schema,
		Keys: keys, Workers: cfg.Workers, TTL: cfg.TTL, Hold: cfg.Hold,
		Deadline: time.Now().Add(cfg.Duration + 10*cfg.TTL + time.Minute),
		Split:    cfg.splitNamespace,
	}

	start := time.Now()
	for range cfg.Procs {
		if err := r.addProc(); err != nil {
			r.stopProcs(time.Second)
			return nil, fmt.Errorf("start worker process: %w", err)
		}
	}
	runCtx, cancel := context.WithTimeout(ctx, cfg.Duration)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.injectFaults(runCtx) }()
	<-runCtx.Done()
	cancel()
	wg.Wait() // every fault undone
	r.stopProcs(4*cfg.TTL + 20*time.Second)
	elapsed := time.Since(start)

	cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
	defer ccancel()
	if err := waitPG(cctx, r.admin, time.Minute); err != nil {
		return nil, err
	}
	s := &Summary{
		Backend: cfg.Backend, Duration: elapsed.Round(time.Millisecond), Procs: cfg.Procs,
		Workers: cfg.Workers, Keys: cfg.Keys, TTL: cfg.TTL, Faults: cfg.Faults,
		FaultsInjected: r.faults, LockOverlapOK: cfg.LockOverlapOK,
	}
	if cfg.Backend == BackendRedlock {
		s.RedlockNodes, s.RedlockPersist = cfg.RedlockNodes, cfg.RedlockPersist
	}
	s.Unsafe, s.TokensUnsafe = cfg.knownLimits()
	if r.be.unsafe != "" {
		s.Unsafe, s.TokensUnsafe = r.be.unsafe, r.be.unsafe
	}
	for _, p := range r.procs {
		p.mu.Lock()
		s.Stats.add(&p.last)
		p.mu.Unlock()
		if d := p.describeExit(); d != "" {
			s.Crashes = append(s.Crashes, d)
		}
	}
	s.ProcsStarted = len(r.procs)
	if s.Check, err = check(cctx, r.admin, r.schema); err != nil {
		return nil, fmt.Errorf("check the fenced log: %w", err)
	}
	if err := r.checkKills(cctx, s, start.Add(elapsed)); err != nil {
		return nil, fmt.Errorf("check recovery after kills: %w", err)
	}
	s.judge()
	return s, nil
}

func (r *runner) addProc() error {
	r.mu.Lock()
	idx := len(r.procs)
	r.mu.Unlock()
	p, err := r.spawn(idx)
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.procs = append(r.procs, p)
	r.mu.Unlock()
	return nil
}

// checkKills measures, for every kill, how long the keys the killed process
// held took to be taken by another process (the first section another
// process began on the key), by the database's clock.
func (r *runner) checkKills(ctx context.Context, s *Summary, end time.Time) error {
	var now time.Time
	if err := r.admin.QueryRowContext(ctx, `SELECT clock_timestamp()`).Scan(&now); err != nil {
		return err
	}
	// The run ended (end) some time before now, by the local clock.
	endDB := now.Add(-time.Since(end))
	q := quoteIdent(r.schema)
	for _, k := range r.kills {
		for _, key := range k.keys {
			var next sql.NullTime
			err := r.admin.QueryRowContext(ctx, `SELECT min(start_ts) FROM `+q+`.fence_log
WHERE key = $1 AND start_ts > $2 AND proc <> $3`, key, k.at, k.proc).Scan(&next)
			if err != nil {
				return err
			}
			if !next.Valid {
				if endDB.Sub(k.at) > 3*r.cfg.TTL+5*time.Second {
					s.KillStuck = append(s.KillStuck, fmt.Sprintf("%q held by killed proc %d at %s: no other process began a section in the %v left",
						key, k.proc, ts(k.at), endDB.Sub(k.at).Round(time.Millisecond)))
				}
				continue
			}
			d := next.Time.Sub(k.at)
			s.KillRecoveries++
			s.KillRecoveryMax = max(s.KillRecoveryMax, d)
		}
	}
	return nil
}

// staleAge is the age past which a run's schema, left behind by a run that
// was killed before its cleanup, is dropped by a later run.
const staleAge = 6 * time.Hour

// dropStaleSchemas drops the schemas of earlier runs older than staleAge,
// judged by the time in their names. Errors are ignored.
func dropStaleSchemas(ctx context.Context, db *sql.DB) {
	rows, err := db.QueryContext(ctx, `SELECT nspname FROM pg_namespace WHERE starts_with(nspname, 'dlock_torture_')`)
	if err != nil {
		return
	}
	var stale []string
	for rows.Next() {
		var name string
		if rows.Scan(&name) != nil {
			continue
		}
		rest, _ := strings.CutPrefix(name, "dlock_torture_")
		secs, _, _ := strings.Cut(rest, "_")
		if t, err := strconv.ParseInt(secs, 10, 64); err == nil && time.Since(time.Unix(t, 0)) > staleAge {
			stale = append(stale, name)
		}
	}
	rows.Close()
	for _, name := range stale {
		_, _ = db.ExecContext(ctx, `DROP SCHEMA IF EXISTS `+quoteIdent(name)+` CASCADE`)
	}
}

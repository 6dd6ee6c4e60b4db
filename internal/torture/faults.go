package torture

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"syscall"
	"time"
)

// killRecord remembers a kill, for the check that its locks were taken by
// others after their TTL.
type killRecord struct {
	at   time.Time // database clock
	proc int
	keys []string
}

// injectFaults injects the enabled faults until ctx ends, one about every
// FaultEvery: in rounds, each fault once per round, the first round in the
// order given and later ones in a random order, so that even a short run
// sees every fault. Faults run one at a time; each
// undoes itself before returning.
func (r *runner) injectFaults(ctx context.Context) {
	if len(r.cfg.Faults) == 0 {
		return
	}
	order := make([]int, len(r.cfg.Faults))
	for i := range order {
		order[i] = i // the first round in the order given
	}
	for ; ; order = rand.Perm(len(r.cfg.Faults)) {
		for _, i := range order {
			if !sleepCtx(ctx, jitter(r.cfg.FaultEvery)) {
				return
			}
			f := r.cfg.Faults[i]
			if err := r.inject(ctx, f); err != nil {
				r.noteFault(f+"-failed", err.Error())
				r.logf("fault %s: %v", f, err)
			}
		}
	}
}

func jitter(d time.Duration) time.Duration {
	return d/2 + time.Duration(rand.Int64N(int64(d)+1))
}

// sleepCtx sleeps d or until ctx ends; it reports whether it slept fully.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// hold waits d, or less if ctx ends (the fault is then undone early, so that
// the run ends with every fault undone).
func hold(ctx context.Context, d time.Duration) { sleepCtx(ctx, d) }

func (r *runner) inject(ctx context.Context, f string) error {
	ttl := r.cfg.TTL
	switch f {
	case FaultKill:
		p := r.pickHolder()
		if p == nil {
			return fmt.Errorf("no worker process to kill")
		}
		keys := p.heldKeys()
		at, err := r.fence.event(ctx, f, fmt.Sprint(keys))
		if err != nil {
			at = time.Time{} // recovery of this kill is not measured
		}
		p.mu.Lock()
		p.killed = true
		p.mu.Unlock()
		if err := p.cmd.Process.Kill(); err != nil {
			return err
		}
		<-p.exited
		r.noteFault(f, fmt.Sprintf("proc %d holding %v", p.idx, keys))
		if !at.IsZero() && len(keys) > 0 {
			r.mu.Lock()
			r.kills = append(r.kills, killRecord{at: at, proc: p.idx, keys: keys})
			r.mu.Unlock()
		}
		// A new process takes its place.
		return r.addProc()

	case FaultStop:
		p := r.pickHolder()
		if p == nil {
			return fmt.Errorf("no worker process to stop")
		}
		d := 2*ttl + ttl/2
		p.mu.Lock()
		p.stopped = true
		p.mu.Unlock()
		if err := p.signal(syscall.SIGSTOP); err != nil {
			return err
		}
		r.noteFault(f, fmt.Sprintf("proc %d holding %v for %v", p.idx, p.heldKeys(), d))
		hold(ctx, d)
		err := p.signal(syscall.SIGCONT)
		p.mu.Lock()
		p.stopped = false
		p.mu.Unlock()
		return err

	case FaultPGTerminate:
		var n int
		err := r.admin.QueryRowContext(ctx,
			`SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name IN ($1, $2)`,
			r.lockApp, r.fenceApp).Scan(&n)
		if err != nil {
			return err
		}
		r.noteFault(f, fmt.Sprintf("%d connections", n))
		return nil

	case FaultPGRestart:
		r.mu.Lock()
		done := r.faults[f]
		r.mu.Unlock()
		if done >= int64(r.cfg.MaxPGRestarts) {
			return nil
		}
		r.noteFault(f, "")
		cmd := exec.CommandContext(context.WithoutCancel(ctx), r.cfg.PGRestartCmd[0], r.cfg.PGRestartCmd[1:]...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %w: %s", r.cfg.PGRestartCmd, err, out)
		}
		return waitPG(context.WithoutCancel(ctx), r.admin, 60*time.Second)

	case FaultRedisRestart, FaultRedisMajority:
		g := r.be.group
		n := 1
		if f == FaultRedisMajority {
			n = len(g.nodes)/2 + 1
		}
		victims := rand.Perm(len(g.nodes))[:n]
		for _, i := range victims {
			g.kill(g.nodes[i])
		}
		r.noteFault(f, fmt.Sprintf("nodes %v down %v (persistence: %v)", victims, r.cfg.RedisRestartDelay, g.persist))
		hold(ctx, r.cfg.RedisRestartDelay)
		for _, i := range victims {
			if err := g.start(g.nodes[i]); err != nil {
				return err
			}
		}
		return nil

	case FaultLatency:
		base, jit := ttl/50, ttl/20
		if rand.IntN(2) == 0 {
			base, jit = ttl/10, ttl/4 // replies late enough to eat into leases
		}
		for _, p := range r.be.proxies {
			p.SetLatency(base, jit)
		}
		r.noteFault(f, fmt.Sprintf("%v+%v for %v", base, jit, 2*ttl))
		hold(ctx, 2*ttl)
		for _, p := range r.be.proxies {
			p.SetLatency(0, 0)
		}
		return nil

	case FaultDrop:
		n := 0
		for _, p := range r.be.proxies {
			p.Refuse(true)
			n += p.Reset()
		}
		r.noteFault(f, fmt.Sprintf("%d connections", n))
		hold(ctx, ttl/5)
		for _, p := range r.be.proxies {
			p.Refuse(false)
		}
		return nil

	case FaultPartition:
		d := ttl/2 + time.Duration(rand.Int64N(int64(3*ttl/2)+1))
		ps := r.be.proxies
		if len(ps) > 1 && rand.IntN(2) == 0 {
			// Redlock: cut off a minority or a majority of the nodes.
			k := 1 + rand.IntN(len(ps))
			idx := rand.Perm(len(ps))[:k]
			sel := ps[:0:0]
			for _, i := range idx {
				sel = append(sel, ps[i])
			}
			ps = sel
		}
		for _, p := range ps {
			p.Pause()
		}
		r.noteFault(f, fmt.Sprintf("%d of %d proxies for %v", len(ps), len(r.be.proxies), d.Round(time.Millisecond)))
		hold(ctx, d)
		for _, p := range ps {
			p.Resume()
		}
		return nil
	}
	return fmt.Errorf("unknown fault %q", f)
}

func (r *runner) noteFault(f, detail string) {
	r.mu.Lock()
	r.faults[f]++
	r.mu.Unlock()
	if r.cfg.Verbose {
		r.logf("fault %s %s", f, detail)
	}
}

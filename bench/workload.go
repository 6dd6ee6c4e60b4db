package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// mutex is one client's handle on one key, the shape every library is
// adapted to. Lock waits, by the library's own retry policy, until the key
// is held or ctx ends; Unlock releases it.
type mutex interface {
	Lock(ctx context.Context) error
	Unlock(ctx context.Context) error
}

// workload names, in the order they run and are reported.
const (
	wUncontended = "uncontended"
	wParallel    = "parallel"
	wContended   = "contended"         // waiters poll every -poll
	wRelaxed     = "contended-relaxed" // waiters poll every -relaxed-poll
)

var workloads = []string{wUncontended, wParallel, wContended, wRelaxed}

func isContended(w string) bool { return w == wContended || w == wRelaxed }

// result is what one workload measured for one subject in one round.
type result struct {
	Ops      int           // lock+unlock pairs (critical sections when contended)
	Elapsed  time.Duration // wall time of the measurement
	Acquire  []time.Duration
	Pair     []time.Duration // lock+unlock, uncontended only
	Handoff  []time.Duration // release started → acquisition by another goroutine, contended only
	Same     int             // contended: acquisitions by the goroutine that had just released
	Overlaps int64           // acquisitions that found the section occupied
	Errors   int64
	FirstErr error
	Allocs   float64       // heap allocations per lock+unlock, uncontended only
	CPU      time.Duration // the process's CPU time (user+system) per lock+unlock, uncontended only
}

// merge adds the uncontended measurement o to r: samples and counts add
// up, and the per-operation figures are averaged over both.
func (r *result) merge(o *result) {
	if n := r.Ops + o.Ops; n > 0 {
		r.Allocs = (r.Allocs*float64(r.Ops) + o.Allocs*float64(o.Ops)) / float64(n)
		r.CPU = (r.CPU*time.Duration(r.Ops) + o.CPU*time.Duration(o.Ops)) / time.Duration(n)
	}
	r.Ops += o.Ops
	r.Elapsed += o.Elapsed
	r.Acquire = append(r.Acquire, o.Acquire...)
	r.Pair = append(r.Pair, o.Pair...)
	r.Errors += o.Errors
	if r.FirstErr == nil {
		r.FirstErr = o.FirstErr
	}
}

func (r *result) opsPerSec() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Ops) / r.Elapsed.Seconds()
}

// errLog counts failures and keeps the first.
type errLog struct {
	mu    sync.Mutex
	n     int64
	first error
}

func (e *errLog) add(op string, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.n++
	if e.first == nil {
		e.first = fmt.Errorf("%s: %w", op, err)
	}
}

// maxErrors ends a workload early when a backend keeps failing.
const maxErrors = 100

// opTimeout bounds a single Unlock, and Lock in the workloads without
// contention.
const opTimeout = 10 * time.Second

// runUncontended locks and unlocks one key on one goroutine for d.
func runUncontended(ctx context.Context, newMutex func(string) mutex, key string, d time.Duration) result {
	m := newMutex(key)
	var r result
	var errs errLog
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	cpu0 := cpuTime()
	start := time.Now()
	end := start.Add(d)
	for now := start; now.Before(end) && ctx.Err() == nil && errs.n < maxErrors; now = time.Now() {
		lctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := m.Lock(lctx)
		t1 := time.Now()
		cancel()
		if err != nil {
			errs.add("lock", err)
			continue
		}
		uctx, cancel := context.WithTimeout(ctx, opTimeout)
		err = m.Unlock(uctx)
		t2 := time.Now()
		cancel()
		if err != nil {
			errs.add("unlock", err)
		}
		r.Acquire = append(r.Acquire, t1.Sub(now))
		r.Pair = append(r.Pair, t2.Sub(now))
		r.Ops++
	}
	r.Elapsed = time.Since(start)
	cpu := cpuTime() - cpu0
	runtime.ReadMemStats(&after)
	if r.Ops > 0 {
		r.Allocs = float64(after.Mallocs-before.Mallocs) / float64(r.Ops)
		r.CPU = cpu / time.Duration(r.Ops)
	}
	r.Errors, r.FirstErr = errs.n, errs.first
	return r
}

// runParallel runs n goroutines, each locking and unlocking a key of its
// own, for d.
func runParallel(ctx context.Context, newMutex func(string) mutex, key string, n int, d time.Duration) result {
	var (
		ops  atomic.Int64
		errs errLog
		wg   sync.WaitGroup
	)
	start := time.Now()
	end := start.Add(d)
	for g := range n {
		m := newMutex(fmt.Sprintf("%s-%d", key, g))
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(end) && ctx.Err() == nil && errs.n < maxErrors {
				lctx, cancel := context.WithTimeout(ctx, opTimeout)
				err := m.Lock(lctx)
				cancel()
				if err != nil {
					errs.add("lock", err)
					continue
				}
				uctx, cancel := context.WithTimeout(ctx, opTimeout)
				if err := m.Unlock(uctx); err != nil {
					errs.add("unlock", err)
				}
				cancel()
				ops.Add(1)
			}
		}()
	}
	wg.Wait()
	return result{Ops: int(ops.Load()), Elapsed: time.Since(start), Errors: errs.n, FirstErr: errs.first}
}

// runContended runs n goroutines that take turns on one key, each holding
// it for hold and asking again as soon as it has released. An occupancy
// counter checks mutual exclusion. A hand-off is an acquisition by another
// goroutine than the last holder; its latency runs from the moment the
// holder starts releasing to the moment the next holder's Lock returns.
// Acquisitions by the goroutine that just released are counted apart.
func runContended(ctx context.Context, newMutex func(string) mutex, key string, n int, hold, d time.Duration) result {
	var (
		occupancy   atomic.Int32
		overlaps    atomic.Int64
		lastRelease atomic.Int64 // ns since base; 0 before the first release
		lastHolder  atomic.Int32
		errs        errLog
		wg          sync.WaitGroup
		mu          sync.Mutex
		r           result
	)
	base := time.Now()
	since := func() int64 { return int64(time.Since(base)) + 1 }
	deadline := base.Add(d)
	// over reports the end of the measurement. A client may see the
	// deadline pass (a socket timeout set from it) a moment before the
	// context says so.
	wctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	over := func() bool { return wctx.Err() != nil || !time.Now().Before(deadline) }
	lastHolder.Store(-1)
	for g := range n {
		m := newMutex(key)
		wg.Add(1)
		go func() {
			defer wg.Done()
			var handoff []time.Duration
			var same, ops int
			for !over() && errs.n < maxErrors {
				err := m.Lock(wctx)
				if errors.Is(err, context.DeadlineExceeded) {
					// The measurement's end: some clients give up a
					// round trip's time before the deadline.
					break
				}
				if err != nil {
					if !over() {
						errs.add("lock", err)
					}
					continue
				}
				acquired := since()
				if occupancy.Add(1) != 1 {
					overlaps.Add(1)
				}
				switch prev := lastHolder.Swap(int32(g)); prev {
				case int32(g):
					same++ // took it back: not a hand-off
				case -1: // the first acquisition
				default:
					handoff = append(handoff, time.Duration(acquired-lastRelease.Load()))
				}
				time.Sleep(hold)
				occupancy.Add(-1)
				lastRelease.Store(since())
				uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
				if err := m.Unlock(uctx); err != nil {
					errs.add("unlock", err)
				}
				cancel()
				ops++
			}
			mu.Lock()
			r.Handoff = append(r.Handoff, handoff...)
			r.Same += same
			r.Ops += ops
			mu.Unlock()
		}()
	}
	wg.Wait()
	r.Elapsed = time.Since(base)
	r.Overlaps = overlaps.Load()
	r.Errors, r.FirstErr = errs.n, errs.first
	return r
}

// cpuTime returns the CPU time (user and system) the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sleepRate returns how many time.Sleep(hold) calls one goroutine completes
// per second, measured for d: the ceiling of the contended workloads.
func sleepRate(hold, d time.Duration) float64 {
	start := time.Now()
	n := 0
	for time.Since(start) < d {
		time.Sleep(hold)
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

// sleepCtx waits for d or until ctx ends, and reports ctx's error.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// errBusy is a floor's "held elsewhere".
var errBusy = errors.New("held elsewhere")

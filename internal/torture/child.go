package torture

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dlock-go/dlock/internal/storage"
	"github.com/dlock-go/dlock/locker"
)

// childEnv carries a worker process's configuration, JSON in base64.
const childEnv = "DLOCK_TORTURE_CHILD"

// childConfig is what a worker process needs to know.
type childConfig struct {
	Run      string
	Proc     int
	URLs     []string // through the fault proxies
	Options  storage.Options
	FenceURL string // direct
	Schema   string
	Keys     []string
	Workers  int
	TTL      time.Duration
	Hold     time.Duration
	Deadline time.Time // wall clock: stop even if the coordinator vanished
	Split    bool      // lock in a namespace of this process's own (a broken lock, for tests)
}

// IsChild reports whether this process is a torture worker process, started
// by [Run]. Such a process must call [ChildMain] and exit with its result.
func IsChild() bool { return os.Getenv(childEnv) != "" }

// ChildMain runs a worker process: it contends for the keys until its
// standard input closes (or its deadline passes), then prints its final
// statistics and returns the exit code.
func ChildMain() int {
	var cc childConfig
	raw, err := base64.StdEncoding.DecodeString(os.Getenv(childEnv))
	if err == nil {
		err = json.Unmarshal(raw, &cc)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "torture child: bad %s: %v\n", childEnv, err)
		return 2
	}
	if err := runChild(cc); err != nil {
		fmt.Fprintf(os.Stderr, "torture child %d: %v\n", cc.Proc, err)
		return 1
	}
	return 0
}

func encodeChild(cc childConfig) string {
	raw, _ := json.Marshal(cc)
	return base64.StdEncoding.EncodeToString(raw)
}

// stats are a worker process's cumulative counters, sent to the
// coordinator as JSON lines.
type stats struct {
	Acquired          int64 `json:"acquired"`
	Abandoned         int64 `json:"abandoned"` // taken with one raw Acquire and left to expire
	Contended         int64 `json:"contended"`
	AttemptErrors     int64 `json:"attempt_errors"`
	Refreshed         int64 `json:"refreshed"`
	LostEvents        int64 `json:"lost_events"`
	LostBeforeStart   int64 `json:"lost_before_start"`
	BeginRejected     int64 `json:"begin_rejected"`
	BeginViolations   int64 `json:"token_not_rising_while_trusted"`
	Accepted          int64 `json:"accepted"`
	AcceptedAfterLoss int64 `json:"accepted_after_loss"`
	Rejected          int64 `json:"rejected"`
	RejectedLost      int64 `json:"rejected_after_loss"`
	RejectedLate      int64 `json:"rejected_validity_ran_out_in_flight"`
	Violations        int64 `json:"rejected_while_trusted"`
	LostDetected      int64 `json:"lost_detected_after_rejection"`
	LostUndetected    int64 `json:"lost_undetected"`
	UnlockLost        int64 `json:"unlock_reported_lost"`
	FenceErrors       int64 `json:"fence_errors"`

	Errors  map[string]int64  `json:"errors,omitempty"`
	Samples map[string]string `json:"samples,omitempty"`
}

func (s *stats) add(o *stats) {
	s.Acquired += o.Acquired
	s.Abandoned += o.Abandoned
	s.Contended += o.Contended
	s.AttemptErrors += o.AttemptErrors
	s.Refreshed += o.Refreshed
	s.LostEvents += o.LostEvents
	s.LostBeforeStart += o.LostBeforeStart
	s.BeginRejected += o.BeginRejected
	s.BeginViolations += o.BeginViolations
	s.Accepted += o.Accepted
	s.AcceptedAfterLoss += o.AcceptedAfterLoss
	s.Rejected += o.Rejected
	s.RejectedLost += o.RejectedLost
	s.RejectedLate += o.RejectedLate
	s.Violations += o.Violations
	s.LostDetected += o.LostDetected
	s.LostUndetected += o.LostUndetected
	s.UnlockLost += o.UnlockLost
	s.FenceErrors += o.FenceErrors
	for k, v := range o.Errors {
		if s.Errors == nil {
			s.Errors = map[string]int64{}
		}
		s.Errors[k] += v
	}
	for k, v := range o.Samples {
		if s.Samples == nil {
			s.Samples = map[string]string{}
		}
		if _, ok := s.Samples[k]; !ok {
			s.Samples[k] = v
		}
	}
}

// child is one worker process.
type child struct {
	cc    childConfig
	f     *locker.Factory
	fence *fence

	outMu sync.Mutex
	out   *bufio.Writer

	mu sync.Mutex
	st stats
}

func (c *child) count(fn func(*stats)) {
	c.mu.Lock()
	fn(&c.st)
	c.mu.Unlock()
}

// fail counts an error of op by its kind and keeps the first message of
// each kind.
func (c *child) fail(op string, err error) {
	k := op + "/" + errorKind(err)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.Errors == nil {
		c.st.Errors, c.st.Samples = map[string]int64{}, map[string]string{}
	}
	c.st.Errors[k]++
	if _, ok := c.st.Samples[k]; !ok {
		msg := strings.ReplaceAll(err.Error(), "\n", " | ")
		if len(msg) > 300 {
			msg = msg[:300] + "…"
		}
		c.st.Samples[k] = msg
	}
}

// emit writes one line to the coordinator.
func (c *child) emit(format string, args ...any) {
	c.outMu.Lock()
	defer c.outMu.Unlock()
	fmt.Fprintf(c.out, format+"\n", args...)
	c.out.Flush()
}

func (c *child) emitStats() {
	c.mu.Lock()
	raw, _ := json.Marshal(&c.st)
	c.mu.Unlock()
	c.emit("S %s", raw)
}

func runChild(cc childConfig) error {
	if cc.Split {
		cc.Options.Prefix += fmt.Sprintf("-p%d", cc.Proc)
	}
	octx, ocancel := context.WithTimeout(context.Background(), 30*time.Second)
	l, closeLocker, err := storage.Open(octx, cc.URLs, cc.Options)
	ocancel()
	if err != nil {
		return err
	}
	defer closeLocker()
	db, err := sql.Open("postgres", cc.FenceURL)
	if err != nil {
		return err
	}
	defer db.Close()
	db.SetMaxOpenConns(cc.Workers + 1)
	db.SetMaxIdleConns(cc.Workers + 1)

	c := &child{cc: cc, fence: newFence(db, cc.Schema), out: bufio.NewWriter(os.Stdout)}
	c.f, err = locker.NewFactory(l,
		locker.TTL(cc.TTL),
		locker.Retries(locker.Unlimited),
		locker.WithBackoff(locker.Jitter(max(cc.TTL/20, time.Millisecond), 0.5)),
		locker.AutoRefresh(),
		locker.Observe(c.observe),
	)
	if err != nil {
		return err
	}

	ctx, cancel := context.WithDeadline(context.Background(), cc.Deadline)
	defer cancel()
	go func() {
		// The coordinator closes our standard input to stop us (and so
		// does its death).
		_, _ = bufio.NewReader(os.Stdin).ReadString(0)
		cancel()
	}()

	done := make(chan struct{})
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				c.emitStats()
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range cc.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.work(ctx, w)
		}()
	}
	wg.Wait()
	close(done)
	c.emitStats()
	c.emit("E")
	return nil
}

func (c *child) observe(e locker.Event) {
	switch e.Kind {
	case locker.Acquired:
		c.count(func(s *stats) { s.Acquired++ })
	case locker.Contended:
		if errors.Is(e.Err, locker.ErrNotObtained) {
			c.count(func(s *stats) { s.Contended++ })
		} else {
			c.count(func(s *stats) { s.AttemptErrors++ })
			c.fail("acquire", e.Err)
		}
	case locker.Refreshed:
		c.count(func(s *stats) { s.Refreshed++ })
	case locker.Lost:
		c.count(func(s *stats) { s.LostEvents++ })
	}
}

// work is one worker goroutine: lock a random key, run a fenced section,
// unlock; until ctx ends.
func (c *child) work(ctx context.Context, worker int) {
	for ctx.Err() == nil {
		key := c.cc.Keys[rand.IntN(len(c.cc.Keys))]
		if rand.IntN(8) == 0 {
			c.abandonedSection(ctx, key, worker)
			continue
		}
		l := c.f.NewLock(key)
		if err := l.Lock(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			c.fail("lock", err)
			sleep(ctx, c.cc.TTL/10)
			continue
		}
		c.section(l, key, worker)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// section runs one critical section under the held lock l and unlocks it.
// It does not watch the run's context: a section that has begun is
// finished, so that the last ones of the run are judged too.
func (c *child) section(l *locker.Lock, key string, worker int) {
	ttl := c.cc.TTL
	owner, token := l.Owner(), l.Token()
	defer func() {
		uctx, cancel := context.WithTimeout(context.Background(), 2*ttl+time.Second)
		defer cancel()
		if err := l.Unlock(uctx); err != nil {
			if errors.Is(err, locker.ErrLost) {
				c.count(func(s *stats) { s.UnlockLost++ })
			} else {
				c.fail("unlock", err)
			}
		}
		if owner != "" {
			c.emit("R %s", owner)
		}
	}()
	if token == 0 {
		// Lost between Lock's return and here.
		c.count(func(s *stats) { s.LostBeforeStart++ })
		return
	}
	c.emit("A %s %s", owner, key)

	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	// Begin: raise the key's high-water mark to our token.
	rem, sent := l.Remaining(), time.Now()
	start, ok, mark, err := c.fence.begin(fctx, key, owner, token)
	inFlight := time.Since(sent)
	if err != nil {
		c.count(func(s *stats) { s.FenceErrors++ })
		c.fail("fence-begin", err)
		return
	}
	if !ok {
		trusted := l.Err() == nil && rem > inFlight
		c.count(func(s *stats) {
			s.BeginRejected++
			if trusted {
				s.BeginViolations++
			}
		})
		if trusted {
			// The lock handed out a token no greater than one that began
			// before: fencing (guarantee 4) failed, or two holders.
			c.fail("token-not-rising", fmt.Errorf("begin of token %d on %q rejected: mark %d, while the lease was trusted for %v more", token, key, mark, rem-inFlight))
		}
		return
	}

	// The critical section. One in twenty outlasts the TTL, on auto-refresh.
	hold := time.Duration(rand.Int64N(int64(c.cc.Hold) + 1))
	if rand.IntN(20) == 0 {
		hold = ttl + ttl/2
	}
	t := time.NewTimer(hold)
	select {
	case <-t.C:
	case <-l.Done():
		t.Stop()
	}

	// End: append the log row, accepted only if nobody began since. A
	// writer that knows it lost its lease writes all the same, to prove
	// that the fence rejects it.
	lost := l.Err() != nil
	rem, sent = l.Remaining(), time.Now()
	id, accepted, err := c.fence.end(fctx, key, owner, token, c.cc.Proc, worker, start, lost)
	inFlight = time.Since(sent)
	if err != nil {
		c.count(func(s *stats) { s.FenceErrors++ })
		c.fail("fence-end", err)
		return
	}
	if accepted {
		c.count(func(s *stats) {
			s.Accepted++
			if lost {
				s.AcceptedAfterLoss++
			}
		})
		return
	}
	switch {
	case lost:
		c.count(func(s *stats) { s.Rejected++; s.RejectedLost++ })
	case rem <= inFlight:
		c.count(func(s *stats) { s.Rejected++; s.RejectedLate++ })
	default:
		// Another holder began while we trusted our lease: two holders.
		c.count(func(s *stats) { s.Rejected++; s.Violations++ })
		c.fail("violation", fmt.Errorf("end of token %d on %q rejected while the lease was trusted for %v more", token, key, rem-inFlight))
		if err := c.fence.markViolation(fctx, id); err != nil {
			c.fail("fence-mark", err)
		}
	}
	// Someone else holds the key now: the lock must say we lost it.
	wait := time.NewTimer(2*ttl + time.Second)
	defer wait.Stop()
	select {
	case <-l.Done():
		if errors.Is(context.Cause(l.Context()), locker.ErrLost) || errors.Is(l.Err(), locker.ErrLost) {
			c.count(func(s *stats) { s.LostDetected++ })
		} else {
			c.count(func(s *stats) { s.LostUndetected++ })
			c.fail("undetected", fmt.Errorf("lease of token %d on %q ended without a loss cause: %v", token, key, l.Err()))
		}
	case <-wait.C:
		c.count(func(s *stats) { s.LostUndetected++ })
		c.fail("undetected", fmt.Errorf("lease of token %d on %q still trusted %v after the fence rejected it", token, key, 2*ttl+time.Second))
	}
}

// abandonedSection takes key with a single Acquire of the storage, runs a
// fenced section on the lease's own validity, and never releases it: the
// lease expires, and the workers waiting for the key race to take it over
// at once (the takeover race some storages lose).
func (c *child) abandonedSection(ctx context.Context, key string, worker int) {
	ttl := c.cc.TTL
	owner, err := randomOwner()
	if err != nil {
		c.fail("owner", err)
		return
	}
	// Wait for the key as Lock would, polling with single attempts.
	var sent time.Time
	var lease locker.Lease
	for {
		sent = time.Now()
		lease, err = c.f.Locker().Acquire(ctx, key, owner, ttl)
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, locker.ErrNotObtained) {
			c.count(func(s *stats) { s.Contended++ })
		} else {
			c.count(func(s *stats) { s.AttemptErrors++ })
			c.fail("acquire", err)
		}
		sleep(ctx, jitter(ttl/20))
	}
	deadline := sent.Add(lease.Validity)
	c.count(func(s *stats) { s.Acquired++; s.Abandoned++ })
	c.emit("A %s %s", owner, key)
	defer c.emit("R %s", owner)

	fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rem, sent := time.Until(deadline), time.Now()
	start, ok, mark, err := c.fence.begin(fctx, key, owner, lease.Token)
	inFlight := time.Since(sent)
	if err != nil {
		c.count(func(s *stats) { s.FenceErrors++ })
		c.fail("fence-begin", err)
		return
	}
	if !ok {
		trusted := rem > inFlight
		c.count(func(s *stats) {
			s.BeginRejected++
			if trusted {
				s.BeginViolations++
			}
		})
		if trusted {
			c.fail("token-not-rising", fmt.Errorf("begin of token %d on %q rejected: mark %d, while the lease was trusted for %v more", lease.Token, key, mark, rem-inFlight))
		}
		return
	}
	time.Sleep(time.Duration(rand.Int64N(int64(c.cc.Hold) + 1)))
	rem, sent = time.Until(deadline), time.Now()
	lost := rem <= 0
	id, accepted, err := c.fence.end(fctx, key, owner, lease.Token, c.cc.Proc, worker, start, lost)
	inFlight = time.Since(sent)
	switch {
	case err != nil:
		c.count(func(s *stats) { s.FenceErrors++ })
		c.fail("fence-end", err)
	case accepted:
		c.count(func(s *stats) {
			s.Accepted++
			if lost {
				s.AcceptedAfterLoss++
			}
		})
	case lost:
		c.count(func(s *stats) { s.Rejected++; s.RejectedLost++ })
	case rem <= inFlight:
		c.count(func(s *stats) { s.Rejected++; s.RejectedLate++ })
	default:
		c.count(func(s *stats) { s.Rejected++; s.Violations++ })
		c.fail("violation", fmt.Errorf("end of token %d on %q rejected while the lease was trusted for %v more", lease.Token, key, rem-inFlight))
		if err := c.fence.markViolation(fctx, id); err != nil {
			c.fail("fence-mark", err)
		}
	}
}

func randomOwner() (string, error) {
	var b [16]byte
	if _, err := crand.Read(b[:]); err != nil {
		return "", err
	}
	return hex.EncodeToString(b[:]), nil
}

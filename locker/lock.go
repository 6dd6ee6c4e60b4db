package locker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"
)

// Lock is a handle on one critical section, made by [Factory.NewLock]. One
// handle holds at most one lease at a time; its methods are safe for
// concurrent use. After Unlock (or a loss) the handle can be locked again,
// and each acquisition gets a new owner value and fencing token.
type Lock struct {
	locker Locker
	key    string
	cfg    config
	err    error     // invalid key or option, reported by Lock
	waits  *waitlist // the Factory's, for hand-offs; may be nil

	mu        sync.Mutex
	acquiring bool
	cur       *lease
}

// lease is one acquisition: its owner, token, trust deadline and lifetime.
type lease struct {
	l        *Lock
	owner    string
	token    int64
	ttl      time.Duration
	handoff  int // see Handoff
	acquired time.Time
	observer func(Event)

	ctx    context.Context
	cancel context.CancelCauseFunc

	mu       sync.Mutex
	deadline time.Time // monotonic: the lease may be trusted until then
	timer    *time.Timer
	stop     chan struct{}  // closed to stop the refresher
	wg       sync.WaitGroup // the refresher
}

var errUnlocked = fmt.Errorf("%w: unlocked", ErrNotHeld)

// Key returns the key the handle locks.
func (l *Lock) Key() string { return l.key }

// Lock acquires the lock, retrying while it is held elsewhere: by default
// 3 retries one second apart (see [Retries], [Interval], [WithBackoff]),
// never past ctx. opts apply to this call only.
//
// ctx bounds the wait only: the lease it obtains lives until Unlock or loss.
// [Lock.Context] carries ctx's values but not its cancellation.
//
// Lock returns nil once the lock is held. It returns an error matching
// [ErrNotObtained] if every attempt found the lock held elsewhere (and also
// ctx's error if ctx ended the wait); a wrapped backend error if the last
// attempt failed for another reason, leaving nothing held;
// [ErrAlreadyHeld] if this handle holds the lock or another Lock call on it
// is under way; [ErrInvalidKey] or [ErrInvalidOption] for bad input, before
// any I/O.
func (l *Lock) Lock(ctx context.Context, opts ...Option) error {
	return l.lock(ctx, context.WithoutCancel(ctx), opts)
}

// TryLock makes exactly one attempt to acquire the lock, as Lock does with
// [Retries](0). It returns an error matching [ErrNotObtained] at once if the
// lock is held elsewhere.
func (l *Lock) TryLock(ctx context.Context, opts ...Option) error {
	return l.lock(ctx, context.WithoutCancel(ctx), append(opts, Retries(0)))
}

func (l *Lock) lock(ctx, parent context.Context, opts []Option) error {
	if l.err != nil {
		return l.err
	}
	cfg := l.cfg
	if err := cfg.apply(opts); err != nil {
		return err
	}
	if err := cfg.check(); err != nil {
		return err
	}
	l.mu.Lock()
	if cur := l.cur; cur != nil {
		l.mu.Unlock()
		cur.check() // outside l.mu: a loss calls the observer
		l.mu.Lock()
	}
	switch {
	case l.acquiring:
		l.mu.Unlock()
		return fmt.Errorf("%w: a Lock call on this handle is under way", ErrAlreadyHeld)
	case l.cur != nil && l.cur.ctx.Err() == nil:
		l.mu.Unlock()
		return ErrAlreadyHeld
	}
	lost := l.cur // a lost lease, or nil: finish it off before taking a new one
	l.cur = nil
	l.acquiring = true
	l.mu.Unlock()
	if lost != nil {
		lost.end(nil) // outside l.mu: its refresher may be calling the observer
		lost.unhold()
	}

	ls, err := l.acquire(ctx, parent, &cfg)

	l.mu.Lock()
	l.acquiring = false
	if err == nil {
		l.cur = ls
	}
	l.mu.Unlock()
	return err
}

// acquire runs the attempt loop: the one retry loop of every driver.
//
// Retries and the interval (or backoff) bound how long it waits. When the
// driver is a [Watcher], a release notification wakes the wait early for an
// extra attempt that does not count as a retry; if it fails, the wait goes on
// to the end of the same interval.
func (l *Lock) acquire(ctx, parent context.Context, cfg *config) (*lease, error) {
	if err := ctx.Err(); err != nil {
		return nil, cancelled(ctx, nil)
	}
	owner, err := newOwner()
	if err != nil {
		return nil, err
	}
	a := attempter{l: l, cfg: cfg, ctx: ctx, parent: parent, owner: owner, start: time.Now()}
	defer a.unwatch()
	defer a.leave()
	for retry := 0; ; retry++ {
		ls, err := a.try()
		if ls != nil || ctx.Err() != nil {
			return ls, err
		}
		if retry >= cfg.retries {
			return nil, err
		}
		if errors.Is(err, ErrNotObtained) {
			a.watch()
			a.line()
		}
		t := time.NewTimer(cfg.delay(retry + 1))
	wait:
		for {
			var grant <-chan handed
			if a.w != nil {
				grant = a.w.grant
			}
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, cancelled(ctx, err)
			case <-t.C:
				break wait
			case <-a.released:
				ls, werr := a.try()
				if ls != nil || ctx.Err() != nil {
					t.Stop()
					return ls, werr
				}
				err = werr
				a.lineIf(werr)
			case h := <-grant:
				a.w = nil // delivered: out of the line
				ls, werr := a.handed(h)
				if ls != nil || ctx.Err() != nil {
					t.Stop()
					return ls, werr
				}
				err = werr
				a.lineIf(werr)
			}
		}
	}
}

// attempter makes the attempts of one acquire call.
type attempter struct {
	l           *Lock
	cfg         *config
	ctx, parent context.Context
	owner       string
	start       time.Time
	attempts    int

	released <-chan struct{} // nil until watching
	stop     func()
	watched  bool

	w *waiter // in the Factory's line for a hand-off; nil if not
}

// try makes one attempt. It returns the lease, or the attempt's error (for a
// cancelled ctx, the final error).
func (a *attempter) try() (*lease, error) {
	if a.w != nil {
		if h, ok := a.l.waits.attempt(a.ctx, a.w); ok {
			// A hand-off was under way: it decides instead.
			a.w = nil
			return a.handed(h)
		}
		if a.ctx.Err() != nil {
			return nil, cancelled(a.ctx, nil) // leave gives back what comes
		}
	}
	return a.acquire1(nil)
}

// handed takes the outcome of a hand-off: the lease, or else (a nudge, or a
// lease that came too late) an attempt of its own.
func (a *attempter) handed(h handed) (*lease, error) {
	// The Factory counts the key as this call's until it holds its own lease
	// (which takes over) or gives up.
	defer a.l.waits.unhold(a.l.key, h.to)
	if a.ctx.Err() != nil {
		if h.ok {
			a.l.abandon(a.ctx, a.cfg.ttl, a.owner)
		}
		return nil, cancelled(a.ctx, nil)
	}
	if h.ok {
		if ls, err := a.take(h); ls != nil || a.ctx.Err() != nil {
			return ls, err
		}
	}
	return a.acquire1(h.to)
}

// line puts the call in the Factory's line for a hand-off, or back in its
// place after an attempt of its own failed.
func (a *attempter) line() {
	switch {
	case a.l.waits == nil:
	case a.w == nil:
		a.w = a.l.waits.join(a.l.key, a.owner, a.cfg.ttl)
	default:
		a.l.waits.wait(a.w)
	}
}

// lineIf puts the call back in line if err is contention.
func (a *attempter) lineIf(err error) {
	if errors.Is(err, ErrNotObtained) {
		a.line()
	}
}

// leave takes the call out of the line when it ends, giving back a lease
// handed to it that it will not use.
func (a *attempter) leave() {
	if a.w == nil {
		return
	}
	h, ok := a.l.waits.quit(a.w)
	a.w = nil
	if ok {
		if h.ok {
			a.l.abandon(a.ctx, a.cfg.ttl, a.owner)
		}
		a.l.waits.unhold(a.l.key, h.to)
	}
}

// acquire1 makes one Acquire call, unless a live lease of the same Factory
// holds the key (or another waiter, not self, has been told to take it):
// then the attempt fails at once, without I/O, and the call waits in line.
func (a *attempter) acquire1(self *waiter) (*lease, error) {
	a.attempts++
	l, cfg := a.l, a.cfg
	if l.waits != nil && l.waits.waitIfHeld(a, self) {
		if a.ctx.Err() != nil {
			return nil, cancelled(a.ctx, nil)
		}
		if cfg.observer != nil {
			cfg.observer(Event{Kind: Contended, Key: l.key, Owner: a.owner, Attempt: a.attempts, Wait: time.Since(a.start), Err: errHeldHere})
		}
		return nil, errHeldHere
	}
	sent := time.Now()
	// A grant that arrives after a TTL cannot be trusted anyway: bound the
	// attempt by it, so a hung storage cannot hang Lock.
	actx, cancel := context.WithTimeout(a.ctx, cfg.ttl)
	granted, err := l.locker.Acquire(actx, l.key, a.owner, cfg.ttl)
	if err != nil && actx.Err() != nil && a.ctx.Err() == nil {
		err = fmt.Errorf("dlock: the attempt took longer than the TTL of %v: %w", cfg.ttl, err)
	}
	cancel()
	switch {
	case err == nil:
		deadline := sent.Add(granted.Validity)
		if granted.Validity > 0 && time.Now().Before(deadline) {
			ls := l.newLease(a.parent, cfg, a.owner, granted.Token, sent, deadline)
			ls.emit(Event{Kind: Acquired, Attempt: a.attempts, Wait: time.Since(a.start)})
			return ls, nil
		}
		// The grant arrived too late to be trusted: give it back.
		l.abandon(a.ctx, cfg.ttl, a.owner)
		err = fmt.Errorf("%w: the lease's validity ran out before the reply arrived", ErrNotObtained)
	case a.ctx.Err() != nil:
		// The request may have reached the storage: leave nothing held.
		l.abandon(a.ctx, cfg.ttl, a.owner)
		return nil, cancelled(a.ctx, err)
	case !errors.Is(err, ErrNotObtained):
		l.abandon(a.ctx, cfg.ttl, a.owner)
	}
	if cfg.observer != nil {
		cfg.observer(Event{Kind: Contended, Key: l.key, Owner: a.owner, Attempt: a.attempts, Wait: time.Since(a.start), Err: err})
	}
	return nil, err
}

// watch subscribes to releases of the key, once, if the driver can.
func (a *attempter) watch() {
	if a.watched {
		return
	}
	a.watched = true
	if w, ok := a.l.locker.(Watcher); ok {
		if ch, stop, err := w.Watch(a.ctx, a.l.key); err == nil {
			a.released, a.stop = ch, stop
		}
	}
}

func (a *attempter) unwatch() {
	if a.stop != nil {
		a.stop()
	}
}

// abandon releases whatever an attempt with owner may have left held, at most
// waiting for a TTL, even if ctx is cancelled.
func (l *Lock) abandon(ctx context.Context, ttl time.Duration, owner string) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), ttl)
	defer cancel()
	_ = l.locker.Release(rctx, l.key, owner)
}

// cancelled is the error of a wait cut short by ctx: it matches
// ErrNotObtained and ctx's error.
func cancelled(ctx context.Context, last error) error {
	errs := []error{ErrNotObtained, ctx.Err()}
	if cause := context.Cause(ctx); cause != nil && cause != ctx.Err() {
		errs = append(errs, cause)
	}
	if last != nil && !errors.Is(last, ErrNotObtained) && !errors.Is(last, ctx.Err()) {
		errs = append(errs, last)
	}
	return errors.Join(errs...)
}

func newOwner() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("dlock: generating an owner value: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// earlyBy is how long before the trust deadline a lease is declared lost, to
// absorb timer and scheduling latency: 5% of the TTL, at most 50ms.
func earlyBy(ttl time.Duration) time.Duration {
	return min(ttl/20, 50*time.Millisecond)
}

func (l *Lock) newLease(parent context.Context, cfg *config, owner string, token int64, acquired, deadline time.Time) *lease {
	ls := &lease{
		l: l, owner: owner, token: token, ttl: cfg.ttl, handoff: cfg.handoff, acquired: acquired,
		observer: cfg.observer, deadline: deadline, stop: make(chan struct{}),
	}
	ls.ctx, ls.cancel = context.WithCancelCause(parent)
	if l.waits != nil {
		l.waits.hold(l.key, ls)
	}
	ls.timer = time.AfterFunc(time.Until(deadline)-earlyBy(ls.ttl), ls.expire)
	if p := cfg.refreshPeriod(); p > 0 {
		ls.wg.Add(1)
		go ls.keepAlive(p)
	}
	return ls
}

func (ls *lease) emit(e Event) {
	if ls.observer == nil {
		return
	}
	e.Key, e.Owner = ls.l.key, ls.owner
	if e.Kind != Contended {
		e.Token = ls.token
	}
	ls.observer(e)
}

// expire runs when the trust deadline passes without a refresh.
func (ls *lease) expire() {
	ls.mu.Lock()
	select {
	case <-ls.stop: // ended
		ls.mu.Unlock()
		return
	default:
	}
	remaining := time.Until(ls.deadline) - earlyBy(ls.ttl)
	if remaining > 0 { // extended meanwhile
		ls.timer.Reset(remaining)
		ls.mu.Unlock()
		return
	}
	ls.mu.Unlock()
	ls.lose(fmt.Errorf("%w: the lease's validity ran out", ErrLost))
}

// check declares the lease lost if its trust deadline has passed, so that
// every look at the lock agrees with the monotonic clock even when the
// expiry timer has not run yet (a loaded machine, a paused process).
func (ls *lease) check() {
	ls.mu.Lock()
	expired := time.Until(ls.deadline) <= earlyBy(ls.ttl)
	ls.mu.Unlock()
	if expired {
		ls.lose(fmt.Errorf("%w: the lease's validity ran out", ErrLost))
	}
}

// lose cancels the lease's context with cause, once.
func (ls *lease) lose(cause error) {
	if ls.ctx.Err() != nil {
		return
	}
	ls.cancel(cause)
	ls.unhold()
	if context.Cause(ls.ctx) == cause {
		ls.emit(Event{Kind: Lost, Held: time.Since(ls.acquired), Err: cause})
	}
}

// unhold tells the Factory's waiting Lock calls that ls no longer holds
// the key, so that they ask the storage again.
func (ls *lease) unhold() {
	if w := ls.l.waits; w != nil {
		w.unhold(ls.l.key, ls)
	}
}

// extend moves the trust deadline after a successful refresh sent at sent.
// It reports false if the lease was already lost.
func (ls *lease) extend(sent time.Time, validity time.Duration) bool {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.ctx.Err() != nil {
		return false
	}
	if d := sent.Add(validity); d.After(ls.deadline) {
		ls.deadline = d
	}
	return true
}

// end finishes the lease: cancels its context with cause (unless already
// done), stops its timer and refresher and waits for the refresher to exit.
func (ls *lease) end(cause error) {
	if cause != nil {
		ls.cancel(cause)
	}
	ls.mu.Lock()
	select {
	case <-ls.stop:
	default:
		close(ls.stop)
	}
	ls.timer.Stop()
	ls.mu.Unlock()
	ls.wg.Wait()
}

func (ls *lease) remaining() time.Duration {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.ctx.Err() != nil {
		return 0
	}
	return max(time.Until(ls.deadline), 0)
}

// keepAlive refreshes the lease every period until it ends. An attempt that
// has not answered within a period is abandoned and the next one starts at
// once (a stalled connection must not use up the lease); a failed attempt is
// retried sooner. The expiry timer declares the loss if no attempt succeeds
// before the deadline.
func (ls *lease) keepAlive(period time.Duration) {
	defer ls.wg.Done()
	t := time.NewTimer(period)
	defer t.Stop()
	for {
		select {
		case <-ls.stop:
			return
		case <-ls.ctx.Done():
			return
		case <-t.C:
		}
		next := period
		err := ls.refresh(ls.ctx, ls.ttl, period)
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			ls.check() // past the lease's deadline: lost, and the loop ends
			next = 0
		case err != nil && !errors.Is(err, ErrNotHeld):
			next = max(period/4, time.Millisecond)
		}
		t.Reset(next)
	}
}

// refresh extends the lease in the storage and locally. The attempt is cut
// short at the lease's deadline, or after limit if limit > 0.
func (ls *lease) refresh(ctx context.Context, ttl, limit time.Duration) error {
	ls.mu.Lock()
	deadline := ls.deadline
	ls.mu.Unlock()
	if limit > 0 {
		deadline = minTime(deadline, time.Now().Add(limit))
	}
	rctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	sent := time.Now()
	granted, err := ls.l.locker.Refresh(rctx, ls.l.key, ls.owner, ttl)
	switch {
	case errors.Is(err, ErrNotHeld):
		cause := fmt.Errorf("%w: a refresh found the lease gone", ErrLost)
		ls.lose(cause)
		return cause
	case err != nil:
		ls.check() // the attempt may have run past the lease's deadline
		if ls.ctx.Err() != nil {
			return errors.Join(context.Cause(ls.ctx), err)
		}
		if rctx.Err() != nil && ctx.Err() == nil {
			return errors.Join(err, context.DeadlineExceeded)
		}
		return err
	case granted.Validity <= 0 || !ls.extend(sent, granted.Validity):
		if c := context.Cause(ls.ctx); c != nil {
			return c
		}
		return fmt.Errorf("%w: the refreshed lease's validity ran out before the reply arrived", ErrLost)
	}
	ls.emit(Event{Kind: Refreshed, Held: time.Since(ls.acquired)})
	return nil
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// current returns the live lease, or an error matching ErrNotHeld.
func (l *Lock) current() (*lease, error) {
	l.mu.Lock()
	ls := l.cur
	l.mu.Unlock()
	if ls == nil {
		return nil, ErrNotHeld
	}
	ls.check()
	if ls.ctx.Err() != nil {
		return nil, context.Cause(ls.ctx)
	}
	return ls, nil
}

// Refresh extends the held lease to a full TTL from now (opts may set
// another [TTL]), keeping its fencing token. It returns an error matching
// [ErrNotHeld] if the handle holds no lease or the storage says the lease is
// gone (the lock is then lost: [Lock.Done] closes), a wrapped backend error
// if the storage could not be reached (the lease stands until its validity
// runs out), or [ErrInvalidOption] for bad options.
func (l *Lock) Refresh(ctx context.Context, opts ...Option) error {
	if l.err != nil {
		return l.err
	}
	cfg := l.cfg
	if err := cfg.apply(opts); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	ls, err := l.current()
	if err != nil {
		return err
	}
	return ls.refresh(ctx, cfg.ttl, 0)
}

// Unlock releases the lock. It stops any automatic refresh and cancels
// [Lock.Context] before it returns. When a Lock call of the same [Factory]
// is waiting for the key and the driver is a [Transferer], Unlock hands the
// lock straight to it instead (see [Handoff]).
//
// It returns an error matching [ErrNotHeld] if the handle holds no lease
// (never locked, or already unlocked), or if the lease was lost before
// Unlock (the error then also matches [ErrLost]: the critical section may
// have overlapped another holder's). It returns a wrapped backend error if
// the storage could not be reached; the lease then ends by itself after its
// TTL.
func (l *Lock) Unlock(ctx context.Context) error {
	l.mu.Lock()
	ls := l.cur
	l.cur = nil
	l.mu.Unlock()
	if ls == nil {
		return ErrNotHeld
	}
	var lost error
	ls.check()
	if ls.ctx.Err() != nil {
		lost = context.Cause(ls.ctx)
	}
	// The Factory's other Lock calls keep waiting for a hand-off, asking the
	// storage nothing, until the lease is handed over or released.
	ls.end(errUnlocked)
	if err := ctx.Err(); err != nil {
		ls.unhold()
		return errors.Join(lost, err)
	}
	var next func()
	var terr error // a failed hand-off's backend error
	if lost == nil {
		var done bool
		if done, terr, next = l.handoff(ctx, ls); done {
			ls.emit(Event{Kind: Released, Held: time.Since(ls.acquired), Err: terr})
			return terr
		}
	}
	ls.unhold() // before the release: its notification may wake a waiter at once
	err := l.locker.Release(ctx, l.key, ls.owner)
	if next != nil {
		next()
	}
	switch {
	case lost != nil:
		err = lost
	case terr != nil && errors.Is(err, ErrNotHeld):
		// The failed hand-off did move the lease, and it was given back.
		err = nil
	case errors.Is(err, ErrNotHeld):
		err = errors.Join(ErrLost, err)
	}
	ls.emit(Event{Kind: Released, Held: time.Since(ls.acquired), Err: err})
	return err
}

// Token returns the fencing token of the held lease, or 0 if the handle
// holds none. Tokens strictly increase per key with every acquisition.
func (l *Lock) Token() int64 {
	ls, err := l.current()
	if err != nil {
		return 0
	}
	return ls.token
}

// Owner returns the owner value of the held lease (unique to this
// acquisition), or "" if the handle holds none.
func (l *Lock) Owner() string {
	ls, err := l.current()
	if err != nil {
		return ""
	}
	return ls.owner
}

// Remaining returns how much longer the held lease can be trusted, measured
// on the monotonic clock from when its last acquire or refresh was sent, or
// 0 if the handle holds no live lease.
func (l *Lock) Remaining() time.Duration {
	ls, err := l.current()
	if err != nil {
		return 0
	}
	return ls.remaining()
}

// Held reports whether the handle holds a lease that can still be trusted.
func (l *Lock) Held() bool {
	_, err := l.current()
	return err == nil
}

var closed = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// Done returns a channel that is closed when the current lease ends: by
// Unlock, or by loss (a refresh found another owner, or the lease's validity
// ran out without a successful refresh). With no lease it returns a closed
// channel. After a loss, [Lock.Err] says why.
//
// Loss by expiry is decided on the monotonic clock: a timer closes the
// channel a little before the lease's validity ends (5% of the TTL, at most
// 50ms, to absorb timer latency), and every call of Done, Context, Err,
// Held, Token, Owner or Remaining checks the deadline itself, so no look at
// the lock after its validity sees it live, however late the timer runs.
func (l *Lock) Done() <-chan struct{} {
	l.mu.Lock()
	ls := l.cur
	l.mu.Unlock()
	if ls == nil {
		return closed
	}
	ls.check()
	return ls.ctx.Done()
}

// Context returns a context for the work done under the lock. It carries
// the values of the ctx given to Lock and is cancelled when the lease ends:
// with a cause matching [ErrLost] (and so [ErrNotHeld]) when it is lost, or
// [ErrNotHeld] after Unlock. With no lease it returns an already cancelled
// context whose cause matches ErrNotHeld.
func (l *Lock) Context() context.Context {
	l.mu.Lock()
	ls := l.cur
	l.mu.Unlock()
	if ls == nil {
		ctx, cancel := context.WithCancelCause(context.Background())
		cancel(ErrNotHeld)
		return ctx
	}
	ls.check()
	return ls.ctx
}

// Err returns nil while the lease is live, the loss cause (matching
// [ErrLost]) after a loss, and ErrNotHeld when the handle holds no lease.
func (l *Lock) Err() error {
	_, err := l.current()
	return err
}

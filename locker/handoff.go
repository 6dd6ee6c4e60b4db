package locker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// DefaultHandoff is how many times in a row, by default, Unlock hands a lock
// straight to a waiting Lock call of the same [Factory]; see [Handoff].
const DefaultHandoff = 16

// Handoff sets how many times in a row Unlock may hand the lock straight to
// a Lock call of the same [Factory] that is waiting for the same key, when
// the driver is a [Transferer] (default [DefaultHandoff]; 0 turns hand-off
// off). Negative is invalid.
//
// A hand-off is one atomic storage operation that moves the lease from the
// releasing owner to the waiting one, with a fresh TTL and a new, higher
// fencing token: one round trip from Unlock to the next holder, where a
// release followed by the waiter's own attempt takes two or more. Waiters
// of one Factory are served in the order they started waiting. After n
// hand-offs in a row the lock is released to the storage instead, so that
// waiters in other processes get their turn.
//
// The setting in force when a lock is taken decides what its Unlock does.
func Handoff(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.fail("handoff %d is negative", n)
			return
		}
		c.handoff = n
	}
}

// waitlist holds, per key, the Lock calls of one Factory that are waiting
// for the key, in the order they started waiting, so that Unlock can hand
// the lock to the first of them.
type waitlist struct {
	mu   sync.Mutex
	keys map[string]*queue
}

type queue struct {
	waiters []*waiter
	chain   int // hand-offs in a row
	// holder is the live lease of this Factory on the key (a *lease), or the
	// waiter a hand-off has given it to (a *waiter) until its lease is
	// made; nil if the Factory does not hold the key.
	holder any
}

// waiter is one waiting Lock call.
type waiter struct {
	key   string
	owner string
	ttl   time.Duration
	grant chan handed // buffered: one value per pop, sent under waitlist.mu

	// Guarded by waitlist.mu.
	state waiterState
	gone  bool // the call ended while a hand-off to it was under way
}

type waiterState int8

const (
	idle       waiterState = iota // waiting: may be handed the lock
	attempting                    // making its own attempt: skipped
	popped                        // a hand-off is under way: its outcome will be sent
)

// handed is the outcome of a hand-off, sent to the waiter.
type handed struct {
	lease Lease
	sent  time.Time // when the transfer was sent: the lease's validity counts from then
	ok    bool      // false: no lease; the waiter should attempt at once
	to    *waiter   // the waiter it was sent to
}

func newWaitlist() *waitlist { return &waitlist{keys: map[string]*queue{}} }

func newWaiter(key, owner string, ttl time.Duration) *waiter {
	return &waiter{key: key, owner: owner, ttl: ttl, grant: make(chan handed, 1)}
}

// join adds a waiter for key at the end of the line.
func (wl *waitlist) join(key, owner string, ttl time.Duration) *waiter {
	w := newWaiter(key, owner, ttl)
	wl.mu.Lock()
	q := wl.keys[key]
	if q == nil {
		q = &queue{}
		wl.keys[key] = q
	}
	q.waiters = append(q.waiters, w)
	wl.mu.Unlock()
	return w
}

// pop takes the first idle waiter for key, or returns nil if there is none
// or the lock has been handed on limit times in a row (the count then
// starts again).
func (wl *waitlist) pop(key string, limit int) *waiter {
	wl.mu.Lock()
	defer wl.mu.Unlock()
	q := wl.keys[key]
	if q == nil {
		return nil
	}
	if q.chain >= limit {
		q.chain = 0
		return nil
	}
	for _, w := range q.waiters {
		if w.state == idle {
			w.state = popped
			q.chain++
			return w
		}
	}
	return nil
}

// remove drops w from its key's line; the caller holds wl.mu.
func (wl *waitlist) remove(w *waiter) {
	q := wl.keys[w.key]
	if q == nil {
		return
	}
	for i, x := range q.waiters {
		if x == w {
			q.waiters = append(q.waiters[:i], q.waiters[i+1:]...)
			break
		}
	}
	wl.tidy(w.key, q)
}

// tidy forgets the entry of a key nobody holds or waits for; the caller
// holds wl.mu.
func (wl *waitlist) tidy(key string, q *queue) {
	if len(q.waiters) == 0 && q.holder == nil {
		delete(wl.keys, key)
	}
}

// hold records that ls, a lease of this Factory, holds key: until it ends,
// the Factory's other Lock calls for key know the lock is taken without
// asking the storage, and wait for a hand-off.
func (wl *waitlist) hold(key string, ls any) {
	wl.mu.Lock()
	q := wl.keys[key]
	if q == nil {
		q = &queue{}
		wl.keys[key] = q
	}
	q.holder = ls
	wl.mu.Unlock()
}

// unhold records that ls (a *lease or a *waiter) no longer holds key.
func (wl *waitlist) unhold(key string, ls any) {
	wl.mu.Lock()
	if q := wl.keys[key]; q != nil && q.holder == ls {
		q.holder = nil
		wl.tidy(key, q)
	}
	wl.mu.Unlock()
}

// waitIfHeld reports whether a live lease of this Factory holds key, or a
// waiter other than self has been told to take it. If so, it puts a's call
// in line (or back in its place) in the same step, so that an Unlock that
// follows at once finds it there.
func (wl *waitlist) waitIfHeld(a *attempter, self *waiter) bool {
	wl.mu.Lock()
	defer wl.mu.Unlock()
	q := wl.keys[a.l.key]
	if q == nil || q.holder == nil || q.holder == self {
		return false
	}
	switch {
	case a.w == nil:
		a.w = newWaiter(a.l.key, a.owner, a.cfg.ttl)
		q.waiters = append(q.waiters, a.w)
	case a.w.state == attempting:
		a.w.state = idle
	}
	return true
}

// pass makes to the key's holder in place of from, if from still is.
func (wl *waitlist) pass(key string, from *lease, to *waiter) {
	wl.mu.Lock()
	if q := wl.keys[key]; q != nil && q.holder == from {
		q.holder = to
	}
	wl.mu.Unlock()
}

// errHeldHere is the outcome of an attempt skipped because a lock of the
// same Factory holds the key.
var errHeldHere = fmt.Errorf("%w: held by another lock of this Factory", ErrNotObtained)

// deliver sends the outcome of a hand-off to w. A lease handed over makes
// w the key's holder in place of from. deliver reports false if w's Lock
// call has ended meanwhile: the caller must then give back a lease it
// transferred to w.
func (wl *waitlist) deliver(w *waiter, h handed, from *lease) bool {
	wl.mu.Lock()
	defer wl.mu.Unlock()
	if h.ok {
		if q := wl.keys[w.key]; q != nil && q.holder == from && !w.gone {
			q.holder = w
		}
	}
	wl.remove(w)
	if w.gone {
		return false
	}
	h.to = w
	w.grant <- h
	return true
}

// attempt marks w as making its own attempt, so that no hand-off to it
// starts meanwhile. If one is already under way, attempt waits for its
// outcome (one storage round trip, bounded by the TTL) and returns it, or
// returns nothing when ctx ends first (the caller then quits the line).
func (wl *waitlist) attempt(ctx context.Context, w *waiter) (handed, bool) {
	wl.mu.Lock()
	if w.state != popped {
		w.state = attempting
		wl.mu.Unlock()
		return handed{}, false
	}
	wl.mu.Unlock()
	select {
	case h := <-w.grant:
		return h, true
	case <-ctx.Done():
		return handed{}, false
	}
}

// wait marks w, whose own attempt failed, as waiting again, in its place.
func (wl *waitlist) wait(w *waiter) {
	wl.mu.Lock()
	if w.state == attempting {
		w.state = idle
	}
	wl.mu.Unlock()
}

// quit takes w out of the line when its Lock call ends. If a hand-off to w
// has already been delivered, quit returns it; if one is under way, w is
// marked gone and the Unlock making it gives the lease back.
func (wl *waitlist) quit(w *waiter) (handed, bool) {
	wl.mu.Lock()
	defer wl.mu.Unlock()
	select {
	case h := <-w.grant:
		return h, true
	default:
	}
	if w.state == popped {
		w.gone = true
		return handed{}, false
	}
	wl.remove(w)
	return handed{}, false
}

// handoff tries to pass the lease ls, which Unlock is ending, to the first
// waiter of the Factory. done reports whether it did (or found the lease
// lost: err then says so); when it did not, the caller releases the lease as
// usual and then calls next, if not nil, to tell the waiter that was picked
// to attempt at once. err is the transfer's backend error, if it had one:
// the transfer may then have happened, and the release finds nothing held.
func (l *Lock) handoff(ctx context.Context, ls *lease) (done bool, err error, next func()) {
	t, ok := l.locker.(Transferer)
	if !ok || l.waits == nil || ls.handoff == 0 {
		return false, nil, nil
	}
	w := l.waits.pop(l.key, ls.handoff)
	if w == nil {
		return false, nil, nil
	}
	// nudge tells w to attempt at once. Until it has, the key stays w's in
	// the Factory, so that the other waiters, woken by the release too, do
	// not race it (on Redlock such races split the votes).
	nudge := func() {
		if !l.waits.deliver(w, handed{}, nil) {
			l.waits.unhold(l.key, w)
		}
	}
	sent := time.Now()
	tctx, cancel := context.WithTimeout(ctx, w.ttl)
	granted, err := t.Transfer(tctx, l.key, ls.owner, w.owner, w.ttl)
	cancel()
	switch {
	case err == nil:
		if !l.waits.deliver(w, handed{lease: granted, sent: sent, ok: true}, ls) {
			// The waiter gave up meanwhile: nobody will use its lease.
			l.abandon(ctx, w.ttl, w.owner)
			ls.unhold()
		}
		return true, nil, nil
	case errors.Is(err, ErrNotHeld):
		ls.unhold()
		nudge()
		return true, errors.Join(ErrLost, err), nil
	case errors.Is(err, errors.ErrUnsupported):
		l.waits.pass(l.key, ls, w)
		return false, nil, nudge
	}
	// A backend error: the transfer may have happened. Give back what the
	// waiter may hold before it attempts with the same owner value, then
	// release ls as usual.
	l.abandon(ctx, w.ttl, w.owner)
	l.waits.pass(l.key, ls, w)
	return false, err, nudge
}

// take turns a hand-off into the waiter's lease, or returns an error
// matching ErrNotObtained if it came too late to be trusted.
func (a *attempter) take(h handed) (*lease, error) {
	deadline := h.sent.Add(h.lease.Validity)
	if h.lease.Validity > 0 && time.Now().Before(deadline) {
		ls := a.l.newLease(a.parent, a.cfg, a.owner, h.lease.Token, h.sent, deadline)
		ls.emit(Event{Kind: Acquired, Attempt: a.attempts, Wait: time.Since(a.start)})
		return ls, nil
	}
	a.l.abandon(a.ctx, a.cfg.ttl, a.owner)
	return nil, fmt.Errorf("%w: the lease handed over ran out before it arrived", ErrNotObtained)
}

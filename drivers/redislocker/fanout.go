package redislocker

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"
)

// A Redlock fan-out sends one script to several nodes and gathers their
// replies. It is pipelined, without goroutines: the calling goroutine
// takes a connection from every node's pool, sends and flushes the
// request on each, and then reads the replies one node after another, so
// that the call takes as long as the slowest reply it waits for, not the
// sum of the round trips. Each read is bounded through the connection's
// read deadline (which, when it passes, makes redigo close that
// connection, as a cancelled request would):
//
//   - until the outcome is decided, by the caller's bound (the context's
//     deadline, or the lease's end);
//   - once it is decided, by as long again as the decision took (at least
//     a grace period), as before;
//   - and, while the other nodes could still decide the outcome without
//     it, by a patience derived from the node's recent reply times, so
//     that a node that hangs while it is read first holds the call up by
//     that patience, not until the bound.
//
// A node that timed out or failed is read last in later fan-outs (until it
// answers again), so that a hung minority is only waited for by the grace
// period once a quorum has decided.
//
// A context that can be cancelled but has no deadline cannot be turned into
// a read deadline; such a fan-out goes through fanoutAsync, a goroutine per
// node, whose requests redigo's DoContext interrupts. So does a fan-out
// when a node's pool has no idle connection (as far as it tells, as
// *redis.Pool does): fanoutAsync dials the nodes at once, not one after
// another.

// maxStackNodes is the group size up to which a fan-out keeps its
// per-node state in arrays on the stack.
const maxStackNodes = 8

// Patience before a pipelined read gives up on a node whose answer the
// others may make unnecessary: softRTTs times the node's recent reply
// time, at least softMin.
const (
	softMin  = 250 * time.Millisecond
	softRTTs = 8
)

// decider says when a fan-out's outcome is known: once need replies are ok
// (or so many are not that need cannot be reached), or, when custom is
// set, when custom says so.
type decider struct {
	ok     func(reply) bool
	need   int
	of     int // nodes asked
	custom func([]reply) bool
}

func (d *decider) good(rs []reply) int {
	g := 0
	for _, r := range rs {
		if d.ok(r) {
			g++
		}
	}
	return g
}

func (d *decider) decided(rs []reply) bool {
	if d.custom != nil {
		return d.custom(rs)
	}
	g := d.good(rs)
	return g >= d.need || len(rs)-g > d.of-d.need
}

// spare reports whether the outcome could still be reached without one of
// the unread nodes (unread counts it).
func (d *decider) spare(rs []reply, unread int) bool {
	if d.custom != nil {
		return false
	}
	return d.good(rs)+unread-1 >= d.need
}

// nodeHealth is what a Locker's fan-outs remember about one node.
type nodeHealth struct {
	rtt     atomic.Int64 // moving average of reply times, in nanoseconds
	suspect atomic.Bool  // the last request failed or timed out
}

func (h *nodeHealth) patience() time.Duration {
	if h == nil {
		return softMin
	}
	return max(softMin, softRTTs*time.Duration(h.rtt.Load()))
}

func (h *nodeHealth) isSuspect() bool { return h != nil && h.suspect.Load() }

// note records a read's outcome: a reply (an error reply included) clears
// the suspicion and feeds the average; a failure sets it.
func (h *nodeHealth) note(answered bool, took time.Duration) {
	if h == nil {
		return
	}
	if !answered {
		if !h.suspect.Load() {
			h.suspect.Store(true)
		}
		return
	}
	if h.suspect.Load() {
		h.suspect.Store(false)
	}
	old := h.rtt.Load()
	if old == 0 {
		h.rtt.Store(int64(took))
	} else {
		h.rtt.Store(old + (int64(took)-old)/8)
	}
}

// shaArgs holds each script's EVALSHA arguments boxed once.
var shaArgs = func() map[*script][2]interface{} {
	m := map[*script][2]interface{}{}
	for _, s := range []*script{acquireScript, refreshScript, releaseScript, inspectScript, fenceScript} {
		m[s] = [2]interface{}{s.Hash(), s.keys}
	}
	return m
}()

// pend is one node's request in flight.
type pend struct {
	node int
	c    redis.Conn
	h    *nodeHealth
}

// fanout evaluates s with args on nodes (nil: every node) and returns their
// replies, in the order they were read. It stops waiting when every node
// answered, or when d says the outcome is known; it then gives the
// remaining nodes as long again as the decision took (at least least) and
// gives up on those still silent. bound, unless zero, ends every wait (as
// ctx's deadline does). A node that did not answer gets a reply with its
// error: a timeout, or a context error when ctx ended the wait.
func (l *Locker) fanout(ctx context.Context, bound time.Time, nodes []int, d decider, least time.Duration, s *script, args ...interface{}) []reply {
	deadline, timed := ctx.Deadline()
	if ctx.Done() != nil && !timed || l.mustDial(nodes) {
		return l.fanoutAsync(ctx, bound, nodes, d, least, s, args...)
	}
	if !bound.IsZero() && (!timed || bound.Before(deadline)) {
		deadline = bound
	}
	start := time.Now()

	n := len(l.nodes)
	if nodes != nil {
		n = len(nodes)
	}
	var pbuf [maxStackNodes]pend
	var ps []pend
	if n <= maxStackNodes {
		ps = pbuf[:0]
	} else {
		ps = make([]pend, 0, n)
	}
	rs := make([]reply, 0, n)
	full := make([]interface{}, 2+len(args))
	if sa, ok := shaArgs[s]; ok {
		full[0], full[1] = sa[0], sa[1]
	} else {
		full[0], full[1] = s.Hash(), s.keys
	}
	copy(full[2:], args)

	// Send to the healthy nodes first, the suspect ones last: replies are
	// read in the same order.
	for pass := 0; pass < 2; pass++ {
		for j := 0; j < n; j++ {
			i := j
			if nodes != nil {
				i = nodes[j]
			}
			h := &l.health[i]
			if h.isSuspect() != (pass == 1) {
				continue
			}
			c, err := l.nodes[i].GetContext(ctx)
			if err == nil {
				if err = c.Send("EVALSHA", full...); err == nil {
					err = c.Flush()
				}
				if err != nil {
					c.Close()
				}
			}
			if err != nil {
				h.note(false, 0)
				rs = append(rs, reply{node: i, err: ctxError(ctx, err)})
				continue
			}
			ps = append(ps, pend{node: i, c: c, h: h})
		}
	}

	var decidedAt time.Time
	if d.decided(rs) {
		decidedAt = time.Now()
	}
	var evalArgs []interface{}
	for k := range ps {
		p := &ps[k]
		dl, soft := deadline, false
		switch {
		case ctx.Err() != nil:
			dl = start // give up at once on what has not arrived
		case !decidedAt.IsZero():
			dl = earliest(dl, decidedAt.Add(max(decidedAt.Sub(start), least)))
		case len(ps)-k > 1 && d.spare(rs, len(ps)-k):
			if sd := start.Add(p.h.patience()); dl.IsZero() || sd.Before(dl) {
				dl, soft = sd, true
			}
		}
		v, err := receive(ctx, p.c, dl)
		if e, ok := err.(redis.Error); ok && strings.HasPrefix(string(e), "NOSCRIPT ") {
			if evalArgs == nil {
				evalArgs = append([]interface{}{s.src}, full[1:]...)
			}
			v, err = doUntil(ctx, p.c, dl, "EVAL", evalArgs)
		}
		_, isReply := err.(redis.Error)
		p.h.note(err == nil || isReply, time.Since(start))
		p.c.Close()
		if err != nil && !isReply {
			if soft && ctx.Err() == nil {
				err = errors.Join(errSlowNode, err)
			}
			err = ctxError(ctx, err)
		}
		rs = append(rs, reply{node: p.node, v: v, err: err})
		if decidedAt.IsZero() && d.decided(rs) {
			decidedAt = time.Now()
		}
	}
	return rs
}

// idleCounter is the part of *redis.Pool that tells whether a connection
// is ready.
type idleCounter interface{ IdleCount() int }

// mustDial reports whether a node's pool, as far as it tells, has no idle
// connection: the pipelined fan-out would then dial one node after
// another, where fanoutAsync dials them all at once.
func (l *Locker) mustDial(nodes []int) bool {
	n := len(l.nodes)
	if nodes != nil {
		n = len(nodes)
	}
	for j := 0; j < n; j++ {
		i := j
		if nodes != nil {
			i = nodes[j]
		}
		if ic, ok := l.nodes[i].(idleCounter); ok && ic.IdleCount() == 0 {
			return true
		}
	}
	return false
}

// errSlowNode marks a node given up on after its patience ran out, while
// the other nodes could still decide without it.
var errSlowNode = errors.New("no reply within the patience given to one node of a quorum")

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || b.Before(a) {
		return b
	}
	return a
}

// receive reads one reply from c, waiting until dl (zero: the connection's
// own read timeout). A dl already past still takes a reply that has
// arrived; otherwise the connection is closed.
func receive(ctx context.Context, c redis.Conn, dl time.Time) (interface{}, error) {
	if dl.IsZero() {
		return c.Receive()
	}
	t := max(time.Until(dl), time.Nanosecond)
	if cwt, ok := c.(redis.ConnWithTimeout); ok {
		return cwt.ReceiveWithTimeout(t)
	}
	if cwc, ok := c.(redis.ConnWithContext); ok {
		rctx, cancel := context.WithDeadline(context.WithoutCancel(ctx), dl)
		defer cancel()
		return cwc.ReceiveContext(rctx)
	}
	return c.Receive()
}

// doUntil runs one command on c, waiting for its reply until dl, as
// receive does.
func doUntil(ctx context.Context, c redis.Conn, dl time.Time, cmd string, args []interface{}) (interface{}, error) {
	if err := c.Send(cmd, args...); err != nil {
		return nil, err
	}
	if err := c.Flush(); err != nil {
		return nil, err
	}
	return receive(ctx, c, dl)
}

// fanoutAsync is fanout for a ctx that can be cancelled but has no
// deadline: a goroutine per node, each request interrupted by
// cancellation through redigo's DoContext.
func (l *Locker) fanoutAsync(ctx context.Context, bound time.Time, nodes []int, d decider, least time.Duration, s *script, args ...interface{}) []reply {
	start := time.Now()
	var cancel context.CancelFunc
	if !bound.IsZero() {
		ctx, cancel = context.WithDeadline(ctx, bound)
	} else {
		ctx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	if nodes == nil {
		nodes = l.allNodes()
	}
	ch := make(chan reply, len(nodes))
	for _, n := range nodes {
		go func() {
			v, _, err := run(ctx, l.nodes[n], s, args...)
			ch <- reply{node: n, v: v, err: err}
		}()
	}
	rs := make([]reply, 0, len(nodes))
	for len(rs) < len(nodes) && !d.decided(rs) {
		rs = append(rs, <-ch)
	}
	if len(rs) < len(nodes) {
		grace := max(time.Since(start), least)
		t := time.NewTimer(grace)
	wait:
		for len(rs) < len(nodes) {
			select {
			case r := <-ch:
				rs = append(rs, r)
			case <-t.C:
				break wait
			}
		}
		t.Stop()
		cancel()
		for len(rs) < len(nodes) {
			rs = append(rs, <-ch)
		}
	}
	return rs
}

package redislocker

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/locker"
)

// Once a fan-out's outcome is decided, it waits for the remaining nodes as
// long again as the decision took, at least minGrace (releaseGrace for a
// release, whose stragglers would otherwise keep the key until its TTL),
// before it gives up on them.
const (
	minGrace     = time.Millisecond
	releaseGrace = 10 * time.Millisecond
)

// reply is one node's answer in a fan-out.
type reply struct {
	node int
	v    interface{}
	err  error // the node's error, or a context error if it was abandoned
}

// nodeErrors joins the errors of replies, naming nodes by index (URLs may
// carry passwords).
func nodeErrors(rs []reply) error {
	var errs []error
	for _, r := range rs {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("node %d: %w", r.node, r.err))
		}
	}
	return errors.Join(errs...)
}

func countErrors(rs []reply) int {
	n := 0
	for _, r := range rs {
		if r.err != nil {
			n++
		}
	}
	return n
}

// allNodes returns the indexes of every node.
func (l *Locker) allNodes() []int {
	ns := make([]int, len(l.nodes))
	for i := range ns {
		ns[i] = i
	}
	return ns
}

// drift is the clock-drift allowance of a lease of ttl.
func (l *Locker) drift(ttl time.Duration) time.Duration {
	return time.Duration(l.driftFactor*float64(ttl)) + l.driftExtra
}

// quorumOf returns the decider of a fan-out to every node that needs a
// quorum of replies for which ok is true.
func (l *Locker) quorumOf(ok func(reply) bool) decider {
	return decider{ok: ok, need: l.quorum, of: len(l.nodes)}
}

func positive(r reply) bool {
	n, err := redis.Int64(r.v, r.err)
	return err == nil && n > 0
}

// Node states during a Redlock acquisition.
const (
	nodeUnknown = iota // error, abandoned, or not asked yet
	nodeGranted        // granted to this owner
	nodeHeld           // held by a live lease of another owner (or this one's own)
)

// Bounds of a split-vote leader's extra rounds: at most maxSplitRetries,
// within TTL/splitBudget and splitRounds times the first round's duration
// (at least minSplitBudget, for the losers' releases to land on a busy
// machine).
const (
	maxSplitRetries = 8
	splitBudget     = 4
	splitRounds     = 20
	minSplitBudget  = 250 * time.Millisecond
)

func granted(r reply) bool {
	t, _, _, err := acquireReply(r.v, r.err)
	return err == nil && t > 0
}

// acquireRedlock runs the Redlock acquisition: acquire.lua on every node at
// once, bounded by the lease's own end. With a quorum of grants, the
// highest token becomes the lease's token, and if the grants disagree,
// fence.lua gives it to every granting node and raises their counters (a
// quorum must confirm). Redlock's validity, the time left, is ttl less the
// time since the first request left and the drift allowance. The lease's
// Validity is counted, as [locker.Lease] says, from the call: ttl less the
// drift, so that a caller counting from its own send time (as
// [locker.Lock] does) gets Redlock's validity without subtracting the
// elapsed time twice. Without a quorum or time left, the attempt is
// released on every node that may have granted it.
//
// Split votes: when contenders split the nodes so that no owner has a
// quorum, the leader — the contender with the most nodes, ties going to
// the one with the lowest-numbered node — keeps its grants and asks again,
// for a few round trips, for the nodes the others release, while the others
// give up. So a race for a free key has a winner, as on a single server.
// A key that another owner holds on a quorum is never waited for. Only
// liveness depends on this; safety rests on the quorum alone.
func (l *Locker) acquireRedlock(ctx context.Context, lk, ck, owner string, ms int64) (locker.Lease, error) {
	ttl := time.Duration(ms) * time.Millisecond
	start := time.Now() // monotonic: taken before the first request leaves
	bound := start.Add(ttl)

	n := len(l.nodes)
	var stateBuf [maxStackNodes]int8
	var tokenBuf [maxStackNodes]int64
	var state []int8
	var tokens []int64
	if n <= maxStackNodes {
		state, tokens = stateBuf[:n], tokenBuf[:n]
	} else {
		state, tokens = make([]int8, n), make([]int64, n)
	}
	var holders []string // made on the first "held" reply

	first := l.fanout(ctx, bound, nil, l.quorumOf(granted), minGrace, acquireScript, lk, ck, owner, ms)
	asked := first // every reply, for cleanup and error reports
	holders = recordAcquire(first, state, tokens, holders)
	if got, held := countStates(state); got < l.quorum && got+held >= l.quorum && l.splitLeader(state, holders) {
		round := time.Since(start)
		budget := min(ttl/splitBudget, max(splitRounds*round, minSplitBudget))
		for try := 0; try < maxSplitRetries; try++ {
			got, _ := countStates(state)
			if got >= l.quorum {
				break
			}
			wait := max(round, 200*time.Microsecond) << min(try, 3)
			if time.Since(start)+wait > budget || !sleepUntil(ctx, bound, wait) {
				break
			}
			var held []int
			for i, x := range state {
				if x == nodeHeld {
					held = append(held, i)
				}
			}
			d := decider{ok: granted, need: l.quorum - got, of: len(held)}
			rs := l.fanout(ctx, bound, held, d, minGrace, acquireScript, lk, ck, owner, ms)
			asked = append(asked[:len(asked):len(asked)], rs...)
			holders = recordAcquire(rs, state, tokens, holders)
			if !l.splitLeader(state, holders) {
				break
			}
		}
	}

	var mineBuf [maxStackNodes]int
	mine := mineBuf[:0]
	var token int64
	agree := true
	for i, x := range state {
		if x != nodeGranted {
			continue
		}
		if len(mine) > 0 && tokens[i] != token {
			agree = false
		}
		token = max(token, tokens[i])
		mine = append(mine, i)
	}
	fenceErr := error(nil)
	if len(mine) >= l.quorum && !agree {
		fs := l.fanout(ctx, bound, mine, decider{ok: positive, need: l.quorum, of: len(mine)}, minGrace, fenceScript, lk, ck, owner, token)
		fenced := 0
		for _, r := range fs {
			if positive(r) {
				fenced++
			}
		}
		if fenced < l.quorum {
			mine = mine[:0] // below quorum: fail below
			if countErrors(fs) >= l.quorum {
				fenceErr = nodeErrors(fs)
			}
		}
	}
	elapsed := time.Since(start)
	left := ttl - elapsed - l.drift(ttl) // Redlock's validity
	if len(mine) >= l.quorum && left > 0 {
		return locker.Lease{Token: token, Validity: ttl - l.drift(ttl)}, nil
	}

	// Release wherever the attempt may have taken the key: every node but
	// those that plainly answered "held by someone else" every time.
	var dirty []int
	seen := make([]bool, n)
	for _, r := range asked {
		if _, _, held, err := acquireReply(r.v, r.err); (err != nil || !held) && !seen[r.node] {
			seen[r.node] = true
			dirty = append(dirty, r.node)
		}
	}
	if len(dirty) > 0 {
		l.cleanupRedlock(ctx, lk, owner, ttl, dirty)
	}
	switch {
	case ctx.Err() != nil:
		return locker.Lease{}, notObtainedCtx(ctx)
	case countErrors(first) >= l.quorum:
		return locker.Lease{}, fmt.Errorf("redislocker: acquire: %d of %d nodes failed or did not answer within the %v TTL: %w",
			countErrors(first), n, ttl, nodeErrors(first))
	case fenceErr != nil:
		return locker.Lease{}, fmt.Errorf("redislocker: acquire: fencing the token on a quorum failed: %w", fenceErr)
	case len(mine) >= l.quorum:
		return locker.Lease{}, fmt.Errorf("redislocker: acquire: a quorum answered after %v, leaving no validity of the %v TTL: %w",
			elapsed.Round(time.Microsecond), ttl, locker.ErrNotObtained)
	}
	return locker.Lease{}, locker.ErrNotObtained
}

// recordAcquire folds acquire.lua replies into the nodes' states, tokens
// and holders (made when first needed), and returns holders.
func recordAcquire(rs []reply, state []int8, tokens []int64, holders []string) []string {
	for _, r := range rs {
		t, holder, held, err := acquireReply(r.v, r.err)
		switch {
		case err != nil:
			if state[r.node] != nodeGranted {
				state[r.node] = nodeUnknown
			}
		case held:
			if holders == nil {
				holders = make([]string, len(state))
			}
			state[r.node], holders[r.node] = nodeHeld, holder
		default:
			state[r.node], tokens[r.node] = nodeGranted, t
		}
	}
	return holders
}

// countStates returns how many nodes granted the attempt and how many are
// held by a live lease.
func countStates(state []int8) (granted, held int) {
	for _, x := range state {
		switch x {
		case nodeGranted:
			granted++
		case nodeHeld:
			held++
		}
	}
	return granted, held
}

// cleanupRedlock releases owner's lease on nodes, best effort, after a
// failed or interrupted acquire: it ignores ctx's cancellation and waits
// at most cleanupTimeout or the lease's TTL.
func (l *Locker) cleanupRedlock(ctx context.Context, lk, owner string, ttl time.Duration, nodes []int) {
	ctx = context.WithoutCancel(ctx)
	never := decider{custom: func([]reply) bool { return false }}
	l.fanout(ctx, time.Now().Add(min(ttl, cleanupTimeout)), nodes, never, 0, releaseScript, lk, owner)
}

// splitLeader reports whether this attempt leads a split vote: no other
// owner holds a quorum of the nodes that answered, and this attempt holds
// more nodes than any other owner, or as many and a lower-numbered one. A
// node grants one owner at a time, so contenders that see the same nodes
// agree on one leader.
func (l *Locker) splitLeader(state []int8, holders []string) bool {
	mine, myFirst := 0, -1
	others := map[string][2]int{} // owner → {nodes, first node}
	for i, x := range state {
		switch x {
		case nodeGranted:
			if mine == 0 {
				myFirst = i
			}
			mine++
		case nodeHeld:
			o, ok := others[holders[i]]
			if !ok {
				o[1] = i
			}
			o[0]++
			others[holders[i]] = o
		}
	}
	if mine == 0 {
		return false
	}
	for _, o := range others {
		if o[0] >= l.quorum || o[0] > mine || (o[0] == mine && o[1] < myFirst) {
			return false
		}
	}
	return true
}

// sleepUntil waits d, unless ctx ends or bound passes first; it reports
// whether d passed.
func sleepUntil(ctx context.Context, bound time.Time, d time.Duration) bool {
	if time.Until(bound) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// refreshRedlock extends owner's lease on every node at once; it needs a
// quorum, in time for some validity to remain. Validity is counted from
// the call, like Acquire's.
func (l *Locker) refreshRedlock(ctx context.Context, lk, owner string, ms int64) (locker.Lease, error) {
	ttl := time.Duration(ms) * time.Millisecond
	start := time.Now()
	rs := l.fanout(ctx, start.Add(ttl), nil, l.quorumOf(positive), minGrace, refreshScript, lk, owner, ms)
	tokens := map[int64]int{}
	ok := 0
	for _, r := range rs {
		if positive(r) {
			t, _ := redis.Int64(r.v, nil)
			tokens[t]++
			ok++
		}
	}
	left := ttl - time.Since(start) - l.drift(ttl)
	if ok >= l.quorum && left > 0 {
		return locker.Lease{Token: commonest(tokens), Validity: ttl - l.drift(ttl)}, nil
	}
	if ctx.Err() != nil {
		return locker.Lease{}, fmt.Errorf("redislocker: refresh: %w", context.Cause(ctx))
	}
	if n := countErrors(rs); n > 0 && ok+n >= l.quorum {
		return locker.Lease{}, fmt.Errorf("redislocker: refresh: %d of %d nodes failed: %w", n, len(l.nodes), nodeErrors(rs))
	}
	return locker.Lease{}, locker.ErrNotHeld
}

// commonest returns the token most nodes reported, the highest on a tie.
func commonest(tokens map[int64]int) int64 {
	var best int64
	for t, n := range tokens {
		if n > tokens[best] || (n == tokens[best] && t > best) {
			best = t
		}
	}
	return best
}

// releaseRedlock deletes owner's lease on every node at once.
func (l *Locker) releaseRedlock(ctx context.Context, lk, owner string) error {
	rs := l.fanout(ctx, time.Time{}, nil, l.quorumOf(positive), releaseGrace, releaseScript, lk, owner)
	ok := 0
	for _, r := range rs {
		if positive(r) {
			ok++
		}
	}
	if ok >= l.quorum {
		return nil
	}
	if n := countErrors(rs); n > 0 && ok+n >= l.quorum {
		if ctx.Err() != nil {
			return fmt.Errorf("redislocker: release: %w", context.Cause(ctx))
		}
		return fmt.Errorf("redislocker: release: %d of %d nodes failed: %w", n, len(l.nodes), nodeErrors(rs))
	}
	return locker.ErrNotHeld
}

// inspectRedlock reports the lease a quorum of nodes agrees on.
func (l *Locker) inspectRedlock(ctx context.Context, key, lk string) (locker.Info, error) {
	n := len(l.nodes)
	type vote struct {
		owner string
		token int64
	}
	tally := func(rs []reply) (map[vote][]int64, int) {
		m := map[vote][]int64{}
		errs := 0
		for _, r := range rs {
			h, err := parseHolder(r.v, r.err)
			if err != nil {
				errs++
				continue
			}
			if h.owner != "" {
				v := vote{h.owner, h.token}
				m[v] = append(m[v], h.pttl)
			}
		}
		return m, errs
	}
	decided := func(rs []reply) bool {
		m, _ := tally(rs)
		best := 0
		for _, ttls := range m {
			best = max(best, len(ttls))
		}
		return best >= l.quorum || best+n-len(rs) < l.quorum
	}
	rs := l.fanout(ctx, time.Time{}, nil, decider{custom: decided}, minGrace, inspectScript, lk)
	m, errs := tally(rs)
	best := 0
	for v, ttls := range m {
		if len(ttls) < l.quorum {
			continue
		}
		// The lease stands until fewer than a quorum hold it: the
		// quorum-th longest remaining time.
		sort.Slice(ttls, func(i, j int) bool { return ttls[i] > ttls[j] })
		return locker.Info{Key: key, Owner: v.owner, Token: v.token, TTL: time.Duration(ttls[l.quorum-1]) * time.Millisecond}, nil
	}
	for _, ttls := range m {
		best = max(best, len(ttls))
	}
	if errs > 0 && best+errs >= l.quorum {
		if ctx.Err() != nil {
			return locker.Info{}, fmt.Errorf("redislocker: inspect: %w", context.Cause(ctx))
		}
		return locker.Info{}, fmt.Errorf("redislocker: inspect: %d of %d nodes failed: %w", errs, n, nodeErrors(rs))
	}
	return locker.Info{Key: key}, nil
}

// String describes the Locker without secrets, e.g.
// "redislocker(prefix=distributed-locks, redlock 2/3)".
func (l *Locker) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "redislocker(prefix=%s", l.prefix)
	if l.redlock {
		fmt.Fprintf(&b, ", redlock %d/%d", l.quorum, len(l.nodes))
	}
	b.WriteString(")")
	return b.String()
}

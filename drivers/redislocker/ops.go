package redislocker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/locker"
)

// cleanupTimeout bounds the best-effort release after a failed or
// interrupted acquire.
const cleanupTimeout = time.Second

// lockKey returns the Redis key of key's lock; its token counter is the
// same key followed by ":token".
func (l *Locker) lockKey(key string) string {
	return l.prefix + ":{" + key + "}"
}

// lockKeys returns the Redis keys of key's lock and token counter, built
// with one allocation.
func (l *Locker) lockKeys(key string) (lock, counter string) {
	counter = l.prefix + ":{" + key + "}:token"
	return counter[:len(counter)-len(":token")], counter
}

// script is a Lua script from scripts/lua, evaluated with EVALSHA and,
// when the server does not know it yet, EVAL.
type script struct {
	*redis.Script
	keys int
	src  string
}

func newScript(keys int, src string) *script {
	return &script{Script: redis.NewScript(keys, src), keys: keys, src: src}
}

// run evaluates s on a connection from p, watching ctx through redigo's
// DoContext (a goroutine per call) when ctx can be cancelled, so that a
// cancellation interrupts a request in flight at once. sent reports
// whether the command may have reached the server (a connection was
// obtained), so that the caller knows whether an error can hide an effect.
func run(ctx context.Context, p Pool, s *script, args ...interface{}) (v interface{}, sent bool, err error) {
	c, err := p.GetContext(ctx)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	if ctx.Done() == nil {
		// No cancellation to watch: skip the goroutine DoContext spends.
		v, err = s.Do(c, args...)
	} else {
		v, err = s.DoContext(ctx, c, args...)
	}
	return v, true, ctxError(ctx, err)
}

// errTimeoutNotSupported is redigo's (unexported) error for a connection
// without read timeouts.
const errTimeoutNotSupported = "redis: connection does not support ConnWithTimeout"

// runQuick is run for the single-server hot path (acquire and release),
// without DoContext's goroutine: with no Done channel the command runs
// plainly, and when ctx has a deadline, the time left becomes the read
// timeout of the connection, which ends the request at the deadline as
// DoContext would. A cancellation before the deadline then takes effect
// when the reply arrives or the deadline passes, not at once. A ctx that
// can be cancelled but has no deadline goes through run.
func runQuick(ctx context.Context, p Pool, s *script, args ...interface{}) (v interface{}, sent bool, err error) {
	deadline, timed := ctx.Deadline()
	if ctx.Done() != nil && !timed {
		return run(ctx, p, s, args...)
	}
	c, err := p.GetContext(ctx)
	if err != nil {
		return nil, false, err
	}
	defer c.Close()
	var timeout time.Duration
	if timed {
		if timeout = time.Until(deadline); timeout <= 0 {
			return nil, false, context.DeadlineExceeded
		}
	}
	full := make([]interface{}, 2+len(args))
	full[0], full[1] = s.Hash(), s.keys
	copy(full[2:], args)
	v, err = doTimeout(ctx, c, timed, timeout, "EVALSHA", full)
	if e, ok := err.(redis.Error); ok && strings.HasPrefix(string(e), "NOSCRIPT ") {
		full[0] = s.src
		v, err = doTimeout(ctx, c, timed, timeout, "EVAL", full)
	}
	return v, true, ctxError(ctx, err)
}

// ctxError adds ctx's error to err when ctx ended the request: ctx is done,
// or the read timed out at ctx's deadline, which ctx's own timer may not
// have marked yet.
func ctxError(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		if !errors.Is(err, ctx.Err()) {
			err = errors.Join(context.Cause(ctx), err)
		}
		return err
	}
	var ne net.Error
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) && errors.As(err, &ne) && ne.Timeout() {
		return errors.Join(context.DeadlineExceeded, err)
	}
	return err
}

func doTimeout(ctx context.Context, c redis.Conn, timed bool, timeout time.Duration, cmd string, args []interface{}) (interface{}, error) {
	if !timed {
		return c.Do(cmd, args...)
	}
	v, err := redis.DoWithTimeout(c, timeout, cmd, args...)
	if err != nil && err.Error() == errTimeoutNotSupported {
		return redis.DoContext(c, ctx, cmd, args...)
	}
	return v, err
}

// ttlMillis converts a validated ttl to the whole milliseconds sent to Redis.
func ttlMillis(ttl time.Duration) int64 { return ttl.Milliseconds() }

// notObtainedCtx is the error of an acquire cut short by its context: it
// matches both ErrNotObtained and the context's error.
func notObtainedCtx(ctx context.Context) error {
	return fmt.Errorf("redislocker: acquire: %w", errors.Join(locker.ErrNotObtained, context.Cause(ctx)))
}

// Acquire makes one attempt to take key for owner for ttl (whole
// milliseconds; the storage's clock decides expiry) and returns the lease:
// its fencing token and validity, counted from the call (see
// [locker.Lease]). On a single server the validity is the TTL; on Redlock
// it is the TTL less the drift allowance, and the time the quorum took has
// already been spent out of it.
//
// Acquire returns [locker.ErrNotObtained] when a live lease holds key (the
// owner's own included) or, on Redlock, when no quorum granted it in time;
// an error matching both ErrNotObtained and the context's error when ctx
// ends first; and a wrapped backend error (never ErrNotObtained) when the
// server, or a Redlock majority, failed. A failed attempt leaves nothing
// held, as far as the servers can be reached.
func (l *Locker) Acquire(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if ctx.Err() != nil {
		return locker.Lease{}, notObtainedCtx(ctx)
	}
	lk, ck := l.lockKeys(key)
	ms := ttlMillis(ttl)
	if l.redlock {
		return l.acquireRedlock(ctx, lk, ck, owner, ms)
	}
	v, sent, err := runQuick(ctx, l.nodes[0], acquireScript, lk, ck, owner, ms)
	if err != nil {
		if sent {
			// The script may have run before the reply was lost.
			l.cleanup(ctx, lk, owner, ms, l.nodes)
		}
		if ctx.Err() != nil {
			return locker.Lease{}, notObtainedCtx(ctx)
		}
		return locker.Lease{}, fmt.Errorf("redislocker: acquire: %w", err)
	}
	switch v := v.(type) {
	case int64:
		if v >= 1 {
			return locker.Lease{Token: v, Validity: time.Duration(ms) * time.Millisecond}, nil
		}
	case []byte: // the holder's owner
		return locker.Lease{}, locker.ErrNotObtained
	}
	return locker.Lease{}, fmt.Errorf("redislocker: acquire: unexpected reply %v from acquire.lua", v)
}

// acquireReply interprets acquire.lua's reply: a token when granted, else
// the holder's owner (held true), or an error.
func acquireReply(v interface{}, err error) (token int64, holder string, held bool, _ error) {
	if err != nil {
		return 0, "", false, err
	}
	switch v := v.(type) {
	case int64:
		if v >= 1 {
			return v, "", false, nil
		}
	case []byte:
		return 0, string(v), true, nil
	}
	return 0, "", false, fmt.Errorf("unexpected reply %v from acquire.lua", v)
}

// Refresh extends owner's live lease on key to ttl from now (storage clock),
// keeping its token, and returns the renewed lease, its validity counted
// from the call as Acquire's. It returns [locker.ErrNotHeld]
// when owner holds no live lease on key (on Redlock: not on a quorum in
// time), and a wrapped backend error when the server, or a Redlock
// majority, failed.
func (l *Locker) Refresh(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, fmt.Errorf("redislocker: refresh: %w", context.Cause(ctx))
	}
	lk := l.lockKey(key)
	ms := ttlMillis(ttl)
	if l.redlock {
		return l.refreshRedlock(ctx, lk, owner, ms)
	}
	v, _, err := run(ctx, l.nodes[0], refreshScript, lk, owner, ms)
	token, err := redis.Int64(v, err)
	if err != nil {
		return locker.Lease{}, fmt.Errorf("redislocker: refresh: %w", err)
	}
	if token == 0 {
		return locker.Lease{}, locker.ErrNotHeld
	}
	return locker.Lease{Token: token, Validity: time.Duration(ms) * time.Millisecond}, nil
}

// Transfer gives key, held by from, to owner to for ttl (whole
// milliseconds, from now by the server's clock) with a new fencing token,
// strictly greater than every token handed out for key before, in one
// script run: the key is never free, and no release is published to
// waiters. The lease's validity is counted from the call, as Acquire's.
//
// Transfer returns [locker.ErrNotHeld], changing nothing, when from holds
// no live lease on key; [locker.ErrInvalidKey] or
// [locker.ErrInvalidOption] for bad arguments, before any I/O; an error
// matching [errors.ErrUnsupported], before any I/O, on Redlock (a
// transfer would need a quorum of its own, and a failed one would leave
// the key split between two owners); and a wrapped backend error when the
// server failed, after a best-effort release of to's lease in case the
// script ran, so that key is then held by from or by no one.
func (l *Locker) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, to, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := locker.CheckOwner(key, from); err != nil {
		return locker.Lease{}, err
	}
	if l.redlock {
		return locker.Lease{}, fmt.Errorf("redislocker: transfer on Redlock: %w", errors.ErrUnsupported)
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, fmt.Errorf("redislocker: transfer: %w", context.Cause(ctx))
	}
	lk, ck := l.lockKeys(key)
	ms := ttlMillis(ttl)
	v, sent, err := runQuick(ctx, l.nodes[0], transferScript, lk, ck, from, to, ms)
	token, err := redis.Int64(v, err)
	if err != nil {
		if sent {
			// The script may have run before the reply was lost.
			l.cleanup(ctx, lk, to, ms, l.nodes)
		}
		return locker.Lease{}, fmt.Errorf("redislocker: transfer: %w", err)
	}
	if token == 0 {
		return locker.Lease{}, locker.ErrNotHeld
	}
	return locker.Lease{Token: token, Validity: time.Duration(ms) * time.Millisecond}, nil
}

// Release frees key if owner holds a live lease on it. It returns
// [locker.ErrNotHeld], changing nothing, when owner holds none (never
// locked, released already, expired, or taken over), and a wrapped backend
// error when the server failed. On Redlock it deletes owner's lease on
// every node it can reach, returns nil when a quorum still held it, and
// returns a backend error when too many nodes failed to tell.
func (l *Locker) Release(ctx context.Context, key, owner string) error {
	if err := locker.CheckOwner(key, owner); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("redislocker: release: %w", context.Cause(ctx))
	}
	lk := l.lockKey(key)
	if l.redlock {
		return l.releaseRedlock(ctx, lk, owner)
	}
	v, _, err := runQuick(ctx, l.nodes[0], releaseScript, lk, owner)
	n, err := redis.Int64(v, err)
	if err != nil {
		return fmt.Errorf("redislocker: release: %w", err)
	}
	if n == 0 {
		return locker.ErrNotHeld
	}
	return nil
}

// Inspect reports who holds key: its owner, fencing token and remaining
// TTL by the server's clock. A free key yields Info{Key: key} and a nil
// error. On Redlock it reports the lease a quorum of nodes agrees on
// (TTL: until fewer than a quorum would still hold it). It returns a
// wrapped backend error when the server, or too many Redlock nodes to
// tell, failed.
func (l *Locker) Inspect(ctx context.Context, key string) (locker.Info, error) {
	if err := locker.ValidateKey(key); err != nil {
		return locker.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Info{}, fmt.Errorf("redislocker: inspect: %w", context.Cause(ctx))
	}
	lk := l.lockKey(key)
	if l.redlock {
		return l.inspectRedlock(ctx, key, lk)
	}
	v, _, err := run(ctx, l.nodes[0], inspectScript, lk)
	h, err := parseHolder(v, err)
	if err != nil {
		return locker.Info{}, fmt.Errorf("redislocker: inspect: %w", err)
	}
	return h.info(key), nil
}

// holder is one node's answer to inspect.lua.
type holder struct {
	owner string
	token int64
	pttl  int64
}

func (h holder) info(key string) locker.Info {
	if h.owner == "" {
		return locker.Info{Key: key}
	}
	return locker.Info{Key: key, Owner: h.owner, Token: h.token, TTL: time.Duration(h.pttl) * time.Millisecond}
}

func parseHolder(v interface{}, err error) (holder, error) {
	vs, err := redis.Values(v, err)
	if err != nil {
		return holder{}, err
	}
	if len(vs) == 0 {
		return holder{}, nil
	}
	var h holder
	if _, err := redis.Scan(vs, &h.owner, &h.token, &h.pttl); err != nil {
		return holder{}, fmt.Errorf("unexpected reply from inspect.lua: %w", err)
	}
	if h.pttl < 0 {
		// -1: someone removed the expiry; the lease then lasts until deleted.
		h.pttl = 0
	}
	return h, nil
}

// cleanup releases owner's lease on nodes, best effort: after a failed or
// interrupted acquire, so that nothing stays held. It ignores ctx's
// cancellation and waits at most cleanupTimeout or the lease's TTL.
func (l *Locker) cleanup(ctx context.Context, lk, owner string, ms int64, nodes []Pool) {
	d := time.Duration(ms) * time.Millisecond
	if d > cleanupTimeout {
		d = cleanupTimeout
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	defer cancel()
	if len(nodes) == 1 {
		_, _, _ = runQuick(ctx, nodes[0], releaseScript, lk, owner)
		return
	}
	done := make(chan struct{}, len(nodes))
	for _, p := range nodes {
		go func() {
			_, _, _ = run(ctx, p, releaseScript, lk, owner)
			done <- struct{}{}
		}()
	}
	for range nodes {
		<-done
	}
}

package redislocker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"reflect"
	"strings"
	"sync"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/scripts/lua"
)

// DefaultPrefix is the key prefix used when no [Prefix] option is given.
const DefaultPrefix = "distributed-locks"

// Default clock-drift allowance of a Redlock lease: DefaultDriftFactor × TTL
// plus DefaultDriftExtra. See [Drift].
const (
	DefaultDriftFactor = 0.01
	DefaultDriftExtra  = 2 * time.Millisecond
)

// maxPrefixLen bounds the key prefix, in bytes.
const maxPrefixLen = 256

// Pool is the part of a redigo connection pool the driver uses.
// *redis.Pool satisfies it. Every connection it hands out must support
// contexts (redis.ConnWithContext), as redigo's own connections do.
type Pool interface {
	GetContext(ctx context.Context) (redis.Conn, error)
}

var (
	acquireScript  = newScript(2, lua.Acquire)
	refreshScript  = newScript(1, lua.Refresh)
	releaseScript  = newScript(1, lua.Release)
	inspectScript  = newScript(1, lua.Inspect)
	fenceScript    = newScript(2, lua.Fence)
	transferScript = newScript(2, lua.Transfer)
)

// Locker is a [locker.Locker] on one Redis server ([New], [Open]) or on a
// Redlock group of independent servers ([NewRedlock], [OpenRedlock]).
// It is a [locker.Transferer] on one server only: on Redlock, Transfer
// reports errors.ErrUnsupported. It is safe for concurrent use.
type Locker struct {
	nodes   []Pool
	health  []nodeHealth // per node: Redlock reads suspect nodes last
	redlock bool
	quorum  int
	prefix  string

	driftFactor float64
	driftExtra  time.Duration

	dials    []DialFunc // from the Subscriber option
	dialsSet bool
	subs     []*subscriber // per node; nil entries cannot dial

	closers   []io.Closer
	closeOnce sync.Once
	closeErr  error
}

var (
	_ locker.Locker     = (*Locker)(nil)
	_ locker.Transferer = (*Locker)(nil)
)

// Option configures a [Locker]. Options are applied in order; an invalid
// one makes the constructor return an error matching
// [locker.ErrInvalidOption].
type Option func(*Locker) error

// Prefix sets the prefix of every Redis key the Locker touches; the default
// is [DefaultPrefix]. Lockers with different prefixes never interfere.
// A prefix must be 1 to 256 bytes of printable UTF-8 without spaces,
// quotes, backslashes or braces (braces would change the Redis Cluster hash
// slot and let two prefixes collide).
func Prefix(p string) Option {
	return func(l *Locker) error {
		if err := validatePrefix(p); err != nil {
			return err
		}
		l.prefix = p
		return nil
	}
}

func validatePrefix(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("redislocker: %w: empty prefix", locker.ErrInvalidOption)
	case len(p) > maxPrefixLen:
		return fmt.Errorf("redislocker: %w: prefix of %d bytes, the limit is %d", locker.ErrInvalidOption, len(p), maxPrefixLen)
	case !utf8.ValidString(p):
		return fmt.Errorf("redislocker: %w: prefix is not valid UTF-8", locker.ErrInvalidOption)
	}
	for _, r := range p {
		if unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(`{}"'\`+"`", r) {
			return fmt.Errorf("redislocker: %w: prefix %q contains %q", locker.ErrInvalidOption, p, r)
		}
	}
	return nil
}

// Drift sets the clock-drift allowance a Redlock lease loses: factor × TTL
// plus extra. The default is 0.01 × TTL + 2ms, the Redlock algorithm's
// suggestion (the 2ms cover Redis's millisecond expiry resolution). factor
// must be in [0, 1) and extra non-negative. A single-node Locker ignores it:
// its lease's validity is the TTL.
func Drift(factor float64, extra time.Duration) Option {
	return func(l *Locker) error {
		if !(factor >= 0 && factor < 1) || extra < 0 {
			return fmt.Errorf("redislocker: %w: drift factor %v must be in [0, 1) and extra %v non-negative", locker.ErrInvalidOption, factor, extra)
		}
		l.driftFactor, l.driftExtra = factor, extra
		return nil
	}
}

// New returns a Locker on the single Redis server behind pool. The pool
// stays the caller's: the Locker never closes it and changes no setting on
// its connections. New returns an error matching [locker.ErrInvalidOption]
// for a nil pool or an invalid option; it does no I/O.
func New(pool Pool, opts ...Option) (*Locker, error) {
	return newLocker([]Pool{pool}, false, opts)
}

// NewRedlock returns a Locker that runs the Redlock algorithm over the
// independent Redis servers behind pools (three or five are usual; they must
// not be replicas of one another). A lease needs a majority, len(pools)/2+1,
// of them. The pools stay the caller's. NewRedlock returns an error matching
// [locker.ErrInvalidOption] for no pools, a nil pool or an invalid option.
func NewRedlock(pools []Pool, opts ...Option) (*Locker, error) {
	if len(pools) == 0 {
		return nil, fmt.Errorf("redislocker: %w: no pools", locker.ErrInvalidOption)
	}
	return newLocker(append([]Pool(nil), pools...), true, opts)
}

func newLocker(pools []Pool, redlock bool, opts []Option) (*Locker, error) {
	for i, p := range pools {
		if isNil(p) {
			return nil, fmt.Errorf("redislocker: %w: pool %d is nil", locker.ErrInvalidOption, i)
		}
	}
	l := &Locker{
		nodes:       pools,
		health:      make([]nodeHealth, len(pools)),
		redlock:     redlock,
		quorum:      len(pools)/2 + 1,
		prefix:      DefaultPrefix,
		driftFactor: DefaultDriftFactor,
		driftExtra:  DefaultDriftExtra,
	}
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(l); err != nil {
			return nil, err
		}
	}
	if err := l.setupSubscribers(); err != nil {
		return nil, err
	}
	return l, nil
}

func isNil(p Pool) bool {
	if p == nil {
		return true
	}
	v := reflect.ValueOf(p)
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan:
		return v.IsNil()
	}
	return false
}

// Open returns a Locker on the Redis server at rawURL, with a connection
// pool of its own that [Locker.Close] closes. The URL has the form
// redis://[[user]:password@]host[:port][/db] (TLS with rediss://; the
// server's certificate is checked against the system's roots). Open does no
// I/O; a malformed URL or an invalid option is an error matching
// [locker.ErrInvalidOption]. For other TLS settings or pool sizes, build a
// *redis.Pool and use [New].
func Open(rawURL string, opts ...Option) (*Locker, error) {
	return open([]string{rawURL}, false, opts)
}

// OpenRedlock returns a Redlock Locker over the independent Redis servers
// at urls (see [Open] for the URL form), each with a connection pool of its
// own that [Locker.Close] closes. A malformed URL, no URLs or an invalid
// option is an error matching [locker.ErrInvalidOption].
func OpenRedlock(urls []string, opts ...Option) (*Locker, error) {
	if len(urls) == 0 {
		return nil, fmt.Errorf("redislocker: %w: no URLs", locker.ErrInvalidOption)
	}
	return open(urls, true, opts)
}

func open(urls []string, redlock bool, opts []Option) (*Locker, error) {
	pools := make([]Pool, len(urls))
	closers := make([]io.Closer, len(urls))
	for i, u := range urls {
		p, err := newPool(u)
		if err != nil {
			return nil, err
		}
		pools[i], closers[i] = p, p
	}
	l, err := newLocker(pools, redlock, opts)
	if err != nil {
		return nil, err
	}
	l.closers = closers
	return l, nil
}

// newPool returns a pool dialling rawURL. It checks the URL's form only.
func newPool(rawURL string) (*redis.Pool, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse quotes the whole URL, password included.
		return nil, fmt.Errorf("redislocker: %w: malformed URL", locker.ErrInvalidOption)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return nil, fmt.Errorf("redislocker: %w: URL scheme %q, want redis or rediss", locker.ErrInvalidOption, u.Scheme)
	}
	if u.Opaque != "" || u.Host == "" {
		// Without a host, Redacted cannot tell a password apart: name none.
		return nil, fmt.Errorf("redislocker: %w: URL has no host; want %s://[[user]:password@]host[:port][/db]", locker.ErrInvalidOption, u.Scheme)
	}
	if db := strings.Trim(u.Path, "/"); db != "" {
		if n := strings.TrimLeft(db, "0123456789"); n != "" || len(db) > 9 {
			return nil, fmt.Errorf("redislocker: %w: URL %q: database %q is not a number", locker.ErrInvalidOption, u.Redacted(), db)
		}
	}
	return &redis.Pool{
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialURLContext(ctx, rawURL,
				redis.DialConnectTimeout(5*time.Second),
				redis.DialReadTimeout(10*time.Second),
				redis.DialWriteTimeout(10*time.Second))
		},
		MaxIdle:     32,
		IdleTimeout: 4 * time.Minute,
		TestOnBorrowContext: func(ctx context.Context, c redis.Conn, idleSince time.Time) error {
			if time.Since(idleSince) < time.Minute {
				return nil
			}
			_, err := redis.DoContext(c, ctx, "PING")
			return err
		},
	}, nil
}

// Close ends the Locker's subscription connections (see [Locker.Watch]),
// waiting until their goroutines have exited, and closes the connection
// pools that [Open] or [OpenRedlock] opened; it returns the first error.
// The pools of a Locker from [New] or [NewRedlock] belong to the caller and
// stay open, but Close such a Locker too once it is no longer used if it
// ever watched a key. Close is idempotent. After Close, Watch fails, and
// on a Locker from Open or OpenRedlock so does every other call, with a
// backend error.
func (l *Locker) Close() error {
	l.closeOnce.Do(func() {
		for _, s := range l.subs {
			if s != nil {
				s.close()
			}
		}
		var errs []error
		for _, c := range l.closers {
			if err := c.Close(); err != nil {
				errs = append(errs, err)
			}
		}
		if len(errs) > 0 {
			l.closeErr = fmt.Errorf("redislocker: close: %w", errors.Join(errs...))
		}
	})
	return l.closeErr
}

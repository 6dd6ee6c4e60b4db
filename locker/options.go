package locker

import (
	"fmt"
	"math"
	"time"
)

// Defaults, the npm package's made exact.
const (
	DefaultTTL      = 10 * time.Second
	DefaultRetries  = 3
	DefaultInterval = time.Second
)

// Unlimited, passed to [Retries], keeps retrying until the context ends.
const Unlimited = math.MaxInt

// An Option configures a [Factory] (defaults for every lock it makes), a
// [Lock] (defaults for that handle) or a single Lock, TryLock or Refresh
// call; later options override earlier ones. Options tell "not set" from
// zero: Retries(0) means a single attempt, not the default.
//
// An option with a value out of range makes the call that receives it fail
// with an error matching [ErrInvalidOption], before any I/O.
type Option func(*config)

type config struct {
	ttl         time.Duration
	retries     int
	interval    time.Duration
	backoff     Backoff
	autoRefresh time.Duration // 0: off
	handoff     int
	observer    func(Event)
	err         error
}

func defaultConfig() config {
	return config{ttl: DefaultTTL, retries: DefaultRetries, interval: DefaultInterval, handoff: DefaultHandoff}
}

func (c *config) apply(opts []Option) error {
	for _, o := range opts {
		if o != nil {
			o(c)
		}
	}
	return c.err
}

func (c *config) fail(format string, args ...any) {
	if c.err == nil {
		c.err = fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...)
	}
}

// TTL sets the lease length (default 10s), measured by the storage's clock
// with millisecond precision. It must be at least [MinTTL].
func TTL(d time.Duration) Option {
	return func(c *config) {
		if err := ValidateTTL(d); err != nil {
			c.fail("ttl %v is under the minimum of %v", d, MinTTL)
			return
		}
		c.ttl = d
	}
}

// Retries sets how many further attempts Lock makes after the first fails
// (default 3, so at most 4 attempts). Retries(0) makes exactly one attempt;
// Retries([Unlimited]) retries until the context ends. Negative is invalid.
func Retries(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.fail("retries %d is negative", n)
			return
		}
		c.retries = n
	}
}

// Interval sets a fixed wait between attempts (default 1s) and replaces any
// [WithBackoff] policy. There is no wait after the last failed attempt.
// Negative is invalid; zero retries at once.
func Interval(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.fail("interval %v is negative", d)
			return
		}
		c.interval, c.backoff = d, nil
	}
}

// WithBackoff sets the policy that decides the wait before each retry,
// replacing the fixed [Interval]. A nil policy is invalid.
func WithBackoff(b Backoff) Option {
	return func(c *config) {
		if b == nil {
			c.fail("nil backoff")
			return
		}
		c.backoff = b
	}
}

// AutoRefresh keeps a held lock alive in the background: every third of its
// TTL the lock is refreshed, until Unlock or until the lease is lost. Without
// it a lease simply ends after its TTL unless [Lock.Refresh] is called.
func AutoRefresh() Option {
	return func(c *config) { c.autoRefresh = -1 }
}

// AutoRefreshEvery is [AutoRefresh] with an explicit period, which must be
// positive and shorter than the TTL in force when the lock is taken.
func AutoRefreshEvery(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.fail("auto-refresh period %v is not positive", d)
			return
		}
		c.autoRefresh = d
	}
}

// Observe registers fn to be called for every [Event] of the locks it
// applies to: acquired, contended, refreshed, released, lost. fn runs
// synchronously on the goroutine that caused the event and must not block.
// A second Observe replaces the first; nil removes it.
func Observe(fn func(Event)) Option {
	return func(c *config) { c.observer = fn }
}

func (c *config) refreshPeriod() time.Duration {
	switch {
	case c.autoRefresh < 0:
		return c.ttl / 3
	case c.autoRefresh > 0:
		return c.autoRefresh
	}
	return 0
}

func (c *config) check() error {
	if c.err != nil {
		return c.err
	}
	if c.autoRefresh > 0 && c.autoRefresh >= c.ttl {
		return fmt.Errorf("%w: auto-refresh period %v is not shorter than the ttl %v", ErrInvalidOption, c.autoRefresh, c.ttl)
	}
	return nil
}

func (c *config) delay(retry int) time.Duration {
	if c.backoff != nil {
		if d := c.backoff.NextBackoff(retry); d > 0 {
			return d
		}
		return 0
	}
	return c.interval
}

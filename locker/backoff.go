package locker

import (
	"math"
	"math/rand/v2"
	"time"
)

// Backoff decides how long Lock waits before a retry. NextBackoff is called
// with retry = 1 before the first retry, 2 before the second, and so on. It
// must be safe for concurrent use.
type Backoff interface {
	NextBackoff(retry int) time.Duration
}

// BackoffFunc adapts a function to [Backoff].
type BackoffFunc func(retry int) time.Duration

// NextBackoff returns f(retry).
func (f BackoffFunc) NextBackoff(retry int) time.Duration { return f(retry) }

// ExponentialBackoff waits a random time in [0, min(Max, Min·2^(retry-1))]
// ("full jitter"), which spreads contending clients apart. Max ≤ 0 means no cap.
type ExponentialBackoff struct {
	Min, Max time.Duration
}

// NextBackoff returns the wait before the given retry.
func (b ExponentialBackoff) NextBackoff(retry int) time.Duration {
	if b.Min <= 0 {
		return 0
	}
	ceil := b.Min
	for i := 1; i < retry; i++ {
		if b.Max > 0 && ceil >= b.Max || ceil > time.Duration(1<<62)/2 {
			break
		}
		ceil *= 2
	}
	if b.Max > 0 && ceil > b.Max {
		ceil = b.Max
	}
	return time.Duration(rand.Uint64N(uint64(ceil) + 1)) // no overflow at MaxInt64
}

// Jitter returns a Backoff that waits d plus or minus up to frac·d (frac is
// capped at 1), chosen at random, so that waiters polling a key do not move
// in lock step.
func Jitter(d time.Duration, frac float64) Backoff {
	return BackoffFunc(func(int) time.Duration {
		if d <= 0 || !(frac > 0) {
			return d
		}
		span := d
		if f := float64(d) * frac; f < float64(d) {
			span = time.Duration(f)
		}
		if span <= 0 {
			return d
		}
		// In uint64, where d+span cannot overflow.
		v := uint64(d-span) + rand.Uint64N(2*uint64(span)+1)
		return time.Duration(min(v, uint64(math.MaxInt64)))
	})
}

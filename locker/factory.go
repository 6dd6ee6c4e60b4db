package locker

import (
	"context"
	"errors"
	"fmt"
)

// Factory makes [Lock] handles over one [Locker] (the npm package's
// LockFactory). It holds no connections of its own and is safe for
// concurrent use.
type Factory struct {
	locker Locker
	cfg    config
	waits  *waitlist // Lock calls waiting for a hand-off; nil unless locker is a Transferer
}

// NewFactory returns a Factory over l. opts become the defaults of every lock
// it makes. It returns an error matching [ErrInvalidOption] if l is nil or an
// option is out of range.
func NewFactory(l Locker, opts ...Option) (*Factory, error) {
	if l == nil {
		return nil, fmt.Errorf("%w: nil Locker", ErrInvalidOption)
	}
	cfg := defaultConfig()
	if err := cfg.apply(opts); err != nil {
		return nil, err
	}
	if err := cfg.check(); err != nil {
		return nil, err
	}
	f := &Factory{locker: l, cfg: cfg}
	if _, ok := l.(Transferer); ok {
		f.waits = newWaitlist()
	}
	return f, nil
}

// Locker returns the storage the factory was made with.
func (f *Factory) Locker() Locker { return f.locker }

// NewLock returns a handle on the critical section named key (the npm
// package's createLock). It does no I/O; an invalid key or option is
// reported by the handle's Lock, TryLock and Refresh.
func (f *Factory) NewLock(key string, opts ...Option) *Lock {
	l := &Lock{locker: f.locker, key: key, cfg: f.cfg, waits: f.waits}
	if err := ValidateKey(key); err != nil {
		l.err = err
	} else if err := l.cfg.apply(opts); err != nil {
		l.err = err
	}
	return l
}

// Do runs fn while holding the lock on key: it waits for the lock as Lock
// does, keeps it alive with [AutoRefresh] (unless opts set another period)
// while fn runs, and releases it when fn returns or panics.
//
// fn's context is derived from ctx and is cancelled, with a cause matching
// [ErrLost], if the lease is lost; fn should stop promptly when it is.
//
// Do returns the error of Lock if the lock was not obtained (matching
// [ErrNotObtained] when it was held elsewhere). Otherwise it returns fn's
// error, joined with the loss cause if the lease was lost and with the
// release error if Unlock failed.
func (f *Factory) Do(ctx context.Context, key string, fn func(ctx context.Context) error, opts ...Option) (err error) {
	if fn == nil {
		return fmt.Errorf("%w: nil function", ErrInvalidOption)
	}
	l := f.NewLock(key, append([]Option{AutoRefresh()}, opts...)...)
	if err := l.lock(ctx, ctx, nil); err != nil {
		return err
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.cfg.ttl)
		defer cancel()
		if uerr := l.Unlock(uctx); uerr != nil {
			err = errors.Join(err, uerr)
		}
	}()
	return fn(l.Context())
}

// Package memlocker is dlock's in-process reference driver: a [locker.Locker]
// kept in memory, with expiry on Go's monotonic clock.
//
// It gives every guarantee of the contract, but only within one process: it
// is meant for tests, examples and local development, never for replicas.
package memlocker

import (
	"context"
	"sync"
	"time"

	"github.com/dlock-go/dlock/locker"
)

// Locker is an in-memory [locker.Locker]. The zero value is not usable; call
// [New]. It is safe for concurrent use.
type Locker struct {
	mu     sync.Mutex
	leases map[string]record
	tokens map[string]int64 // last token per key; survives release and purge
	watch  map[string]map[chan struct{}]struct{}
}

type record struct {
	owner   string
	token   int64
	expires time.Time
}

var (
	_ locker.Locker     = (*Locker)(nil)
	_ locker.Purger     = (*Locker)(nil)
	_ locker.Watcher    = (*Locker)(nil)
	_ locker.Transferer = (*Locker)(nil)
)

// New returns an empty in-memory Locker.
func New() *Locker {
	return &Locker{leases: map[string]record{}, tokens: map[string]int64{}, watch: map[string]map[chan struct{}]struct{}{}}
}

func (m *Locker) live(key string, now time.Time) (record, bool) {
	r, ok := m.leases[key]
	return r, ok && now.Before(r.expires)
}

// Acquire takes key for owner if it is free or expired. It returns
// [locker.ErrNotObtained] if another lease on key is live.
func (m *Locker) Acquire(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if _, ok := m.live(key, now); ok {
		return locker.Lease{}, locker.ErrNotObtained
	}
	m.tokens[key]++
	r := record{owner: owner, token: m.tokens[key], expires: now.Add(ttl.Truncate(time.Millisecond))}
	m.leases[key] = r
	return locker.Lease{Token: r.token, Validity: ttl}, nil
}

// Refresh extends owner's live lease on key to ttl from now. It returns
// [locker.ErrNotHeld] if owner holds no live lease on key.
func (m *Locker) Refresh(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	r, ok := m.live(key, now)
	if !ok || r.owner != owner {
		return locker.Lease{}, locker.ErrNotHeld
	}
	r.expires = now.Add(ttl.Truncate(time.Millisecond))
	m.leases[key] = r
	return locker.Lease{Token: r.token, Validity: ttl}, nil
}

// Transfer gives from's live lease on key to owner to for ttl from now, with
// a new token. It returns [locker.ErrNotHeld], changing nothing, if from
// holds no live lease on key.
func (m *Locker) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
	if err := locker.CheckArgs(key, to, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := locker.CheckOwner(key, from); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if r, ok := m.live(key, now); !ok || r.owner != from {
		return locker.Lease{}, locker.ErrNotHeld
	}
	m.tokens[key]++
	r := record{owner: to, token: m.tokens[key], expires: now.Add(ttl.Truncate(time.Millisecond))}
	m.leases[key] = r
	return locker.Lease{Token: r.token, Validity: ttl}, nil
}

// Release deletes owner's lease on key. It returns [locker.ErrNotHeld] if
// owner's lease was not live (an expired one of owner's is still removed).
func (m *Locker) Release(ctx context.Context, key, owner string) error {
	if err := locker.CheckOwner(key, owner); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.leases[key]
	if !ok || r.owner != owner {
		return locker.ErrNotHeld
	}
	delete(m.leases, key)
	if !time.Now().Before(r.expires) {
		return locker.ErrNotHeld
	}
	for ch := range m.watch[key] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
	return nil
}

// Watch tells the caller of every Release of key until stop is called.
func (m *Locker) Watch(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	if err := locker.ValidateKey(key); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	ch := make(chan struct{}, 1)
	m.mu.Lock()
	if m.watch[key] == nil {
		m.watch[key] = map[chan struct{}]struct{}{}
	}
	m.watch[key][ch] = struct{}{}
	m.mu.Unlock()
	stop := func() {
		m.mu.Lock()
		defer m.mu.Unlock()
		delete(m.watch[key], ch)
		if len(m.watch[key]) == 0 {
			delete(m.watch, key)
		}
	}
	return ch, stop, nil
}

// Inspect reports the live holder of key, or an Info with no owner.
func (m *Locker) Inspect(ctx context.Context, key string) (locker.Info, error) {
	if err := locker.ValidateKey(key); err != nil {
		return locker.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Info{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	r, ok := m.live(key, now)
	if !ok {
		return locker.Info{Key: key}, nil
	}
	return locker.Info{Key: key, Owner: r.owner, Token: r.token, TTL: r.expires.Sub(now)}, nil
}

// Purge forgets leases that expired more than olderThan ago. Tokens are kept.
func (m *Locker) Purge(ctx context.Context, olderThan time.Duration) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cutoff := time.Now().Add(-olderThan)
	var n int64
	for k, r := range m.leases {
		if r.expires.Before(cutoff) {
			delete(m.leases, k)
			n++
		}
	}
	return n, nil
}

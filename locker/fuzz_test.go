package locker_test

import (
	"context"
	"errors"
	"math"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/dlock-go/dlock/drivers/memlocker"
	"github.com/dlock-go/dlock/locker"
)

// The fuzz targets below check that key validation and option handling never
// panic and fail only with the documented sentinels. Run one with, e.g.,
//
//	go test -run '^$' -fuzz '^FuzzValidateKey$' -fuzztime 60s ./locker/
//
// Their seed corpora are in testdata/fuzz/<target>/.

func FuzzValidateKey(f *testing.F) {
	for _, k := range []string{"", "a", "job:42", "ключ", "\xff", string(make([]byte, 512)), string(make([]byte, 513)), "a\x00b"} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := locker.ValidateKey(key)
		valid := key != "" && len(key) <= locker.MaxKeyLen && utf8.ValidString(key)
		switch {
		case valid && err != nil:
			t.Fatalf("ValidateKey(%q) = %v, want nil", key, err)
		case !valid && !errors.Is(err, locker.ErrInvalidKey):
			t.Fatalf("ValidateKey(%q) = %v, want ErrInvalidKey", key, err)
		}
	})
}

func FuzzCheckArgs(f *testing.F) {
	f.Add("k", "owner", int64(time.Second))
	f.Add("", "owner", int64(time.Second))
	f.Add("k", "", int64(time.Second))
	f.Add("k", "o", int64(0))
	f.Add("k", "o", int64(-1))
	f.Add("k", "o", int64(time.Millisecond-1))
	f.Add("\xc3", "o", int64(1<<62))
	f.Fuzz(func(t *testing.T, key, owner string, ttl int64) {
		err := locker.CheckArgs(key, owner, time.Duration(ttl))
		if err != nil && !errors.Is(err, locker.ErrInvalidKey) && !errors.Is(err, locker.ErrInvalidOption) {
			t.Fatalf("CheckArgs = %v, want nil, ErrInvalidKey or ErrInvalidOption", err)
		}
		valid := locker.ValidateKey(key) == nil && owner != "" && time.Duration(ttl) >= locker.MinTTL
		if valid != (err == nil) {
			t.Fatalf("CheckArgs(%q, %q, %v) = %v", key, owner, time.Duration(ttl), err)
		}
		if err := locker.CheckOwner(key, owner); err != nil && !errors.Is(err, locker.ErrInvalidKey) && !errors.Is(err, locker.ErrInvalidOption) {
			t.Fatalf("CheckOwner = %v", err)
		}
	})
}

// FuzzOptions builds a factory and a lock from arbitrary option values
// (mask chooses which options are given) and takes the lock once on the
// in-process driver.
func FuzzOptions(f *testing.F) {
	f.Add("k", int64(time.Second), 3, int64(time.Second), int64(0), int64(0), int64(0), uint8(0xff))
	f.Add("k", int64(0), -1, int64(-1), int64(-5), int64(0), int64(0), uint8(0xff))
	f.Add("k", int64(time.Millisecond), 0, int64(0), int64(time.Millisecond), int64(1), int64(2), uint8(0x1f))
	f.Add("", int64(time.Second), locker.Unlimited, int64(1), int64(1), int64(-1), int64(1<<62), uint8(0x7))
	f.Add("k", int64(10*time.Millisecond), 1, int64(1), int64(time.Millisecond), int64(time.Millisecond), int64(time.Second), uint8(0x3b))
	f.Fuzz(func(t *testing.T, key string, ttl int64, retries int, interval, refresh, bmin, bmax int64, mask uint8) {
		var opts []locker.Option
		if mask&1 != 0 {
			opts = append(opts, locker.TTL(time.Duration(ttl)))
		}
		if mask&2 != 0 {
			opts = append(opts, locker.Retries(retries))
		}
		if mask&4 != 0 {
			opts = append(opts, locker.Interval(time.Duration(interval)))
		}
		if mask&8 != 0 {
			opts = append(opts, locker.AutoRefreshEvery(time.Duration(refresh)))
		}
		if mask&16 != 0 {
			opts = append(opts, locker.AutoRefresh())
		}
		if mask&32 != 0 {
			opts = append(opts, locker.WithBackoff(locker.ExponentialBackoff{Min: time.Duration(bmin), Max: time.Duration(bmax)}))
		}
		if mask&64 != 0 {
			opts = append(opts, nil, locker.Observe(nil))
		}
		if mask&128 != 0 {
			opts = append(opts, locker.WithBackoff(nil))
		}
		invalid := func(what string, err error, also ...error) {
			t.Helper()
			if err == nil || errors.Is(err, locker.ErrInvalidOption) || errors.Is(err, locker.ErrInvalidKey) {
				return
			}
			for _, e := range also {
				if errors.Is(err, e) {
					return
				}
			}
			t.Fatalf("%s: %v, want nil or an invalid-argument error", what, err)
		}

		fac, err := locker.NewFactory(memlocker.New(), opts...)
		invalid("NewFactory", err)
		if err != nil {
			// The same options on a lock of a valid factory fail the same way.
			fac, err = locker.NewFactory(memlocker.New())
			if err != nil {
				t.Fatalf("NewFactory without options: %v", err)
			}
		}
		l := fac.NewLock(key, opts...)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = l.TryLock(ctx)
		// The key is free, but with a TTL of a millisecond or so the grant
		// may arrive too late to be trusted: then ErrNotObtained.
		invalid("TryLock", err, locker.ErrNotObtained)
		if err != nil {
			if l.Held() || l.Token() != 0 {
				t.Fatal("a failed TryLock left the handle holding a lease")
			}
			return
		}
		if l.Token() <= 0 && l.Err() == nil {
			t.Fatalf("held lock with token %d", l.Token())
		}
		// A refresh that outlives the lease's validity is cut short by the
		// lease's own deadline; with a TTL of a few milliseconds that
		// happens before the loss is declared, and Refresh then returns
		// context.DeadlineExceeded rather than an error matching ErrLost
		// (reported to the lead; timing-dependent, so not a seed).
		invalid("Refresh", l.Refresh(ctx, opts...), locker.ErrNotHeld, context.DeadlineExceeded)
		if err := l.Unlock(ctx); err != nil && !errors.Is(err, locker.ErrNotHeld) {
			t.Fatalf("Unlock: %v", err)
		}
		if err := l.Unlock(ctx); !errors.Is(err, locker.ErrNotHeld) {
			t.Fatalf("second Unlock: %v, want ErrNotHeld", err)
		}
	})
}

// FuzzBackoff checks that the backoff policies never panic and stay within
// their documented ranges.
func FuzzBackoff(f *testing.F) {
	f.Add(int64(time.Millisecond), int64(time.Second), 1, 0.5)
	f.Add(int64(0), int64(0), 0, 0.0)
	f.Add(int64(-1), int64(-1), -3, -1.0)
	f.Add(int64(time.Second), int64(0), 100, 1.0)
	f.Add(int64(1), int64(1<<62), 70, 2.0)
	f.Fuzz(func(t *testing.T, minD, maxD int64, retry int, frac float64) {
		b := locker.ExponentialBackoff{Min: time.Duration(minD), Max: time.Duration(maxD)}
		d := b.NextBackoff(retry)
		if d < 0 {
			t.Fatalf("%+v.NextBackoff(%d) = %v, negative", b, retry, d)
		}
		if maxD > 0 && minD > 0 && d > max(time.Duration(maxD), time.Duration(minD)) {
			t.Fatalf("%+v.NextBackoff(%d) = %v, over the cap", b, retry, d)
		}
		j := locker.Jitter(time.Duration(minD), frac).NextBackoff(retry)
		if minD > 0 && frac > 0 && frac <= 1 {
			span := time.Duration(float64(minD) * frac)
			upper := time.Duration(minD) + span
			if upper < 0 { // overflowed: the policy caps at the largest Duration
				upper = math.MaxInt64
			}
			if j < time.Duration(minD)-span || j > upper {
				t.Fatalf("Jitter(%v, %v) = %v, outside ±%v", time.Duration(minD), frac, j, span)
			}
		}
	})
}

package locker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestValidateKey(t *testing.T) {
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{"a", true},
		{strings.Repeat("k", MaxKeyLen), true},
		{"ключ", true},
		{"", false},
		{strings.Repeat("k", MaxKeyLen+1), false},
		{"\xff", false},
	} {
		err := ValidateKey(tc.key)
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrInvalidKey)) {
			t.Errorf("ValidateKey(%q) = %v", tc.key, err)
		}
	}
}

func TestDefaults(t *testing.T) {
	c := defaultConfig()
	if c.ttl != 10*time.Second || c.retries != 3 || c.interval != time.Second || c.refreshPeriod() != 0 {
		t.Fatalf("defaults = %+v", c)
	}
	if d := c.delay(1); d != time.Second {
		t.Fatalf("default delay %v", d)
	}
	// Zero is a value, not "unset".
	if err := c.apply([]Option{Retries(0), Interval(0)}); err != nil || c.retries != 0 || c.interval != 0 {
		t.Fatalf("Retries(0), Interval(0) → %+v, %v", c, err)
	}
	c = defaultConfig()
	_ = c.apply([]Option{TTL(900 * time.Millisecond), AutoRefresh()})
	if c.refreshPeriod() != 300*time.Millisecond {
		t.Fatalf("AutoRefresh period %v, want a third of the TTL", c.refreshPeriod())
	}
	// The first bad option is the one reported.
	c = defaultConfig()
	err := c.apply([]Option{Retries(-1), TTL(0)})
	if !errors.Is(err, ErrInvalidOption) || !strings.Contains(err.Error(), "retries") {
		t.Fatalf("apply = %v", err)
	}
}

func TestIntervalAndBackoffReplaceEachOther(t *testing.T) {
	c := defaultConfig()
	_ = c.apply([]Option{WithBackoff(BackoffFunc(func(int) time.Duration { return 7 })), Interval(3)})
	if c.delay(1) != 3 {
		t.Fatalf("Interval after WithBackoff: delay %v", c.delay(1))
	}
	_ = c.apply([]Option{WithBackoff(BackoffFunc(func(int) time.Duration { return -7 }))})
	if c.delay(1) != 0 {
		t.Fatalf("negative backoff: delay %v, want 0", c.delay(1))
	}
}

func TestExponentialBackoff(t *testing.T) {
	b := ExponentialBackoff{Min: 10 * time.Millisecond, Max: 80 * time.Millisecond}
	for retry := 1; retry <= 70; retry++ {
		ceil := min(b.Max, b.Min<<min(retry-1, 10))
		for i := 0; i < 50; i++ {
			if d := b.NextBackoff(retry); d < 0 || d > ceil {
				t.Fatalf("retry %d: %v outside [0, %v]", retry, d, ceil)
			}
		}
	}
	if d := (ExponentialBackoff{}).NextBackoff(3); d != 0 {
		t.Fatalf("zero policy waits %v", d)
	}
	if d := (ExponentialBackoff{Min: time.Second}).NextBackoff(1000); d < 0 {
		t.Fatalf("uncapped policy overflowed: %v", d)
	}
}

func TestJitter(t *testing.T) {
	b := Jitter(100*time.Millisecond, 0.2)
	seen := map[time.Duration]bool{}
	for i := 0; i < 200; i++ {
		d := b.NextBackoff(1)
		if d < 80*time.Millisecond || d > 120*time.Millisecond {
			t.Fatalf("jitter %v outside 100ms±20%%", d)
		}
		seen[d] = true
	}
	if len(seen) < 10 {
		t.Fatalf("jitter produced only %d distinct waits", len(seen))
	}
}

func TestErrLostMatchesErrNotHeld(t *testing.T) {
	if !errors.Is(ErrLost, ErrNotHeld) || errors.Is(ErrNotHeld, ErrLost) {
		t.Fatal("ErrLost must match ErrNotHeld, not the other way round")
	}
	if errors.Is(errUnlocked, ErrLost) || !errors.Is(errUnlocked, ErrNotHeld) {
		t.Fatal("an unlock is not a loss")
	}
}

func TestCancelledMatchesBoth(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := cancelled(ctx, errors.New("backend down"))
	for _, target := range []error{ErrNotObtained, context.Canceled} {
		if !errors.Is(err, target) {
			t.Fatalf("%v does not match %v", err, target)
		}
	}
	if !strings.Contains(err.Error(), "backend down") {
		t.Fatalf("the last backend error is dropped: %v", err)
	}
}

func TestEventKindString(t *testing.T) {
	for k, s := range map[EventKind]string{Acquired: "acquired", Contended: "contended", Refreshed: "refreshed", Released: "released", Lost: "lost", 0: "EventKind(0)"} {
		if k.String() != s {
			t.Errorf("%d.String() = %q", k, k.String())
		}
	}
}

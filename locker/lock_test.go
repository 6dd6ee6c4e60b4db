package locker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dlock-go/dlock/drivers/memlocker"
	"github.com/dlock-go/dlock/locker"
)

// hung is a storage that never answers an Acquire until its context ends,
// and counts the releases that clean up after it.
type hung struct {
	*memlocker.Locker
	releases chan string
}

func (h hung) Acquire(ctx context.Context, _, _ string, _ time.Duration) (locker.Lease, error) {
	<-ctx.Done()
	return locker.Lease{}, ctx.Err()
}

func (h hung) Release(ctx context.Context, key, owner string) error {
	h.releases <- owner
	return h.Locker.Release(ctx, key, owner)
}

func TestHungStorageAttemptEndsAfterTTL(t *testing.T) {
	h := hung{Locker: memlocker.New(), releases: make(chan string, 10)}
	f, err := locker.NewFactory(h)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		// No deadline of the caller's: only the TTL can end the attempt.
		done <- f.NewLock("k").Lock(context.Background(), locker.TTL(50*time.Millisecond), locker.Retries(1), locker.Interval(0))
	}()
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Lock hung on a storage that never answers")
	}
	if err == nil || errors.Is(err, locker.ErrNotObtained) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock = %v, want a timed-out attempt that is not ErrNotObtained", err)
	}
	// Each timed-out attempt may have reached the storage: both were released.
	if n := len(h.releases); n != 2 {
		t.Fatalf("%d clean-up releases after 2 timed-out attempts", n)
	}
}

// failing is a storage whose Acquire fails at once with a backend error.
type failing struct{ *memlocker.Locker }

var errRefused = errors.New("connection refused")

func (failing) Acquire(context.Context, string, string, time.Duration) (locker.Lease, error) {
	return locker.Lease{}, errRefused
}

func TestQuickBackendErrorIsNotATimeout(t *testing.T) {
	f, _ := locker.NewFactory(failing{memlocker.New()})
	err := f.NewLock("k").TryLock(context.Background())
	if !errors.Is(err, errRefused) || errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "longer than the TTL") {
		t.Fatalf("TryLock = %v, want the backend's error as it is", err)
	}
}

package memlocker_test

import (
	"context"
	"errors"
	"time"

	"testing"

	"github.com/dlock-go/dlock/drivers/memlocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	// One store per process: every client of the suite shares it, as the
	// clients of a real server share the server.
	store := memlocker.New()
	testutil.RunConformance(t, testutil.Driver{
		Name: "memlocker",
		New:  func(testing.TB) locker.Locker { return store },
		NewNamespace: func(testing.TB, string) locker.Locker {
			return memlocker.New()
		},
		Broken:    func(testing.TB) locker.Locker { return brokenStore{} },
		InProcess: true,
	})
}

// brokenStore fails every call the way an unreachable storage does.
type brokenStore struct{}

var errDown = errors.New("memlocker test: storage down")

func (brokenStore) Acquire(context.Context, string, string, time.Duration) (locker.Lease, error) {
	return locker.Lease{}, errDown
}

func (brokenStore) Refresh(context.Context, string, string, time.Duration) (locker.Lease, error) {
	return locker.Lease{}, errDown
}
func (brokenStore) Release(context.Context, string, string) error { return errDown }
func (brokenStore) Inspect(context.Context, string) (locker.Info, error) {
	return locker.Info{}, errDown
}

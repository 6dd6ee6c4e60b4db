package testutil

import (
	"testing"

	"github.com/dlock-go/dlock/locker"
)

// Driver describes a storage driver to the conformance suite.
type Driver struct {
	// Name labels the driver in messages, e.g. "pglocker/lib/pq".
	Name string

	// New returns a Locker with a connection pool of its own, on the shared
	// test namespace (table, prefix, collection). It closes what it opened in
	// t.Cleanup. The suite calls it many times to get independent clients, and
	// in re-executed child processes of the test binary.
	New func(t testing.TB) locker.Locker

	// NewNamespace, when set, returns a Locker on another namespace (another
	// table, key prefix or collection) named after ns; the suite checks that
	// namespaces never interfere.
	NewNamespace func(t testing.TB, ns string) locker.Locker

	// Broken, when set, returns a Locker whose storage fails every call with
	// a real backend error (a closed port, bad credentials, a missing table).
	Broken func(t testing.TB) locker.Locker

	// TakeoverRaceUnsafe, when non-empty, says why this server cannot prove
	// mutual exclusion when many clients take over one expired lease at once
	// (FerretDB 1.x reads then writes without a re-check). The suite then
	// reports that one case as unproven instead of running it.
	TakeoverRaceUnsafe string
}

// RunConformance runs every guarantee of dlock's contract against d.
// Call it from a Test function of the driver's package; the multi-process
// tests re-execute that test function in child processes.
func RunConformance(t *testing.T, d Driver) {
	t.Helper()
	// filled in by the foundation work
}

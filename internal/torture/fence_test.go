package torture

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"testing"
	"time"

	"github.com/dlock-go/dlock/testutil"
)

// fenceSchema creates a schema with the fence tables for keys and drops it
// when the test ends.
func fenceSchema(t *testing.T, keys ...string) (*sql.DB, string) {
	t.Helper()
	url := testutil.PostgresURL(t)
	ctx := context.Background()
	db, err := openAdmin(ctx, url, "dlock-torture-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	var b [4]byte
	_, _ = rand.Read(b[:])
	// Named like a run's schema, so that a later run drops it if this
	// test dies before its cleanup.
	schema := fmt.Sprintf("dlock_torture_%d_test%s", time.Now().Unix(), hex.EncodeToString(b[:]))
	if _, err := db.ExecContext(ctx, `CREATE SCHEMA `+quoteIdent(schema)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = db.ExecContext(context.Background(), `DROP SCHEMA `+quoteIdent(schema)+` CASCADE`) })
	if err := createFence(ctx, db, schema, keys); err != nil {
		t.Fatal(err)
	}
	return db, schema
}

// TestFenceRejectsStaleHolder plays two holders of one key by hand: the
// older one's end is rejected once the newer one has begun, a token not
// above the mark cannot begin, and the check counts one lock overlap and no
// accepted overlap.
func TestFenceRejectsStaleHolder(t *testing.T) {
	t.Parallel()
	db, schema := fenceSchema(t, "k")
	f := newFence(db, schema)
	ctx := context.Background()

	startA, ok, _, err := f.begin(ctx, "k", "a", 5)
	if err != nil || !ok {
		t.Fatalf("begin a: ok %v, %v", ok, err)
	}
	startB, ok, _, err := f.begin(ctx, "k", "b", 6)
	if err != nil || !ok {
		t.Fatalf("begin b: ok %v, %v", ok, err)
	}
	if _, ok, mark, err := f.begin(ctx, "k", "c", 6); err != nil || ok || mark != 6 {
		t.Fatalf("begin c with the mark's token: ok %v, mark %d, %v; want rejected at 6", ok, mark, err)
	}
	if _, accepted, err := f.end(ctx, "k", "a", 5, 1, 0, startA, false); err != nil || accepted {
		t.Fatalf("end a after b began: accepted %v, %v; want rejected", accepted, err)
	}
	if _, accepted, err := f.end(ctx, "k", "b", 6, 2, 0, startB, false); err != nil || !accepted {
		t.Fatalf("end b: accepted %v, %v; want accepted", accepted, err)
	}
	r, err := check(ctx, db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if r.Accepted != 1 || r.Rejected != 1 || r.LockOverlap != 1 || r.AcceptedOverlap != 0 || r.TokenRegression != 0 {
		t.Fatalf("check = %+v", r)
	}
}

// TestCheckCatchesAcceptedOverlap writes what a broken fence would have
// accepted: two overlapping sections, the second with a lower token. The
// check must report both.
func TestCheckCatchesAcceptedOverlap(t *testing.T) {
	t.Parallel()
	db, schema := fenceSchema(t, "k")
	ctx := context.Background()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, s := range []struct {
		owner      string
		token      int64
		start, end time.Duration
	}{
		{"a", 7, 0, 10 * time.Millisecond},
		{"b", 6, 5 * time.Millisecond, 20 * time.Millisecond},
		{"c", 9, 20 * time.Millisecond, 30 * time.Millisecond}, // touching is not overlapping
	} {
		_, err := db.ExecContext(ctx, `INSERT INTO `+quoteIdent(schema)+`.fence_log
(key, owner, token, proc, worker, start_ts, end_ts, accepted, lost) VALUES ('k', $1, $2, 0, 0, $3, $4, true, false)`,
			s.owner, s.token, t0.Add(s.start), t0.Add(s.end))
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := check(ctx, db, schema)
	if err != nil {
		t.Fatal(err)
	}
	if r.AcceptedOverlap != 1 || r.TokenRegression != 1 {
		t.Fatalf("check = %+v, want 1 accepted overlap and 1 token regression", r)
	}
	s := &Summary{Check: r}
	s.judge()
	if !s.Failed() {
		t.Fatal("a run with an accepted overlap did not fail")
	}
}

// TestJudge checks which findings fail a run and which known limits excuse.
func TestJudge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		s    Summary
		fail bool
	}{
		{"clean", Summary{Check: checkResult{Accepted: 10}}, false},
		{"no progress", Summary{}, true},
		{"violation", Summary{Check: checkResult{Accepted: 10, Violations: 1}}, true},
		{"violation on FerretDB", Summary{Check: checkResult{Accepted: 10, Violations: 1}, Unsafe: "x", TokensUnsafe: "x"}, false},
		{"token not rising", Summary{Check: checkResult{Accepted: 10}, Stats: stats{BeginViolations: 1}}, true},
		{"token not rising, Redlock without persistence", Summary{Check: checkResult{Accepted: 10}, Stats: stats{BeginViolations: 1}, TokensUnsafe: "x"}, false},
		{"overlap, tokens excused only", Summary{Check: checkResult{Accepted: 10, Violations: 1}, TokensUnsafe: "x"}, true},
		{"accepted overlap on FerretDB", Summary{Check: checkResult{Accepted: 10, AcceptedOverlap: 1}, Unsafe: "x", TokensUnsafe: "x"}, true},
		{"undetected loss", Summary{Check: checkResult{Accepted: 10}, Stats: stats{LostUndetected: 1}}, true},
		{"stuck key", Summary{Check: checkResult{Accepted: 10}, KillStuck: []string{"k"}}, true},
		{"crash", Summary{Check: checkResult{Accepted: 10}, Crashes: []string{"p"}}, true},
	} {
		s := tc.s
		s.judge()
		if s.Failed() != tc.fail {
			t.Errorf("%s: Failed() = %v (%v), want %v", tc.name, s.Failed(), s.Failures, tc.fail)
		}
	}
}

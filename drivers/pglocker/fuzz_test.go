package pglocker

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/lib/pq"

	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
)

// The fuzz targets below check the driver's configuration and its reading
// of server errors. The driver has no decoding of its own for server
// replies: rows are scanned by database/sql into typed columns of the
// generated queries, so there is no separable decoding function to fuzz.
// Run one with, e.g.,
//
//	go test -run '^$' -fuzz '^FuzzTable$' -fuzztime 60s ./drivers/pglocker/
//
// Their seed corpora are in testdata/fuzz/<target>/.

// identifiers splits SQL text made of quoted identifiers joined by dots
// (`"a"."b"`) into the identifiers, or reports false if it is anything else.
func identifiers(s string) ([]string, bool) {
	var out []string
	for {
		if !strings.HasPrefix(s, `"`) {
			return nil, false
		}
		s = s[1:]
		var b strings.Builder
		for {
			i := strings.IndexByte(s, '"')
			if i < 0 {
				return nil, false
			}
			b.WriteString(s[:i])
			s = s[i+1:]
			if strings.HasPrefix(s, `"`) { // a doubled quote
				b.WriteByte('"')
				s = s[1:]
				continue
			}
			break
		}
		out = append(out, b.String())
		if s == "" {
			return out, true
		}
		if !strings.HasPrefix(s, ".") {
			return nil, false
		}
		s = s[1:]
	}
}

// FuzzTable gives New arbitrary table names: it never panics, rejects a
// name only with ErrInvalidOption, and an accepted name reaches the SQL only
// as quoted identifiers that read back as the name's parts.
func FuzzTable(f *testing.F) {
	for _, s := range []string{
		"dlock_locks", "app.locks", `a"b`, "a;b", "a b", "a.b.c", ".x", "x.", "", "Ключи",
		"x\x00y", strings.Repeat("t", 49), strings.Repeat("t", 50), "s." + strings.Repeat("t", 49),
		`"quoted"`, "a\\b", "dlock_locks_token_seq",
	} {
		f.Add(s)
	}
	db, err := sql.Open("postgres", "postgres://fuzz@127.0.0.1:1/none?sslmode=disable") // never connected
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { db.Close() })
	f.Fuzz(func(t *testing.T, name string) {
		l, err := New(db, Table(name))
		if err != nil {
			if !errors.Is(err, locker.ErrInvalidOption) {
				t.Fatalf("New(Table(%q)): %v, want ErrInvalidOption", name, err)
			}
			return
		}
		if l == nil {
			t.Fatal("New returned nil without an error")
		}
		n, err := migrations.ParseTable(name)
		if err != nil {
			t.Fatalf("New accepted %q that ParseTable rejects: %v", name, err)
		}
		parts, ok := identifiers(n.Table)
		if !ok {
			t.Fatalf("table %q became %s, not quoted identifiers", name, n.Table)
		}
		if got := strings.Join(parts, "."); got != name {
			t.Fatalf("table %q reads back as %q from %s", name, got, n.Table)
		}
		for _, obj := range []string{n.Sequence, n.VersionTable} {
			if _, ok := identifiers(obj); !ok {
				t.Fatalf("table %q: derived name %s is not quoted identifiers", name, obj)
			}
		}
		// The rewritten statements name the table only as quoted.
		q := n.Rewrite(`SELECT 1 FROM dlock_locks WHERE nextval('dlock_locks_token_seq') > 0`)
		if !n.IsDefault() && strings.Contains(strings.ReplaceAll(q, n.Table, ""), "dlock_locks") &&
			!strings.Contains(name, "dlock_locks") {
			t.Fatalf("Rewrite left the default name in %s", q)
		}
	})
}

// FuzzInterpretError classifies arbitrary PostgreSQL errors: lost races
// (40001, 40P01, 23505) and only those match ErrNotObtained; every error
// carries the package prefix and the server's error.
func FuzzInterpretError(f *testing.F) {
	for _, c := range []string{"40001", "40P01", "23505", "57P01", "42P01", "08006", "", "4000", "400011", "\xff"} {
		f.Add(c, "message", "acquire", false)
	}
	f.Add("40001", "", "refresh", true)
	f.Fuzz(func(t *testing.T, code, msg, op string, cancelled bool) {
		ctx := context.Background()
		if cancelled {
			var cancel context.CancelFunc
			ctx, cancel = context.WithCancel(ctx)
			cancel()
		}
		src := &pq.Error{Code: pq.ErrorCode(code), Message: msg}
		err := interpretError(ctx, op, src)
		if err == nil {
			t.Fatal("interpretError returned nil for an error")
		}
		race := code == "40001" || code == "40P01" || code == "23505"
		if errors.Is(err, locker.ErrNotObtained) != race {
			t.Fatalf("code %q: %v matches ErrNotObtained: %v", code, err, !race)
		}
		if !errors.Is(err, src) {
			t.Fatalf("interpretError dropped the server's error: %v", err)
		}
		if !strings.HasPrefix(err.Error(), "pglocker: ") {
			t.Fatalf("error without the package prefix: %v", err)
		}
		if cancelled && !errors.Is(err, context.Canceled) {
			t.Fatalf("error of a cancelled call does not match context.Canceled: %v", err)
		}
		if errors.Is(interpretError(ctx, op, sql.ErrNoRows), locker.ErrNotObtained) != (op == "acquire") {
			t.Fatalf("no rows for op %q", op)
		}
	})
}

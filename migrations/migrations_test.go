package migrations_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/lib/pq"

	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
	"github.com/dlock-go/dlock/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.PostgresCleanup()
	os.Exit(code)
}

func TestParseTable(t *testing.T) {
	t.Parallel()
	ok := []struct {
		name, table, seq, version string
	}{
		{"dlock_locks", `"dlock_locks"`, `"dlock_locks_token_seq"`, `"dlock_locks_goose_version"`},
		{"locks", `"locks"`, `"locks_token_seq"`, `"locks_goose_version"`},
		{"app.locks", `"app"."locks"`, `"app"."locks_token_seq"`, `"app"."locks_goose_version"`},
		{"My Locks", `"My Locks"`, `"My Locks_token_seq"`, `"My Locks_goose_version"`},
		{"a;drop table x", `"a;drop table x"`, `"a;drop table x_token_seq"`, `"a;drop table x_goose_version"`},
		{"sch ema.t-1", `"sch ema"."t-1"`, `"sch ema"."t-1_token_seq"`, `"sch ema"."t-1_goose_version"`},
		{"verrous", `"verrous"`, `"verrous_token_seq"`, `"verrous_goose_version"`},
		{strings.Repeat("t", 49), `"` + strings.Repeat("t", 49) + `"`, `"` + strings.Repeat("t", 49) + `_token_seq"`, `"` + strings.Repeat("t", 49) + `_goose_version"`},
	}
	for _, c := range ok {
		n, err := migrations.ParseTable(c.name)
		if err != nil {
			t.Errorf("ParseTable(%q): %v", c.name, err)
			continue
		}
		if n.Table != c.table || n.Sequence != c.seq || n.VersionTable != c.version {
			t.Errorf("ParseTable(%q) = %q, %q, %q; want %q, %q, %q", c.name, n.Table, n.Sequence, n.VersionTable, c.table, c.seq, c.version)
		}
	}
	bad := []string{
		"", ".", "a.", ".b", "a.b.c", `a"b`, `"locks"`, "a'b", `a\b`, "a\x00b", "a\nb", "\xff",
		strings.Repeat("t", 50), strings.Repeat("s", 64) + ".t",
	}
	for _, name := range bad {
		_, err := migrations.ParseTable(name)
		if !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("ParseTable(%q) = %v; want an error matching ErrInvalidOption", name, err)
		}
	}
}

// TestRewriteLeavesNoDefaultName checks that rewriting the migration files for
// another table leaves no reference to the default objects.
func TestRewriteLeavesNoDefaultName(t *testing.T) {
	t.Parallel()
	n, err := migrations.ParseTable("app.other")
	if err != nil {
		t.Fatal(err)
	}
	files, err := fs.Glob(migrations.FS, "*.sql")
	if err != nil || len(files) == 0 {
		t.Fatalf("no migration files: %v", err)
	}
	for _, f := range files {
		b, err := fs.ReadFile(migrations.FS, f)
		if err != nil {
			t.Fatal(err)
		}
		sql := stripComments(string(b))
		got := n.Rewrite(sql)
		if strings.Contains(got, migrations.DefaultTable) {
			t.Errorf("%s: rewritten SQL still names %s:\n%s", f, migrations.DefaultTable, got)
		}
		if !strings.Contains(got, `"app"."other"`) || !strings.Contains(got, `"app"."other_token_seq"`) {
			t.Errorf("%s: rewritten SQL lacks the new names:\n%s", f, got)
		}
	}
	def, _ := migrations.ParseTable(migrations.DefaultTable)
	if s := "SELECT 1 FROM dlock_locks"; def.Rewrite(s) != s {
		t.Errorf("default table rewrote %q to %q", s, def.Rewrite(s))
	}
}

func stripComments(sql string) string {
	var out []string
	for _, line := range strings.Split(sql, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

func TestBadOptions(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if err := migrations.Up(ctx, nil); !errors.Is(err, locker.ErrInvalidOption) {
		t.Errorf("Up(nil db) = %v; want ErrInvalidOption", err)
	}
	db, err := sql.Open("postgres", "postgres://127.0.0.1:1/none?sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, name := range []string{`x"; DROP TABLE y; --`, "a.b.c", ""} {
		if err := migrations.Up(ctx, db, migrations.Table(name)); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("Up(Table(%q)) = %v; want ErrInvalidOption", name, err)
		}
		if err := migrations.Down(ctx, db, migrations.Table(name)); !errors.Is(err, locker.ErrInvalidOption) {
			t.Errorf("Down(Table(%q)) = %v; want ErrInvalidOption", name, err)
		}
	}
}

// TestUpDownUp applies, rolls back and re-applies the migrations for tables
// with awkward names, checking the objects after each step.
func TestUpDownUp(t *testing.T) {
	t.Parallel()
	url, schema := testutil.PostgresSchema(t)
	db := openDB(t, url)
	for _, table := range []string{"updown", "Up Down;x", "ünï-cödé", "a -- b /* c"} {
		t.Run(table, func(t *testing.T) {
			ctx := context.Background()
			name := schema + "." + table
			n, err := migrations.ParseTable(name)
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ { // Up is idempotent
				if err := migrations.Up(ctx, db, migrations.Table(name)); err != nil {
					t.Fatalf("up #%d: %v", i+1, err)
				}
			}
			checkObjects(t, db, n, true)
			first := insertRow(t, db, n)

			if err := migrations.Down(ctx, db, migrations.Table(name)); err != nil {
				t.Fatalf("down: %v", err)
			}
			checkObjects(t, db, n, false)
			if err := migrations.Down(ctx, db, migrations.Table(name)); err != nil {
				t.Fatalf("second down: %v", err)
			}

			if err := migrations.Up(ctx, db, migrations.Table(name)); err != nil {
				t.Fatalf("up again: %v", err)
			}
			checkObjects(t, db, n, true)
			if again := insertRow(t, db, n); again != first {
				t.Errorf("token after down and up = %d; want the sequence to start again at %d", again, first)
			}
		})
	}
}

// TestDefaultTable runs the migrations for the default, unqualified table,
// which resolves through the connection's search_path.
func TestDefaultTable(t *testing.T) {
	t.Parallel()
	url, _ := testutil.PostgresSchema(t)
	schema := ownSchema(t, url)
	db := openDB(t, url+"&search_path="+schema)
	ctx := context.Background()
	if err := migrations.Up(ctx, db); err != nil {
		t.Fatalf("up: %v", err)
	}
	n, _ := migrations.ParseTable(schema + "." + migrations.DefaultTable)
	checkObjects(t, db, n, true)
	var versions int
	if err := db.QueryRow(`SELECT count(*) FROM dlock_locks_goose_version WHERE version_id > 0`).Scan(&versions); err != nil || versions != 1 {
		t.Errorf("version table rows = %d, %v; want 1", versions, err)
	}
	if err := migrations.Down(ctx, db); err != nil {
		t.Fatalf("down: %v", err)
	}
	checkObjects(t, db, n, false)
	if err := migrations.Up(ctx, db); err != nil {
		t.Fatalf("up again: %v", err)
	}
	checkObjects(t, db, n, true)
}

// TestConcurrentUp runs Up for one table from many goroutines with their own
// pools, as replicas of a service starting at once would.
func TestConcurrentUp(t *testing.T) {
	t.Parallel()
	url, schema := testutil.PostgresSchema(t)
	name := schema + ".concurrent"
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < cap(errs); i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			db, err := sql.Open("postgres", url)
			if err != nil {
				errs <- err
				return
			}
			defer db.Close()
			errs <- migrations.Up(context.Background(), db, migrations.Table(name))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	db := openDB(t, url)
	n, _ := migrations.ParseTable(name)
	checkObjects(t, db, n, true)
}

func openDB(t *testing.T, url string) *sql.DB {
	t.Helper()
	db, err := sql.Open("postgres", url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// ownSchema creates a schema for one test, named like the fixture's so that a
// crashed run's leftovers are swept, and drops it when the test ends.
func ownSchema(t *testing.T, url string) string {
	t.Helper()
	db := openDB(t, url)
	name := fmt.Sprintf("dlock_test_%d_%d_%s", time.Now().Unix(), os.Getpid(), strings.ToLower(t.Name()))
	if _, err := db.Exec(`CREATE SCHEMA "` + name + `"`); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if _, err := db.Exec(`DROP SCHEMA "` + name + `" CASCADE`); err != nil {
			t.Errorf("drop schema: %v", err)
		}
	})
	return name
}

func checkObjects(t *testing.T, db *sql.DB, n migrations.Names, want bool) {
	t.Helper()
	for _, obj := range []string{n.Table, n.Sequence} {
		var exists bool
		if err := db.QueryRow(`SELECT to_regclass($1) IS NOT NULL`, obj).Scan(&exists); err != nil {
			t.Fatal(err)
		}
		if exists != want {
			t.Errorf("%s exists = %v; want %v", obj, exists, want)
		}
	}
}

func insertRow(t *testing.T, db *sql.DB, n migrations.Names) int64 {
	t.Helper()
	var token int64
	q := `INSERT INTO ` + n.Table + ` (key, owner, token, expires_at)
		VALUES ('k', 'o', nextval('` + n.Sequence + `'), now()) RETURNING token`
	if err := db.QueryRow(q).Scan(&token); err != nil {
		t.Fatalf("insert into %s: %v", n.Table, err)
	}
	return token
}

package testutil

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/lib/pq" // the test fixtures talk to PostgreSQL through lib/pq

	"github.com/dlock-go/dlock/migrations"
)

const (
	// PostgresURLEnv names the environment variable with the URL of the
	// PostgreSQL server the tests use.
	PostgresURLEnv = "DLOCK_TEST_POSTGRES_URL"
	// DefaultPostgresURL is tried when PostgresURLEnv is unset.
	DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	// PostgresSchemaEnv names the environment variable through which a test
	// process hands its schema to the child processes it re-executes. A
	// process that finds it set uses that schema and never drops it.
	PostgresSchemaEnv = "DLOCK_TEST_POSTGRES_SCHEMA"

	// postgresSchemaPrefix starts the name of every schema the fixture
	// creates: dlock_test_<unix seconds>_<pid>_<random>.
	postgresSchemaPrefix = "dlock_test_"
	// staleSchemaAge is how old a fixture schema must be before a later test
	// run drops it (left behind by a crashed or interrupted run).
	staleSchemaAge = time.Hour
)

var postgresContainer = &Container{
	Repository: "postgres",
	Tag:        "15-alpine",
	Env:        []string{"POSTGRES_HOST_AUTH_METHOD=trust", "POSTGRES_DB=test"},
	Port:       "5432/tcp",
	URL: func(hostPort string) string {
		return "postgres://postgres@" + hostPort + "/test?sslmode=disable"
	},
	Ready: func(url string) error {
		db, err := sql.Open("postgres", url)
		if err != nil {
			return err
		}
		defer db.Close()
		return db.Ping()
	},
}

var pgURL struct {
	once sync.Once
	url  string
}

// PostgresURL returns the URL of the PostgreSQL test server: from
// DLOCK_TEST_POSTGRES_URL, else DefaultPostgresURL if a server answers there,
// else a postgres container if a Docker engine answers, else [Absent]. The
// URL found is exported in DLOCK_TEST_POSTGRES_URL so that re-executed child
// processes use the same server.
func PostgresURL(t testing.TB) string {
	t.Helper()
	u := ServerURL(t, "postgres", PostgresURLEnv, DefaultPostgresURL, postgresContainer)
	pgURL.once.Do(func() {
		pgURL.url = u
		if os.Getenv(PostgresURLEnv) == "" {
			os.Setenv(PostgresURLEnv, u)
		}
	})
	return u
}

var pgSchema struct {
	once    sync.Once
	name    string
	url     string
	created bool // by this process, which alone drops it
	err     error

	tables sync.Map // table name -> *tableOnce
}

type tableOnce struct {
	once sync.Once
	err  error
}

// PostgresSchema returns the server URL and a schema of the test server that
// belongs to this test process, with the default lock table migrated in it
// (schema + ".dlock_locks"). The schema is created once per process; its name
// is exported in DLOCK_TEST_POSTGRES_SCHEMA, and a re-executed child process
// reuses it instead of creating its own. Call [PostgresCleanup] from TestMain
// to drop it at the end; schemas left by crashed runs are dropped by a later
// run once they are an hour old.
func PostgresSchema(t testing.TB) (url, schema string) {
	t.Helper()
	url, schema = postgresSchema(t)
	PostgresTable(t, migrations.DefaultTable)
	return url, schema
}

func postgresSchema(t testing.TB) (url, schema string) {
	t.Helper()
	u := PostgresURL(t)
	pgSchema.once.Do(func() {
		pgSchema.url = u
		pgSchema.name, pgSchema.created, pgSchema.err = setUpSchema(u)
	})
	if pgSchema.err != nil {
		t.Fatalf("postgres test schema: %v", pgSchema.err)
	}
	return pgSchema.url, pgSchema.name
}

// PostgresTable returns the schema-qualified name of table in the test
// process's schema (see [PostgresSchema]), migrated with the migrations
// package once per process.
func PostgresTable(t testing.TB, table string) string {
	t.Helper()
	url, schema := postgresSchema(t)
	qualified := schema + "." + table
	v, _ := pgSchema.tables.LoadOrStore(qualified, &tableOnce{})
	to := v.(*tableOnce)
	to.once.Do(func() {
		to.err = withDB(url, func(ctx context.Context, db *sql.DB) error {
			return migrations.Up(ctx, db, migrations.Table(qualified))
		})
	})
	if to.err != nil {
		t.Fatalf("migrate %s: %v", qualified, to.err)
	}
	return qualified
}

// PostgresCleanup drops the test schema if this process created it. Call it
// from TestMain after m.Run; it does nothing in re-executed child processes
// and when no test used the schema.
func PostgresCleanup() {
	if !pgSchema.created {
		return
	}
	err := withDB(pgSchema.url, func(ctx context.Context, db *sql.DB) error {
		_, err := db.ExecContext(ctx, `DROP SCHEMA IF EXISTS `+quoteIdent(pgSchema.name)+` CASCADE`)
		return err
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "testutil: drop schema %s: %v\n", pgSchema.name, err)
	}
}

func setUpSchema(url string) (name string, created bool, err error) {
	if s := os.Getenv(PostgresSchemaEnv); s != "" {
		return s, false, nil
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	name = fmt.Sprintf("%s%d_%d_%s", postgresSchemaPrefix, time.Now().Unix(), os.Getpid(), hex.EncodeToString(suffix[:]))
	err = withDB(url, func(ctx context.Context, db *sql.DB) error {
		dropStaleSchemas(ctx, db)
		_, err := db.ExecContext(ctx, `CREATE SCHEMA `+quoteIdent(name))
		return err
	})
	if err != nil {
		return "", false, err
	}
	os.Setenv(PostgresSchemaEnv, name)
	return name, true, nil
}

// dropStaleSchemas drops fixture schemas whose creation time, encoded in
// their name, is more than staleSchemaAge ago. Errors are ignored: another
// run may be dropping the same schema.
func dropStaleSchemas(ctx context.Context, db *sql.DB) {
	rows, err := db.QueryContext(ctx,
		`SELECT nspname FROM pg_namespace WHERE starts_with(nspname, $1)`, postgresSchemaPrefix)
	if err != nil {
		return
	}
	var stale []string
	for rows.Next() {
		var name string
		if rows.Scan(&name) != nil {
			continue
		}
		stamp, _, _ := strings.Cut(strings.TrimPrefix(name, postgresSchemaPrefix), "_")
		sec, err := strconv.ParseInt(stamp, 10, 64)
		if err == nil && time.Since(time.Unix(sec, 0)) > staleSchemaAge {
			stale = append(stale, name)
		}
	}
	rows.Close()
	for _, name := range stale {
		_, _ = db.ExecContext(ctx, `DROP SCHEMA IF EXISTS `+quoteIdent(name)+` CASCADE`)
	}
}

func withDB(url string, fn func(ctx context.Context, db *sql.DB) error) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, err := sql.Open("postgres", url)
	if err != nil {
		return err
	}
	defer db.Close()
	return fn(ctx, db)
}

func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

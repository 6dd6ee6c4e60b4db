// Package migrations holds dlock's PostgreSQL schema as goose v3 SQL
// migrations, and a helper that applies them from Go.
//
// The SQL files in this folder create the lock table (default dlock_locks)
// and the sequence its fencing tokens come from (dlock_locks_token_seq).
// Apply them either with the goose CLI, for the default table:
//
//	goose -dir migrations -table dlock_locks_goose_version postgres "$DATABASE_URL" up
//
// or from Go, for any table name:
//
//	err := migrations.Up(ctx, db, migrations.Table("app.locks"))
//
// The Go helper records what it applied in a version table of its own next to
// the lock table (dlock_locks_goose_version, app.locks_goose_version), so it
// never touches an application's goose_db_version. Every statement in the
// files is idempotent (IF NOT EXISTS / IF EXISTS), so a database migrated one
// way can later be migrated the other.
//
// A schema-qualified table name needs the schema to exist; the migrations do
// not create schemas. Down drops the table and the sequence: fencing tokens
// start again from 1 after a later Up.
package migrations

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"testing/fstest"

	"github.com/dlock-go/dlock/locker"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/database"
	"github.com/pressly/goose/v3/lock"
)

// FS holds the migration files, as the goose CLI reads them from this folder.
// They create the default table; use [Up] with [Table] for another name.
//
//go:embed *.sql
var FS embed.FS

// Option configures [Up], [Down] and [NewProvider].
type Option func(*config)

type config struct {
	table string
}

// Table sets the lock table the migrations create or drop, optionally
// schema-qualified ("app.locks"). The default is [DefaultTable]. See
// [ParseTable] for the names accepted; a bad name makes Up, Down and
// NewProvider return an error matching locker.ErrInvalidOption.
func Table(name string) Option {
	return func(c *config) { c.table = name }
}

// Up applies every pending migration to db, creating the lock table and its
// token sequence. It is safe to call at every start of a service, from many
// processes at once: runs are serialized by an advisory lock specific to the
// table. It returns an error matching locker.ErrInvalidOption for a bad table
// name and the wrapped database error if a migration fails.
func Up(ctx context.Context, db *sql.DB, opts ...Option) error {
	p, err := NewProvider(db, opts...)
	if err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("dlock migrations: up: %w", err)
	}
	return nil
}

// Down rolls back every applied migration, dropping the lock table and its
// token sequence (and with them every lock and the token history). It returns
// an error matching locker.ErrInvalidOption for a bad table name and the
// wrapped database error if a migration fails.
func Down(ctx context.Context, db *sql.DB, opts ...Option) error {
	p, err := NewProvider(db, opts...)
	if err != nil {
		return err
	}
	if _, err := p.DownTo(ctx, 0); err != nil {
		return fmt.Errorf("dlock migrations: down: %w", err)
	}
	return nil
}

// NewProvider returns a goose provider for the migrations of one lock table,
// for callers who want goose's status, versions or step-wise runs. Do not call
// its Close method unless you mean to close db. The error matches
// locker.ErrInvalidOption for a bad table name or a nil db.
func NewProvider(db *sql.DB, opts ...Option) (*goose.Provider, error) {
	cfg := config{table: DefaultTable}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if db == nil {
		return nil, fmt.Errorf("%w: dlock migrations: nil *sql.DB", locker.ErrInvalidOption)
	}
	names, err := ParseTable(cfg.table)
	if err != nil {
		return nil, err
	}
	fsys, err := rewriteFS(FS, names)
	if err != nil {
		return nil, fmt.Errorf("dlock migrations: %w", err)
	}
	store, err := database.NewStoreFromQuerier(names.VersionTable, versionQuerier{})
	if err != nil {
		return nil, fmt.Errorf("dlock migrations: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectCustom, db, fsys,
		goose.WithStore(store),
		goose.WithDisableGlobalRegistry(true),
		goose.WithSessionLocker(advisoryLocker{id: lockID(names.VersionTable)}),
	)
	if err != nil {
		return nil, fmt.Errorf("dlock migrations: %w", err)
	}
	return p, nil
}

// rewriteFS returns the migration files with the default names replaced by
// names', so that goose parses and runs them exactly as it would the files.
func rewriteFS(src fs.FS, names Names) (fs.FS, error) {
	if names.IsDefault() {
		return src, nil
	}
	files, err := fs.Glob(src, "*.sql")
	if err != nil {
		return nil, err
	}
	out := make(fstest.MapFS, len(files))
	for _, f := range files {
		b, err := fs.ReadFile(src, f)
		if err != nil {
			return nil, err
		}
		out[f] = &fstest.MapFile{Data: []byte(names.Rewrite(string(b))), Mode: 0o444}
	}
	return out, nil
}

// lockID derives the advisory lock that serializes migration runs of one
// table from the name of its version table, so that runs for other tables,
// and an application's own goose runs, never wait for each other.
func lockID(versionTable string) int64 {
	h := fnv.New64a()
	h.Write([]byte("dlock migrations " + versionTable))
	return int64(h.Sum64())
}

// advisoryLocker serializes goose runs with a session-level advisory lock.
// Unlike goose's own, it waits in the server (pg_advisory_lock) rather than
// polling every few seconds, and the wait ends when ctx does.
type advisoryLocker struct{ id int64 }

var _ lock.SessionLocker = advisoryLocker{}

func (l advisoryLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	if _, err := conn.ExecContext(ctx, "SELECT pg_advisory_lock($1)", l.id); err != nil {
		return fmt.Errorf("take migration lock: %w", err)
	}
	return nil
}

func (l advisoryLocker) SessionUnlock(ctx context.Context, conn *sql.Conn) error {
	var released bool
	if err := conn.QueryRowContext(ctx, "SELECT pg_advisory_unlock($1)", l.id).Scan(&released); err != nil {
		// Do not hand a connection that may still hold the lock back to
		// the pool.
		_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		return fmt.Errorf("release migration lock: %w", err)
	}
	return nil
}

// versionQuerier builds goose's version-table statements for PostgreSQL from
// an already quoted, possibly schema-qualified name. (goose's own PostgreSQL
// dialect splices the name unquoted and splits it on the dot to look it up.)
type versionQuerier struct{}

func (versionQuerier) CreateTable(t string) string {
	return `CREATE TABLE ` + t + ` (
		id integer PRIMARY KEY GENERATED BY DEFAULT AS IDENTITY,
		version_id bigint NOT NULL,
		is_applied boolean NOT NULL,
		tstamp timestamp NOT NULL DEFAULT now()
	)`
}

func (versionQuerier) InsertVersion(t string) string {
	return `INSERT INTO ` + t + ` (version_id, is_applied) VALUES ($1, $2)`
}

func (versionQuerier) DeleteVersion(t string) string {
	return `DELETE FROM ` + t + ` WHERE version_id = $1`
}

func (versionQuerier) GetMigrationByVersion(t string) string {
	return `SELECT tstamp, is_applied FROM ` + t + ` WHERE version_id = $1 ORDER BY tstamp DESC LIMIT 1`
}

func (versionQuerier) ListMigrations(t string) string {
	return `SELECT version_id, is_applied FROM ` + t + ` ORDER BY id DESC`
}

func (versionQuerier) GetLatestVersion(t string) string {
	return `SELECT max(version_id) FROM ` + t
}

// TableExists resolves the quoted name the way the other statements do. The
// name holds no single quote or backslash (ParseTable rejects them), so it is
// safe inside the literal.
func (versionQuerier) TableExists(t string) string {
	return `SELECT to_regclass('` + t + `') IS NOT NULL`
}

package pglocker

import (
	"context"
	"database/sql"
	"sync"

	"github.com/dlock-go/dlock/drivers/pglocker/internal/dbsqlc"
	"github.com/dlock-go/dlock/migrations"
)

// The generated queries name the default table and run on whatever
// dbsqlc.DBTX they are given. They are given a handle, which puts a
// configured table's quoted names into the statement text and, on a *sql.DB,
// runs statements prepared once per connection (one round trip per execution
// instead of lib/pq's two for an unprepared statement with parameters).

// rewriter puts a configured table's quoted names into the generated SQL
// text. Each distinct statement is rewritten once and cached.
type rewriter struct {
	names migrations.Names
	cache sync.Map // query text -> rewritten text
}

func (r *rewriter) rewrite(query string) string {
	if v, ok := r.cache.Load(query); ok {
		return v.(string)
	}
	v, _ := r.cache.LoadOrStore(query, r.names.Rewrite(query))
	return v.(string)
}

// statements caches the statements prepared on the Locker's *sql.DB, keyed by
// their final text. database/sql prepares each on a connection the first time
// it runs there.
type statements struct {
	pool  *sql.DB
	cache sync.Map // text -> *sql.Stmt

	mu     sync.Mutex // guards inserts against close
	closed bool
}

// cached returns the prepared statement for query, or nil if there is none.
func (s *statements) cached(query string) *sql.Stmt {
	if v, ok := s.cache.Load(query); ok {
		return v.(*sql.Stmt)
	}
	return nil
}

// get returns the prepared statement for query, preparing it on the pool if
// need be, or nil if it cannot be prepared (the caller then runs it
// unprepared, which reports the same error) or the cache is closed. It needs
// a free connection of the pool: never call it while holding a transaction.
func (s *statements) get(ctx context.Context, query string) *sql.Stmt {
	if stmt := s.cached(query); stmt != nil {
		return stmt
	}
	stmt, err := s.pool.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		stmt.Close()
		return nil
	}
	if v, loaded := s.cache.LoadOrStore(query, stmt); loaded {
		stmt.Close()
		return v.(*sql.Stmt)
	}
	return stmt
}

// close closes every cached statement; later calls run unprepared.
func (s *statements) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.cache.Range(func(k, v any) bool {
		v.(*sql.Stmt).Close()
		s.cache.Delete(k)
		return true
	})
}

// handle is the dbsqlc.DBTX a generated query runs on.
type handle struct {
	db    dbsqlc.DBTX
	rw    *rewriter   // nil for the default table
	stmts *statements // nil: run statements unprepared
	tx    *sql.Tx     // set when db is a transaction on stmts.pool
}

// on returns the handle for running queries on db: the Locker's own handle,
// or a transaction the Locker began on it (tx).
func (l *Locker) on(db dbsqlc.DBTX, tx *sql.Tx) handle {
	return handle{db: db, rw: l.rw, stmts: l.stmts, tx: tx}
}

// onCaller returns the handle for running queries in a caller's transaction,
// which may belong to another pool: no prepared statements there.
func (l *Locker) onCaller(tx *sql.Tx) handle {
	return handle{db: tx, rw: l.rw}
}

func (h handle) text(query string) string {
	if h.rw == nil {
		return query
	}
	return h.rw.rewrite(query)
}

// stmt returns the prepared statement to run query with, bound to the
// handle's transaction if it has one, or nil to run it unprepared. In a
// transaction it only uses a statement prepared beforehand (see
// Locker.prepare): preparing needs a second connection of the pool, which
// may have no other.
func (h handle) stmt(ctx context.Context, query string) *sql.Stmt {
	if h.stmts == nil {
		return nil
	}
	if h.tx == nil {
		return h.stmts.get(ctx, query)
	}
	s := h.stmts.cached(query)
	if s == nil {
		return nil
	}
	return h.tx.StmtContext(ctx, s) // closed with the transaction
}

// prepare prepares query (generated text, default names) on the pool ahead
// of a transaction that will run it.
func (l *Locker) prepare(ctx context.Context, query string) {
	if l.stmts != nil {
		h := l.on(l.db, nil)
		l.stmts.get(ctx, h.text(query))
	}
}

func (h handle) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	query = h.text(query)
	if s := h.stmt(ctx, query); s != nil {
		return s.ExecContext(ctx, args...)
	}
	return h.db.ExecContext(ctx, query, args...)
}

func (h handle) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return h.db.PrepareContext(ctx, h.text(query))
}

func (h handle) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	query = h.text(query)
	if s := h.stmt(ctx, query); s != nil {
		return s.QueryContext(ctx, args...)
	}
	return h.db.QueryContext(ctx, query, args...)
}

func (h handle) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	query = h.text(query)
	if s := h.stmt(ctx, query); s != nil {
		return s.QueryRowContext(ctx, args...)
	}
	return h.db.QueryRowContext(ctx, query, args...)
}

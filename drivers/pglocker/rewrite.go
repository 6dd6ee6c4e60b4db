package pglocker

import (
	"context"
	"database/sql"
	"sync"

	"github.com/dlock-go/dlock/drivers/pglocker/internal/dbsqlc"
	"github.com/dlock-go/dlock/migrations"
)

// rewriter puts a configured table's quoted names into the generated SQL
// text, which names the default table. Each distinct statement is rewritten
// once and cached.
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

// wrap returns db as the generated queries see it: unchanged for the default
// table, otherwise rewriting each statement's text on the way through.
func (l *Locker) wrap(db dbsqlc.DBTX) dbsqlc.DBTX {
	if l.rw == nil {
		return db
	}
	return rewritingDB{db: db, rw: l.rw}
}

// rewritingDB is a dbsqlc.DBTX whose statements are rewritten by rw.
type rewritingDB struct {
	db dbsqlc.DBTX
	rw *rewriter
}

func (r rewritingDB) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return r.db.ExecContext(ctx, r.rw.rewrite(query), args...)
}

func (r rewritingDB) PrepareContext(ctx context.Context, query string) (*sql.Stmt, error) {
	return r.db.PrepareContext(ctx, r.rw.rewrite(query))
}

func (r rewritingDB) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return r.db.QueryContext(ctx, r.rw.rewrite(query), args...)
}

func (r rewritingDB) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return r.db.QueryRowContext(ctx, r.rw.rewrite(query), args...)
}

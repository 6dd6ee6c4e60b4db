// Package pglocker stores dlock's locks in PostgreSQL through database/sql.
//
// Each lock is a row of a lock table (default dlock_locks; create it with the
// migrations package or the goose CLI). The package is documented and tested
// with lib/pq; pgx's stdlib driver works as well:
//
//	db, err := sql.Open("postgres", "postgres://app@db/app?sslmode=disable")
//	if err != nil { ... }
//	if err := migrations.Up(ctx, db); err != nil { ... }
//	pg, err := pglocker.New(db)
//	if err != nil { ... }
//	f, err := locker.NewFactory(pg)
//
// # Guarantees
//
// Acquire is a single INSERT … ON CONFLICT (key) DO UPDATE … WHERE the row
// has expired, run in a REPEATABLE READ transaction, so a live lease is never
// overwritten and two acquirers never both win: the loser of a race gets
// [locker.ErrNotObtained] (PostgreSQL's serialization failure 40001, unique
// violation 23505 and deadlock 40P01 are reported that way, wrapping the
// server's error). Expiry is decided by the server's clock
// (statement_timestamp(), which is now() in a one-statement transaction), never
// the client's. TTLs are sent as whole milliseconds, rounded up.
//
// With [SingleStatement] the same statement runs on its own, in autocommit,
// at READ COMMITTED (the server's default): ON CONFLICT DO UPDATE locks the
// conflicting row and evaluates the WHERE against its latest committed
// version, so a live lease is still never overwritten, and a lost race is
// simply no row (ErrNotObtained) instead of a serialization failure. The
// statement's implicit transaction holds the key's advisory lock (below)
// until it commits, so tokens are ordered as in a transaction. It is one
// round trip instead of three (BEGIN, the statement, COMMIT): on one
// connection with lib/pq and prepared statements, a lock and unlock took
// about 1.1 times as long as a bare prepared upsert and delete, against 1.7
// times in a transaction (0.40–0.46 ms against 0.65–0.70 ms, medians of
// interleaved runs on a local server). A losing acquirer also keeps the row lock that ON
// CONFLICT took only until its statement ends, not until its ROLLBACK
// arrives, so the holder's refresh and release never wait for a loser's
// round trip. The conformance suite passes in both modes. The default stays
// the REPEATABLE READ transaction, whose isolation does not depend on the
// session's default_transaction_isolation (at SERIALIZABLE, the single
// statement's lost races are serialization failures again, still reported
// as ErrNotObtained).
//
// Fencing tokens come from a sequence (dlock_locks_token_seq), so they keep
// increasing across release, expiry, takeover and [Locker.Purge]; tokens of
// one key are drawn under a transaction-level advisory lock on a hash of the
// key, so a token drawn by a stalled acquirer can never be granted after a
// larger one. Tokens are unique per table, not only per key. Rolling the
// migrations down drops the sequence: tokens restart after a new Up.
//
// Release deletes the caller's row even when its lease has already expired,
// but then reports [locker.ErrNotHeld]; another owner's row is never touched.
// Expired rows of keys nobody releases stay until they are taken over or
// removed by Purge.
//
// [Locker.Transfer] hands a live lease from its owner straight to another
// in one UPDATE of the row, with a fresh TTL and a token drawn as Acquire
// draws its own, so tokens keep increasing across acquisitions and
// transfers; the key is never free, so nothing is notified.
//
// # Wake-on-release
//
// With [Notify], Release also notifies (pg_notify, in the same statement,
// only when it deleted a row) on a channel of the lock table, named after
// it ("dlock_locks.released"; a long name is shortened with a hash to fit
// PostgreSQL's 63 bytes), with the key as the payload. The Locker
// implements [locker.Watcher]: a [locker.Lock] call waiting for a held key
// makes its next attempt as soon as the key is released, instead of at its
// next poll. Every key watched through one Locker shares one connection,
// which the Locker opens itself with lib/pq from the Notify connection
// string on the first wait (never one of the pool's), LISTENs on, and keeps
// until [Locker.Close]; lost, it is reconnected with backoff, and every
// waiter is then woken, since a release may have gone unheard.
// Notifications are hints: an expiry sends none, a waiter still polls at
// its interval, and while the connection is down waiters simply poll.
//
// A notification is queued when the release commits; PostgreSQL serialises
// the commits of notifying transactions of a database, which caps releases
// per second under heavy parallel use. A full notification queue (a listener
// somewhere in the database that does not read fills it; the Locker's reads
// continuously) makes commits that notify fail, so Release stops notifying
// while the queue is more than half full: releases never fail for it, and
// waiters poll. Without Notify, Release runs the plain DELETE, nothing is
// listened to, and Watch fails at once, so waiting Lock calls poll. Behind PgBouncer in transaction mode, give Notify a
// connection string that reaches the server directly: LISTEN needs a
// session.
//
// [Locker.Fence] guards a write in the caller's own transaction: it checks
// that an acquisition is still live and keeps the lock row from being taken
// over until the transaction ends, so a write that commits was made while the
// lease was held.
//
// # Connections
//
// New uses the handle it is given as is and changes no session setting on
// it. With a *sql.DB or *sql.Conn, Acquire opens its own short transaction
// (unless [SingleStatement]) and the other statements run on their own
// (autocommit). With a *sql.Tx,
// every statement runs inside the caller's transaction, at its isolation
// level: nothing is visible to other clients before it commits, and an
// error (a lost race under REPEATABLE READ, for instance) aborts it.
//
// The table name is configurable with [Table], schema-qualified if need be,
// and always quoted; it is substituted into the SQL text at run time. On a
// lib/pq pool the statements are prepared once per connection (see
// [Prepared]).
//
// # Limits
//
// A lease is only as good as the server that holds it: a failover to a
// replica that had not received the grant can hand the key out again (the
// fencing token still tells the two holders apart if the resource checks it).
// Acquire takes a transaction-level advisory lock on a 64-bit hash of the key
// (pg_advisory_xact_lock(hashtextextended(key, 0))), which shares its key
// space with the application's own advisory locks: a collision, of chance
// 2^-64 per pair, only makes one wait for the other. Rows are never deleted
// by expiry alone; call [Locker.Purge] now and then if many distinct keys
// are used once.
package pglocker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/lib/pq" // the documented driver, registered as "postgres" for Open

	"github.com/dlock-go/dlock/drivers/pglocker/internal/dbsqlc"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
)

var (
	_ locker.Locker     = (*Locker)(nil)
	_ locker.Purger     = (*Locker)(nil)
	_ locker.Transferer = (*Locker)(nil)
)

// DB is the database handle New accepts: a *sql.DB, a *sql.Conn or a
// *sql.Tx, opened with any PostgreSQL driver for database/sql.
type DB interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	PrepareContext(ctx context.Context, query string) (*sql.Stmt, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// beginner is implemented by the handles that can open a transaction of their
// own (*sql.DB and *sql.Conn, not *sql.Tx).
type beginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

// Option configures New and Open.
type Option func(*config)

type config struct {
	table     string
	prepared  *bool // nil: only with lib/pq
	single    bool
	notify    bool
	notifyDSN string
}

// Table sets the lock table, optionally schema-qualified ("app.locks"). The
// default is dlock_locks. The name is used exactly as written (it is quoted,
// so it is case-sensitive); see migrations.ParseTable for the names
// accepted. A name that cannot be used makes New and Open return an error
// matching locker.ErrInvalidOption. Create the table with
// migrations.Up(ctx, db, migrations.Table(name)).
func Table(name string) Option {
	return func(c *config) { c.table = name }
}

// Prepared sets whether a Locker on a *sql.DB prepares its statements, once
// per connection of the pool, and runs them by name. By default it does when
// the pool's driver is lib/pq, which otherwise spends two round trips on
// every statement with parameters, and does not with other drivers (pgx
// caches prepared statements by itself). Pass false for a connection pooler
// that cannot keep prepared statements, such as PgBouncer before 1.21 in
// transaction mode. On a *sql.Conn or *sql.Tx statements are never prepared.
func Prepared(enabled bool) Option {
	return func(c *config) { c.prepared = &enabled }
}

// SingleStatement sets whether Acquire, on a *sql.DB or *sql.Conn, runs as a
// single statement on its own (autocommit, at the session's isolation level,
// READ COMMITTED unless configured otherwise) instead of in a REPEATABLE READ
// transaction of its own, the default. It saves the BEGIN and COMMIT round
// trips (one round trip instead of three with prepared statements), a
// losing acquirer never holds the row lock longer than its statement, and
// the race for a key is decided without serialization failures. Both modes
// give the same guarantees (see the package documentation). On a *sql.Tx
// the statement always runs in the caller's transaction.
func SingleStatement(enabled bool) Option {
	return func(c *config) { c.single = enabled }
}

// Locker is a [locker.Locker], [locker.Purger], [locker.Transferer] and
// [locker.Watcher] on a PostgreSQL table. It is safe for concurrent use.
type Locker struct {
	db     DB
	begin  beginner // nil when db is a caller's transaction
	q      *dbsqlc.Queries
	rw     *rewriter   // nil for the default table
	stmts  *statements // nil unless db is a *sql.DB and Prepared is on
	closer io.Closer   // the private pool of Open
	single bool        // Acquire without a transaction of its own
	lis    *listener   // nil without Notify
}

// New returns a Locker that runs its statements on db, a *sql.DB, *sql.Conn
// or *sql.Tx. db is used as is: New opens nothing, checks nothing on the
// server and changes no session setting. With a *sql.Tx every statement runs
// inside that transaction (see the package documentation).
//
// New returns an error matching locker.ErrInvalidOption for a nil db, a
// table name that cannot be used or a bad [Notify] connection string.
func New(db DB, opts ...Option) (*Locker, error) {
	return newLocker(db, "", opts)
}

func newLocker(db DB, openDSN string, opts []Option) (*Locker, error) {
	if isNil(db) {
		return nil, fmt.Errorf("%w: pglocker: nil database handle", locker.ErrInvalidOption)
	}
	cfg := config{table: migrations.DefaultTable}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	names, err := migrations.ParseTable(cfg.table)
	if err != nil {
		return nil, fmt.Errorf("pglocker: %w", err)
	}
	l := &Locker{db: db, q: dbsqlc.New(), single: cfg.single}
	if cfg.notify {
		dsn := cfg.notifyDSN
		if dsn == "" {
			dsn = openDSN
		}
		if dsn == "" {
			return nil, fmt.Errorf("%w: pglocker: Notify needs a connection string (an empty one only with Open)", locker.ErrInvalidOption)
		}
		if _, err := pq.NewConnector(dsn); err != nil {
			return nil, fmt.Errorf("%w: pglocker: Notify: %v", locker.ErrInvalidOption, err)
		}
		l.lis = newListener(dsn, cfg.table)
	}
	if b, ok := db.(beginner); ok {
		l.begin = b
	}
	if !names.IsDefault() {
		l.rw = &rewriter{names: names}
	}
	if pool, ok := db.(*sql.DB); ok {
		_, libpq := pool.Driver().(*pq.Driver)
		if cfg.prepared == nil && libpq || cfg.prepared != nil && *cfg.prepared {
			l.stmts = &statements{pool: pool}
		}
	}
	return l, nil
}

// Open opens a private connection pool with lib/pq for the PostgreSQL URL or
// key=value connection string dsn, and returns a Locker on it; Close closes
// the pool. No connection is made until the first call. Open returns an error
// matching locker.ErrInvalidOption for a bad option.
func Open(dsn string, opts ...Option) (*Locker, error) {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		return nil, fmt.Errorf("pglocker: open: %w", err)
	}
	l, err := newLocker(db, dsn, opts)
	if err != nil {
		db.Close()
		return nil, err
	}
	l.closer = db
	return l, nil
}

// Close closes the listener connection of [Notify] (waiting for its
// goroutines to exit, at most about a second if it is reconnecting), releases
// the statements the Locker prepared and closes the connection pool that Open
// opened, waiting for statements in progress. It leaves the handle given to
// New open: that is the caller's to close (and a Locker from New goes on
// working after Close, unprepared, its Release still notifying, but Watch
// fails). It returns the first close error, if any.
func (l *Locker) Close() error {
	var errs []error
	if l.lis != nil {
		errs = append(errs, l.lis.close())
	}
	if l.stmts != nil {
		l.stmts.close()
	}
	if l.closer != nil {
		errs = append(errs, l.closer.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pglocker: close: %w", err)
	}
	return nil
}

// Acquire makes one attempt to take key for owner for ttl. It succeeds if key
// is free or its lease has expired by the server's clock, and returns the new
// fencing token with Validity equal to ttl.
//
// It returns an error matching locker.ErrNotObtained when a live lease is
// held or a concurrent acquirer won the race, locker.ErrInvalidKey or
// locker.ErrInvalidOption for bad arguments (before any I/O), and a wrapped
// database error (matching ctx's error when ctx ended) otherwise.
func (l *Locker) Acquire(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	const op = "acquire"
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, interpretError(ctx, op, err)
	}
	arg := dbsqlc.AcquireParams{Key: key, Owner: owner, TtlMs: millis(ttl)}
	var token int64
	var err error
	if l.begin == nil || l.single {
		token, err = l.q.Acquire(ctx, l.on(l.db, nil), arg)
	} else {
		token, err = l.acquireTx(ctx, arg)
	}
	if err != nil {
		return locker.Lease{}, interpretError(ctx, op, err)
	}
	return locker.Lease{Token: token, Validity: ttl}, nil
}

// acquireTx runs the acquire statement in a REPEATABLE READ transaction of
// its own, so that a row changed by a concurrent acquirer after the
// statement's snapshot is a serialization failure rather than a second grant.
// The isolation level is a property of this transaction only.
func (l *Locker) acquireTx(ctx context.Context, arg dbsqlc.AcquireParams) (int64, error) {
	l.prepare(ctx, dbsqlc.Acquire)
	tx, err := l.begin.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelRepeatableRead})
	if err != nil {
		return 0, err
	}
	token, err := l.q.Acquire(ctx, l.on(tx, tx), arg)
	if err != nil {
		_ = tx.Rollback()
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return token, nil
}

// Refresh extends owner's live lease on key to ttl from now (server clock),
// keeping its token, and returns the lease with Validity equal to ttl.
//
// It returns an error matching locker.ErrNotHeld when owner holds no live
// lease on key (never acquired, released, expired or taken over),
// locker.ErrInvalidKey or locker.ErrInvalidOption for bad arguments, and a
// wrapped database error otherwise.
func (l *Locker) Refresh(ctx context.Context, key, owner string, ttl time.Duration) (locker.Lease, error) {
	const op = "refresh"
	if err := locker.CheckArgs(key, owner, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, interpretError(ctx, op, err)
	}
	token, err := l.q.Refresh(ctx, l.on(l.db, nil), dbsqlc.RefreshParams{Key: key, Owner: owner, TtlMs: millis(ttl)})
	if err != nil {
		return locker.Lease{}, interpretError(ctx, op, err)
	}
	return locker.Lease{Token: token, Validity: ttl}, nil
}

// Transfer gives key, held by from, to owner to for ttl from now (server
// clock) with a new fencing token, strictly greater than every token handed
// out for key before, in one UPDATE of the key's row: the key is never free,
// and no [Notify] notification is sent. It returns the lease with Validity
// equal to ttl. The statement runs on its own (autocommit) in both modes,
// the default and [SingleStatement]; with a *sql.Tx it runs in the caller's
// transaction, as Acquire does, and takes effect when that commits. Like
// Acquire, it draws its token under the key's advisory lock (see the package
// documentation), so it waits for an acquirer of the key that is drawing
// one.
//
// It returns an error matching locker.ErrNotHeld, changing nothing, when
// from holds no live lease on key; locker.ErrInvalidKey or
// locker.ErrInvalidOption for bad arguments (before any I/O); an error
// matching locker.ErrNotObtained, changing nothing, for a serialization
// failure (possible only at REPEATABLE READ or above: in a caller's
// transaction, or under such a session default); and a wrapped database
// error otherwise.
func (l *Locker) Transfer(ctx context.Context, key, from, to string, ttl time.Duration) (locker.Lease, error) {
	const op = "transfer"
	if err := locker.CheckArgs(key, to, ttl); err != nil {
		return locker.Lease{}, err
	}
	if err := locker.CheckOwner(key, from); err != nil {
		return locker.Lease{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Lease{}, interpretError(ctx, op, err)
	}
	token, err := l.q.Transfer(ctx, l.on(l.db, nil), dbsqlc.TransferParams{Key: key, FromOwner: from, ToOwner: to, TtlMs: millis(ttl)})
	if err != nil {
		return locker.Lease{}, interpretError(ctx, op, err)
	}
	return locker.Lease{Token: token, Validity: ttl}, nil
}

// Release deletes owner's row for key (with [Notify], and a row deleted,
// notifying the key's waiters in the same statement). It returns nil if
// owner's lease was live, and an error matching locker.ErrNotHeld if owner
// had no row or only an expired one (which is deleted all the same). Another owner's row is
// never touched. Bad arguments yield locker.ErrInvalidKey or
// locker.ErrInvalidOption, anything else a wrapped database error.
func (l *Locker) Release(ctx context.Context, key, owner string) error {
	const op = "release"
	if err := locker.CheckOwner(key, owner); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return interpretError(ctx, op, err)
	}
	var live bool
	var err error
	if l.lis == nil {
		live, err = l.q.Release(ctx, l.on(l.db, nil), dbsqlc.ReleaseParams{Key: key, Owner: owner})
	} else {
		live, err = l.q.ReleaseNotify(ctx, l.on(l.db, nil), dbsqlc.ReleaseNotifyParams{Channel: l.lis.channel, Key: key, Owner: owner})
	}
	if err != nil {
		return interpretError(ctx, op, err)
	}
	if !live {
		return fmt.Errorf("pglocker: release: lease had expired: %w", locker.ErrNotHeld)
	}
	return nil
}

// Inspect reports the live holder of key with its token and remaining TTL by
// the server's clock. A free or expired key yields Info{Key: key} and a nil
// error. It returns locker.ErrInvalidKey for a bad key and a wrapped database
// error otherwise.
func (l *Locker) Inspect(ctx context.Context, key string) (locker.Info, error) {
	const op = "inspect"
	if err := locker.ValidateKey(key); err != nil {
		return locker.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return locker.Info{}, interpretError(ctx, op, err)
	}
	row, err := l.q.Inspect(ctx, l.on(l.db, nil), key)
	if errors.Is(err, sql.ErrNoRows) {
		return locker.Info{Key: key}, nil
	}
	if err != nil {
		return locker.Info{}, interpretError(ctx, op, err)
	}
	return locker.Info{
		Key:   key,
		Owner: row.Owner,
		Token: row.Token,
		TTL:   time.Duration(row.TtlUs) * time.Microsecond,
	}, nil
}

// Purge deletes the rows of leases that expired at least olderThan ago (by
// the server's clock) and returns how many it deleted. Live leases are never
// touched and tokens are not reset. A negative olderThan yields an error
// matching locker.ErrInvalidOption; a failure, a wrapped database error.
func (l *Locker) Purge(ctx context.Context, olderThan time.Duration) (int64, error) {
	const op = "purge"
	if olderThan < 0 {
		return 0, fmt.Errorf("%w: pglocker: purge: negative age %v", locker.ErrInvalidOption, olderThan)
	}
	if err := ctx.Err(); err != nil {
		return 0, interpretError(ctx, op, err)
	}
	n, err := l.q.Purge(ctx, l.on(l.db, nil), millis(olderThan))
	if err != nil {
		return 0, interpretError(ctx, op, err)
	}
	return n, nil
}

// Fence guards a write made in the caller's transaction tx with the lease of
// one acquisition, named by its key and fencing token (Lease.Token). It checks,
// by the server's clock, that the lease is still live, and share-locks its
// row until tx ends: until then the lease cannot be taken over, refreshed,
// released or purged (those statements wait), so whatever tx writes and
// commits was written while the lease was held. Call it first in tx, before
// the guarded writes, and keep tx short, since a refresh of the lease waits
// for it as well.
//
// Fence returns nil when the lease is live, an error matching
// locker.ErrNotHeld when it has ended (expired, released, taken over), and
// locker.ErrNotObtained when tx runs at REPEATABLE READ or above and the row
// changed after tx's snapshot was taken (retry the transaction). Bad
// arguments yield locker.ErrInvalidKey or locker.ErrInvalidOption; any
// other failure a wrapped database error. After an error, roll tx back.
func (l *Locker) Fence(ctx context.Context, tx *sql.Tx, key string, token int64) error {
	const op = "fence"
	if err := locker.ValidateKey(key); err != nil {
		return err
	}
	if tx == nil {
		return fmt.Errorf("%w: pglocker: fence: nil transaction", locker.ErrInvalidOption)
	}
	if err := ctx.Err(); err != nil {
		return interpretError(ctx, op, err)
	}
	if _, err := l.q.Fence(ctx, l.onCaller(tx), dbsqlc.FenceParams{Key: key, Token: token}); err != nil {
		return interpretError(ctx, op, err)
	}
	return nil
}

// millis converts d to whole milliseconds, rounding up, so that a lease the
// server grants is never shorter than the one the client trusts.
func millis(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func isNil(db DB) bool {
	switch v := db.(type) {
	case nil:
		return true
	case *sql.DB:
		return v == nil
	case *sql.Conn:
		return v == nil
	case *sql.Tx:
		return v == nil
	}
	return false
}

package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
	"time"

	"cirello.io/pglock"
	"github.com/bsm/redislock"
	"github.com/go-redsync/redsync/v4"
	redsyncredis "github.com/go-redsync/redsync/v4/redis"
	redsyncredigo "github.com/go-redsync/redsync/v4/redis/redigo"
	"github.com/gomodule/redigo/redis"
	_ "github.com/lib/pq"
	goredis "github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/dlock-go/dlock/drivers/mongolocker"
	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
)

// Backends, in report order.
const (
	bPostgres = "PostgreSQL"
	bRedis    = "Redis"
	bRedlock  = "Redlock ×3"
	bMongo    = "MongoDB (FerretDB)"
)

var backends = []string{bPostgres, bRedis, bRedlock, bMongo}

// Kinds of subject.
const (
	kFloor  = "floor"
	kDlock  = "dlock"
	kAnchor = "anchor"
)

// env is where the servers are and the settings shared by every subject.
type env struct {
	PostgresURL string
	RedisURL    string
	RedlockURLs []string // the first three are used
	MongoURL    string

	TTL   time.Duration // lease of every lock
	Conns int           // pool size per subject
}

// subject is one library (or floor) on one backend.
type subject struct {
	Name     string
	Backend  string
	Kind     string
	Settings string
	open     func(ctx context.Context, e *env) (*client, error)
}

// client is an opened subject.
type client struct {
	// newMutex returns a handle on key whose Lock retries every poll
	// (±50%, or the library's nearest equivalent).
	newMutex func(key string, poll time.Duration) mutex
	close    func()
}

func subjects() []subject {
	return []subject{
		{Name: "raw lib/pq", Backend: bPostgres, Kind: kFloor, open: openRawPG,
			Settings: "prepared autocommit `INSERT … ON CONFLICT DO UPDATE … WHERE expired` + `DELETE … WHERE key AND owner`; waiters retry every poll ±50%"},
		{Name: "dlock pglocker", Backend: bPostgres, Kind: kDlock, open: openDlockPG(false, false),
			Settings: "pglocker.New(*sql.DB), the default configuration: acquire in a REPEATABLE READ transaction, prepared statements, no notifications (waiters poll); Retries(Unlimited), WithBackoff(Jitter(poll, 0.5))"},
		{Name: "dlock pglocker single", Backend: bPostgres, Kind: kDlock, open: openDlockPG(true, false),
			Settings: "as above with SingleStatement(true): acquire is one autocommit statement"},
		{Name: "dlock pglocker single+notify", Backend: bPostgres, Kind: kDlock, open: openDlockPG(true, true),
			Settings: "as above with SingleStatement(true) and Notify(dsn): release notifies, waiters are woken by LISTEN on a connection of the Locker's own"},
		{Name: "cirello.io/pglock", Backend: bPostgres, Kind: kAnchor, open: openPglock,
			Settings: "AcquireContext with FailIfLocked() in a loop, waiting poll ±50% between attempts (its blocking acquire sleeps a whole lease between attempts); heartbeat off; release deletes the row"},

		{Name: "raw redigo", Backend: bRedis, Kind: kFloor, open: openRawRedis(1),
			Settings: "`SET key owner NX PX ttl` + EVALSHA compare-and-delete; waiters retry every poll ±50%"},
		{Name: "dlock redislocker", Backend: bRedis, Kind: kDlock, open: openDlockRedis(1),
			Settings: "redislocker.New(*redis.Pool); Retries(Unlimited), WithBackoff(Jitter(poll, 0.5)); waiters are also woken on release when the driver is a locker.Watcher"},
		{Name: "redsync (redigo)", Backend: bRedis, Kind: kAnchor, open: openRedsync(1),
			Settings: "WithTries(MaxInt32), WithRetryDelayFunc(poll ±50%), WithExpiry(ttl); fail-fast off"},
		{Name: "bsm/redislock (go-redis)", Backend: bRedis, Kind: kAnchor, open: openRedislock,
			Settings: "Obtain with a RetryStrategy of poll ±50% until the context ends"},

		{Name: "raw redigo ×3", Backend: bRedlock, Kind: kFloor, open: openRawRedis(3),
			Settings: "SET NX PX on 3 servers in parallel, majority wins (else delete); EVALSHA compare-and-delete on all 3; waiters retry every poll ±50%"},
		{Name: "dlock redislocker Redlock", Backend: bRedlock, Kind: kDlock, open: openDlockRedis(3),
			Settings: "redislocker.NewRedlock(3 pools); Retries(Unlimited), WithBackoff(Jitter(poll, 0.5)); waiters are also woken on release when the driver is a locker.Watcher"},
		{Name: "redsync ×3 (redigo)", Backend: bRedlock, Kind: kAnchor, open: openRedsync(3),
			Settings: "3 pools; WithTries(MaxInt32), WithRetryDelayFunc(poll ±50%), WithExpiry(ttl); fail-fast off (on, it released with errors and overlapped on this machine)"},

		{Name: "raw mongo-driver", Backend: bMongo, Kind: kFloor, open: openRawMongo,
			Settings: "insertOne({_id: key, owner, expiresAt}) + deleteOne({_id, owner}); waiters retry every poll ±50%"},
		{Name: "dlock mongolocker", Backend: bMongo, Kind: kDlock, open: openDlockMongo,
			Settings: "mongolocker.New(collection); Retries(Unlimited), WithBackoff(Jitter(poll, 0.5))"},
	}
}

// --- PostgreSQL ---

func openPGDB(ctx context.Context, e *env) (*sql.DB, error) {
	if e.PostgresURL == "" {
		return nil, errors.New("no PostgreSQL URL")
	}
	db, err := sql.Open("postgres", e.PostgresURL)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(e.Conns)
	db.SetMaxIdleConns(e.Conns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

func openRawPG(ctx context.Context, e *env) (*client, error) {
	db, err := openPGDB(ctx, e)
	if err != nil {
		return nil, err
	}
	s, err := prepareRawPG(ctx, db)
	if err != nil {
		db.Close()
		return nil, err
	}
	return &client{
		newMutex: func(key string, poll time.Duration) mutex {
			return &rawPG{s: s, key: key, owner: randomOwner(), ttlMS: e.TTL.Milliseconds(), poll: poll}
		},
		close: func() { db.Close() },
	}, nil
}

func openDlockPG(single, notify bool) func(context.Context, *env) (*client, error) {
	return func(ctx context.Context, e *env) (*client, error) {
		db, err := openPGDB(ctx, e)
		if err != nil {
			return nil, err
		}
		// A table of its own for each configuration, and so a notification
		// channel of its own.
		table := "dlock_bench_locks"
		opts := []pglocker.Option{pglocker.SingleStatement(single)}
		if single {
			table += "_single"
		}
		if notify {
			table += "_notify"
			opts = append(opts, pglocker.Notify(e.PostgresURL))
		}
		if err := migrations.Up(ctx, db, migrations.Table(table)); err != nil {
			db.Close()
			return nil, err
		}
		if _, err := db.ExecContext(ctx, `DELETE FROM `+table); err != nil {
			db.Close()
			return nil, err
		}
		l, err := pglocker.New(db, append(opts, pglocker.Table(table))...)
		if err != nil {
			db.Close()
			return nil, err
		}
		return dlockClient(l, e, func() { l.Close(); db.Close() })
	}
}

// dlockClient makes locks through the public locker API.
func dlockClient(l locker.Locker, e *env, closeFn func()) (*client, error) {
	f, err := locker.NewFactory(l, locker.TTL(e.TTL), locker.Retries(locker.Unlimited))
	if err != nil {
		closeFn()
		return nil, err
	}
	return &client{
		newMutex: func(key string, poll time.Duration) mutex {
			return dlockMutex{f.NewLock(key, locker.WithBackoff(locker.Jitter(poll, 0.5)))}
		},
		close: closeFn,
	}, nil
}

type dlockMutex struct{ l *locker.Lock }

func (m dlockMutex) Lock(ctx context.Context) error   { return m.l.Lock(ctx) }
func (m dlockMutex) Unlock(ctx context.Context) error { return m.l.Unlock(ctx) }

const pglockTable = "dlock_bench_pglock"

func openPglock(ctx context.Context, e *env) (*client, error) {
	db, err := openPGDB(ctx, e)
	if err != nil {
		return nil, err
	}
	c, err := pglock.New(db,
		pglock.WithCustomTable(pglockTable),
		pglock.WithLeaseDuration(e.TTL),
		pglock.WithHeartbeatFrequency(0))
	if err != nil {
		db.Close()
		return nil, err
	}
	if err := c.TryCreateTable(); err != nil {
		db.Close()
		return nil, err
	}
	if _, err := db.ExecContext(ctx, `DELETE FROM `+pglockTable); err != nil {
		db.Close()
		return nil, err
	}
	return &client{
		newMutex: func(key string, poll time.Duration) mutex { return &pglockMutex{c: c, key: key, poll: poll} },
		close:    func() { db.Close() },
	}, nil
}

type pglockMutex struct {
	c    *pglock.Client
	key  string
	poll time.Duration
	held *pglock.Lock
}

func (m *pglockMutex) Lock(ctx context.Context) error {
	return pollLock(ctx, m.poll, func(ctx context.Context) error {
		l, err := m.c.AcquireContext(ctx, m.key, pglock.FailIfLocked())
		if errors.Is(err, pglock.ErrNotAcquired) {
			return errBusy
		}
		if err != nil {
			return err
		}
		m.held = l
		return nil
	})
}

func (m *pglockMutex) Unlock(ctx context.Context) error {
	l := m.held
	m.held = nil
	if l == nil {
		return errors.New("not held")
	}
	return m.c.ReleaseContext(ctx, l)
}

// --- Redis ---

func redisPool(url string, size int) *redis.Pool {
	return &redis.Pool{
		DialContext: func(ctx context.Context) (redis.Conn, error) {
			return redis.DialURLContext(ctx, url, redis.DialConnectTimeout(5*time.Second))
		},
		MaxIdle:   size,
		MaxActive: 0,
	}
}

// redisPools returns n pools: the single server, or the first n Redlock servers.
func redisPools(ctx context.Context, e *env, n int) ([]*redis.Pool, error) {
	urls := []string{e.RedisURL}
	if n > 1 {
		if len(e.RedlockURLs) < n {
			return nil, fmt.Errorf("%d Redlock servers needed, DLOCK_TEST_REDLOCK_URLS has %d", n, len(e.RedlockURLs))
		}
		urls = e.RedlockURLs[:n]
	}
	if urls[0] == "" {
		return nil, errors.New("no Redis URL")
	}
	pools := make([]*redis.Pool, n)
	for i, u := range urls {
		pools[i] = redisPool(u, e.Conns)
		c, err := pools[i].GetContext(ctx)
		if err == nil {
			_, err = redis.DoContext(c, ctx, "PING")
			c.Close()
		}
		if err != nil {
			closePools(pools[:i+1])
			return nil, fmt.Errorf("%s: %w", u, err)
		}
	}
	return pools, nil
}

func closePools(pools []*redis.Pool) {
	for _, p := range pools {
		p.Close()
	}
}

func openRawRedis(n int) func(context.Context, *env) (*client, error) {
	return func(ctx context.Context, e *env) (*client, error) {
		pools, err := redisPools(ctx, e, n)
		if err != nil {
			return nil, err
		}
		return &client{
			newMutex: func(key string, poll time.Duration) mutex {
				return &rawRedis{pools: pools, key: "raw:" + key, owner: randomOwner(), ttlMS: e.TTL.Milliseconds(), poll: poll}
			},
			close: func() { closePools(pools) },
		}, nil
	}
}

func openDlockRedis(n int) func(context.Context, *env) (*client, error) {
	return func(ctx context.Context, e *env) (*client, error) {
		pools, err := redisPools(ctx, e, n)
		if err != nil {
			return nil, err
		}
		var l *redislocker.Locker
		if n == 1 {
			l, err = redislocker.New(pools[0])
		} else {
			ps := make([]redislocker.Pool, n)
			for i, p := range pools {
				ps[i] = p
			}
			l, err = redislocker.NewRedlock(ps)
		}
		if err != nil {
			closePools(pools)
			return nil, err
		}
		return dlockClient(l, e, func() { l.Close(); closePools(pools) })
	}
}

func openRedsync(n int) func(context.Context, *env) (*client, error) {
	return func(ctx context.Context, e *env) (*client, error) {
		pools, err := redisPools(ctx, e, n)
		if err != nil {
			return nil, err
		}
		rp := make([]redsyncredis.Pool, n)
		for i, p := range pools {
			rp[i] = redsyncredigo.NewPool(p)
		}
		rs := redsync.New(rp...)
		return &client{
			newMutex: func(key string, poll time.Duration) mutex {
				return &redsyncMutex{m: rs.NewMutex("redsync:"+key,
					redsync.WithExpiry(e.TTL),
					redsync.WithTries(math.MaxInt32),
					redsync.WithRetryDelayFunc(func(int) time.Duration { return jittered(poll) }))}
			},
			close: func() { closePools(pools) },
		}, nil
	}
}

type redsyncMutex struct{ m *redsync.Mutex }

func (m *redsyncMutex) Lock(ctx context.Context) error { return m.m.LockContext(ctx) }

func (m *redsyncMutex) Unlock(ctx context.Context) error {
	ok, err := m.m.UnlockContext(ctx)
	if err == nil && !ok {
		err = errors.New("redsync: unlock failed")
	}
	return err
}

func openRedislock(ctx context.Context, e *env) (*client, error) {
	if e.RedisURL == "" {
		return nil, errors.New("no Redis URL")
	}
	opt, err := goredis.ParseURL(e.RedisURL)
	if err != nil {
		return nil, err
	}
	opt.PoolSize = e.Conns
	rc := goredis.NewClient(opt)
	if err := rc.Ping(ctx).Err(); err != nil {
		rc.Close()
		return nil, err
	}
	c := redislock.New(rc)
	return &client{
		newMutex: func(key string, poll time.Duration) mutex {
			return &redislockMutex{c: c, key: "redislock:" + key, ttl: e.TTL, opt: &redislock.Options{RetryStrategy: jitterStrategy(poll)}}
		},
		close: func() { rc.Close() },
	}, nil
}

type jitterStrategy time.Duration

func (j jitterStrategy) NextBackoff() time.Duration { return jittered(time.Duration(j)) }

type redislockMutex struct {
	c    *redislock.Client
	key  string
	ttl  time.Duration
	opt  *redislock.Options
	held *redislock.Lock
}

func (m *redislockMutex) Lock(ctx context.Context) error {
	l, err := m.c.Obtain(ctx, m.key, m.ttl, m.opt)
	if err != nil {
		return err
	}
	m.held = l
	return nil
}

func (m *redislockMutex) Unlock(ctx context.Context) error {
	l := m.held
	m.held = nil
	if l == nil {
		return errors.New("not held")
	}
	return l.Release(ctx)
}

// --- MongoDB ---

const mongoDB = "dlock_bench"

func openMongo(ctx context.Context, e *env) (*mongo.Client, error) {
	if e.MongoURL == "" {
		return nil, errors.New("DLOCK_TEST_MONGO_URL unset")
	}
	mc, err := mongo.Connect(options.Client().ApplyURI(e.MongoURL).SetMaxPoolSize(uint64(e.Conns)))
	if err != nil {
		return nil, err
	}
	if err := mc.Ping(ctx, nil); err != nil {
		_ = mc.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	return mc, nil
}

func openRawMongo(ctx context.Context, e *env) (*client, error) {
	mc, err := openMongo(ctx, e)
	if err != nil {
		return nil, err
	}
	coll := mc.Database(mongoDB).Collection("raw")
	if _, err := coll.DeleteMany(ctx, map[string]any{}); err != nil {
		_ = mc.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	return &client{
		newMutex: func(key string, poll time.Duration) mutex {
			return &rawMongo{coll: coll, key: key, owner: randomOwner(), ttl: e.TTL, poll: poll}
		},
		close: func() { _ = mc.Disconnect(context.Background()) },
	}, nil
}

func openDlockMongo(ctx context.Context, e *env) (*client, error) {
	mc, err := openMongo(ctx, e)
	if err != nil {
		return nil, err
	}
	closeFn := func() { _ = mc.Disconnect(context.Background()) }
	coll := mc.Database(mongoDB).Collection("dlock")
	if _, err := coll.DeleteMany(ctx, map[string]any{}); err != nil {
		closeFn()
		return nil, err
	}
	l, err := mongolocker.New(coll)
	if err == nil {
		err = l.EnsureIndexes(ctx)
	}
	if err != nil {
		closeFn()
		return nil, err
	}
	return dlockClient(l, e, closeFn)
}

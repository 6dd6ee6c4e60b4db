package main

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/gomodule/redigo/redis"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// The raw floors: the least a client must do for a lock with a TTL and an
// owner check on each store, with no library in between. A waiting floor
// polls at the common interval with jitter.

func randomOwner() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// jittered returns d ± 50%, so that pollers do not move in lock step.
func jittered(d time.Duration) time.Duration {
	if d <= 0 {
		return 0
	}
	return d/2 + time.Duration(mrand.Int64N(int64(d)+1))
}

// pollLock calls try until it succeeds, fails with something other than
// errBusy, or ctx ends, sleeping poll (jittered) in between.
func pollLock(ctx context.Context, poll time.Duration, try func(context.Context) error) error {
	for {
		err := try(ctx)
		if !errors.Is(err, errBusy) {
			return err
		}
		if err := sleepCtx(ctx, jittered(poll)); err != nil {
			return err
		}
	}
}

// --- Redis: SET NX PX, and a Lua compare-and-delete (EVALSHA) ---

const rawReleaseSrc = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) end return 0`

var rawReleaseSHA = redis.NewScript(1, rawReleaseSrc).Hash()

// do sends one command, bounded by ctx's deadline through the socket's
// timeout. (redigo's DoContext would start a goroutine per command to watch
// ctx; a floor does without.)
func do(ctx context.Context, c redis.Conn, cmd string, args ...any) (any, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if dl, ok := ctx.Deadline(); ok {
		return redis.DoWithTimeout(c, max(time.Until(dl), time.Microsecond), cmd, args...)
	}
	return c.Do(cmd, args...)
}

type rawRedis struct {
	pools []*redis.Pool
	key   string
	owner string
	ttlMS int64
	poll  time.Duration
}

func (m *rawRedis) set(ctx context.Context, p *redis.Pool) (bool, error) {
	c, err := p.GetContext(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	_, err = redis.String(do(ctx, c, "SET", m.key, m.owner, "NX", "PX", m.ttlMS))
	if errors.Is(err, redis.ErrNil) {
		return false, nil
	}
	return err == nil, err
}

func (m *rawRedis) del(ctx context.Context, p *redis.Pool) error {
	c, err := p.GetContext(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = do(ctx, c, "EVALSHA", rawReleaseSHA, 1, m.key, m.owner)
	if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
		_, err = do(ctx, c, "EVAL", rawReleaseSrc, 1, m.key, m.owner)
	}
	return err
}

// each runs fn on every pool, in parallel when there are several, and
// returns how many succeeded and the first error.
func each(pools []*redis.Pool, fn func(*redis.Pool) (bool, error)) (int, error) {
	if len(pools) == 1 {
		ok, err := fn(pools[0])
		if ok {
			return 1, err
		}
		return 0, err
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		n     int
		first error
	)
	for _, p := range pools {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ok, err := fn(p)
			mu.Lock()
			if ok {
				n++
			}
			if err != nil && first == nil {
				first = err
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return n, first
}

func (m *rawRedis) try(ctx context.Context) error {
	n, err := each(m.pools, func(p *redis.Pool) (bool, error) { return m.set(ctx, p) })
	if n >= len(m.pools)/2+1 {
		return nil
	}
	if len(m.pools) > 1 && n > 0 {
		_ = m.Unlock(context.WithoutCancel(ctx))
	}
	if err != nil && n == 0 && len(m.pools) == 1 {
		return err
	}
	return errBusy
}

func (m *rawRedis) Lock(ctx context.Context) error { return pollLock(ctx, m.poll, m.try) }

func (m *rawRedis) Unlock(ctx context.Context) error {
	_, err := each(m.pools, func(p *redis.Pool) (bool, error) { return true, m.del(ctx, p) })
	return err
}

// --- PostgreSQL: autocommit upsert and delete, prepared ---

const rawPGTable = "dlock_bench_raw"

type rawPGStmts struct {
	acquire, release *sql.Stmt
}

func prepareRawPG(ctx context.Context, db *sql.DB) (*rawPGStmts, error) {
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS `+rawPGTable+` (
		key text PRIMARY KEY, owner text NOT NULL, expires_at timestamptz NOT NULL)`); err != nil {
		return nil, err
	}
	if _, err := db.ExecContext(ctx, `TRUNCATE `+rawPGTable); err != nil {
		return nil, err
	}
	acq, err := db.PrepareContext(ctx, `INSERT INTO `+rawPGTable+` AS t (key, owner, expires_at)
		VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
		ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
		WHERE t.expires_at <= now()`)
	if err != nil {
		return nil, err
	}
	rel, err := db.PrepareContext(ctx, `DELETE FROM `+rawPGTable+` WHERE key = $1 AND owner = $2`)
	if err != nil {
		return nil, err
	}
	return &rawPGStmts{acquire: acq, release: rel}, nil
}

type rawPG struct {
	s     *rawPGStmts
	key   string
	owner string
	ttlMS int64
	poll  time.Duration
}

func (m *rawPG) try(ctx context.Context) error {
	res, err := m.s.acquire.ExecContext(ctx, m.key, m.owner, m.ttlMS)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return errors.Join(errBusy, err)
	}
	return nil
}

func (m *rawPG) Lock(ctx context.Context) error { return pollLock(ctx, m.poll, m.try) }

func (m *rawPG) Unlock(ctx context.Context) error {
	_, err := m.s.release.ExecContext(ctx, m.key, m.owner)
	return err
}

// --- MongoDB: insertOne on a unique _id, deleteOne by _id and owner ---

type rawMongo struct {
	coll  *mongo.Collection
	key   string
	owner string
	ttl   time.Duration
	poll  time.Duration
}

func (m *rawMongo) try(ctx context.Context) error {
	_, err := m.coll.InsertOne(ctx, bson.D{
		{Key: "_id", Value: m.key},
		{Key: "owner", Value: m.owner},
		{Key: "expiresAt", Value: time.Now().Add(m.ttl)},
	})
	if mongo.IsDuplicateKeyError(err) {
		return errBusy
	}
	return err
}

func (m *rawMongo) Lock(ctx context.Context) error { return pollLock(ctx, m.poll, m.try) }

func (m *rawMongo) Unlock(ctx context.Context) error {
	res, err := m.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: m.key}, {Key: "owner", Value: m.owner}})
	if err == nil && res.DeletedCount != 1 {
		err = fmt.Errorf("deleted %d documents", res.DeletedCount)
	}
	return err
}

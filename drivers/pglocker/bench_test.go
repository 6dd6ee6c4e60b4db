package pglocker_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/migrations"
	"github.com/dlock-go/dlock/testutil"
)

// BenchmarkLockUnlock measures one acquire and one release through the
// driver on a single connection: the insert-on-conflict in a REPEATABLE READ
// transaction (mode=tx, the default) or on its own (mode=single, the
// SingleStatement option), then an autocommit delete (single+notify: the
// delete that also notifies); with statements prepared (the default with
// lib/pq) and not.
func BenchmarkLockUnlock(b *testing.B) {
	for _, sqlDriver := range sqlDrivers {
		for _, prepared := range []bool{true, false} {
			for _, single := range []bool{false, true} {
				mode := map[bool]string{false: "tx", true: "single"}[single]
				b.Run(fmt.Sprintf("driver=%s/prepared=%v/mode=%s", sqlDriver, prepared, mode), func(b *testing.B) {
					benchLockUnlock(b, sqlDriver, pglocker.Prepared(prepared), pglocker.SingleStatement(single))
				})
			}
		}
		b.Run(fmt.Sprintf("driver=%s/prepared=true/mode=single+notify", sqlDriver), func(b *testing.B) {
			url, _ := testutil.PostgresSchema(b)
			benchLockUnlock(b, sqlDriver, pglocker.SingleStatement(true), pglocker.Notify(url))
		})
	}
}

func benchLockUnlock(b *testing.B, sqlDriver string, opts ...pglocker.Option) {
	fx := setUp(b)
	db := openDB(b, sqlDriver, fx.url)
	db.SetMaxOpenConns(1)
	l, err := pglocker.New(db, append(opts, pglocker.Table(fx.table))...)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	key := testutil.Key(b)
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := l.Acquire(ctx, key, "bench", 10*time.Second); err != nil {
			b.Fatal(err)
		}
		if err := l.Release(ctx, key, "bench"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawUpsertDelete is the baseline for BenchmarkLockUnlock: the
// plainest statements that could implement a lock, an autocommit upsert and a
// delete through the same driver on a single connection, with no
// transaction, no token sequence and no error translation; unprepared and
// (prepared=true) prepared once.
func BenchmarkRawUpsertDelete(b *testing.B) {
	for _, sqlDriver := range sqlDrivers {
		b.Run("driver="+sqlDriver+"/prepared=false", func(b *testing.B) { benchRaw(b, sqlDriver, false) })
		b.Run("driver="+sqlDriver+"/prepared=true", func(b *testing.B) { benchRaw(b, sqlDriver, true) })
	}
}

func benchRaw(b *testing.B, sqlDriver string, prepared bool) {
	fx := setUp(b)
	db := openDB(b, sqlDriver, fx.url)
	db.SetMaxOpenConns(1)
	n, _ := migrations.ParseTable(fx.table)
	upsert := `INSERT INTO ` + n.Table + ` AS l (key, owner, token, expires_at)
		VALUES ($1, $2, 1, now() + interval '10 seconds')
		ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
		WHERE l.expires_at <= now()`
	del := `DELETE FROM ` + n.Table + ` WHERE key = $1 AND owner = $2`
	key := testutil.Key(b)
	ctx := context.Background()
	exec := func(q string) func() error {
		return func() error { _, err := db.ExecContext(ctx, q, key, "bench"); return err }
	}
	up, down := exec(upsert), exec(del)
	if prepared {
		prep := func(q string) func() error {
			s, err := db.PrepareContext(ctx, q)
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return func() error { _, err := s.ExecContext(ctx, key, "bench"); return err }
		}
		up, down = prep(upsert), prep(del)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := up(); err != nil {
			b.Fatal(err)
		}
		if err := down(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRefreshUnderContention measures the holder's Refresh while 4
// other clients keep trying to acquire the key, in either Acquire mode. A
// losing acquirer's ON CONFLICT locks the row: in a transaction, until its
// ROLLBACK arrives; on its own, only for its statement.
func BenchmarkRefreshUnderContention(b *testing.B) {
	for _, single := range []bool{false, true} {
		mode := map[bool]string{false: "tx", true: "single"}[single]
		b.Run("mode="+mode, func(b *testing.B) {
			fx := setUp(b)
			opts := []pglocker.Option{pglocker.Table(fx.table), pglocker.SingleStatement(single)}
			newL := func() *pglocker.Locker {
				db := openDB(b, "postgres", fx.url)
				db.SetMaxOpenConns(1)
				l, err := pglocker.New(db, opts...)
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { l.Close() })
				return l
			}
			holder := newL()
			key := testutil.Key(b)
			ctx, cancel := context.WithCancel(context.Background())
			if _, err := holder.Acquire(ctx, key, "holder", time.Minute); err != nil {
				b.Fatal(err)
			}
			var wg sync.WaitGroup
			for i := 0; i < 4; i++ {
				l := newL()
				wg.Add(1)
				go func() {
					defer wg.Done()
					for ctx.Err() == nil {
						_, _ = l.Acquire(ctx, key, "contender", time.Minute)
					}
				}()
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := holder.Refresh(ctx, key, "holder", time.Minute); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cancel()
			wg.Wait()
		})
	}
}

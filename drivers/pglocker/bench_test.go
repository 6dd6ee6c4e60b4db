package pglocker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/migrations"
	"github.com/dlock-go/dlock/testutil"
)

// BenchmarkLockUnlock measures one acquire and one release through the
// driver on a single connection: a REPEATABLE READ transaction around the
// insert-on-conflict, then an autocommit delete; with statements prepared
// (the default) and not.
func BenchmarkLockUnlock(b *testing.B) {
	for _, sqlDriver := range sqlDrivers {
		for _, prepared := range []bool{true, false} {
			b.Run(fmt.Sprintf("driver=%s/prepared=%v", sqlDriver, prepared), func(b *testing.B) {
				benchLockUnlock(b, sqlDriver, pglocker.Prepared(prepared))
			})
		}
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
// transaction, no token sequence and no error translation.
func BenchmarkRawUpsertDelete(b *testing.B) {
	for _, sqlDriver := range sqlDrivers {
		b.Run("driver="+sqlDriver, func(b *testing.B) {
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
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := db.ExecContext(ctx, upsert, key, "bench"); err != nil {
					b.Fatal(err)
				}
				if _, err := db.ExecContext(ctx, del, key, "bench"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

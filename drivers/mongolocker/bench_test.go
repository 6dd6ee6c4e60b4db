package mongolocker_test

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/dlock-go/dlock/testutil"
)

// BenchmarkLockUnlock measures one Acquire and one Release through the
// driver with one client: the upsert, the token draw and its recording, then
// a findAndModify delete (and, every few seconds, a hello for the clock).
func BenchmarkLockUnlock(b *testing.B) {
	l := newLocker(b, "bench")
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

// BenchmarkRawInsertDelete is the baseline for BenchmarkLockUnlock: the
// plainest requests that could implement a lock, an insert and a delete
// through the same mongo-driver client setup, with no expiry, no token and
// no owner check.
func BenchmarkRawInsertDelete(b *testing.B) {
	coll := rawColl(b, "bench_raw")
	key := testutil.Key(b)
	ctx := context.Background()
	doc := bson.D{{Key: "_id", Value: key}, {Key: "owner", Value: "bench"}, {Key: "expiresAt", Value: time.Now()}}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := coll.InsertOne(ctx, doc); err != nil {
			b.Fatal(err)
		}
		if _, err := coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: key}}); err != nil {
			b.Fatal(err)
		}
	}
}

package mongolocker

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"

	"github.com/dlock-go/dlock/locker"
)

// The fuzz targets below check the driver's decoding of server replies (lock
// documents, hello and buildInfo replies, as the driver decodes them), its
// server-clock arithmetic, and its names and URLs. Run one with, e.g.,
//
//	go test -run '^$' -fuzz '^FuzzDecodeReplies$' -fuzztime 60s ./drivers/mongolocker/
//
// Their seed corpora are in testdata/fuzz/<target>/.

func mustBSON(v any) []byte {
	b, err := bson.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// FuzzDecodeReplies decodes arbitrary BSON documents into the shapes the
// driver reads from the server: never a panic, and what decodes is usable.
func FuzzDecodeReplies(f *testing.F) {
	f.Add(mustBSON(bson.D{{Key: "_id", Value: "k"}, {Key: "owner", Value: "o"}, {Key: "expiresAt", Value: bson.DateTime(1700000000000)}, {Key: "ttlMs", Value: int64(1000)}, {Key: "token", Value: int64(7)}}))
	f.Add(mustBSON(bson.D{{Key: "owner", Value: int32(5)}, {Key: "token", Value: "7"}}))
	f.Add(mustBSON(bson.D{{Key: "token", Value: 7.5}, {Key: "ttlMs", Value: int32(-1)}}))
	f.Add(mustBSON(bson.D{{Key: "localTime", Value: bson.DateTime(0)}, {Key: "ok", Value: 1.0}}))
	f.Add(mustBSON(bson.D{{Key: "version", Value: "7.0.0"}, {Key: "ferretdbVersion", Value: "v1.24.2"}}))
	f.Add(mustBSON(bson.D{{Key: "seq", Value: int64(9)}}))
	f.Add([]byte{5, 0, 0, 0, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		// mongo-driver v2.8.2's bson.Unmarshal into a struct never returns
		// on some malformed documents: skipping an unknown field whose
		// length prefix is negative moves the reader backwards, forever
		// (testdata: mongo_driver_skip_negative_length; bson.M decoding
		// returns an error). That is the client library's reaction to a
		// corrupt or hostile server, outside the driver's reach; only
		// well-formed documents are decoded into structs here.
		if bsoncore.Document(raw).Validate() != nil {
			var m bson.M
			_ = bson.Unmarshal(raw, &m)
			return
		}
		var doc lockDoc
		if err := bson.Unmarshal(raw, &doc); err == nil {
			// Inspect's arithmetic on a decoded document must not panic.
			lo := time.Now()
			_ = doc.ExpiresAt <= floorMs(lo)
			_ = doc.ExpiresAt.Time().Sub(lo).Round(time.Millisecond)
			_ = time.Duration(doc.TTLMs) * time.Millisecond
		}
		var hello struct {
			LocalTime bson.DateTime `bson:"localTime"`
		}
		_ = bson.Unmarshal(raw, &hello)
		var seq struct {
			Seq int64 `bson:"seq"`
		}
		_ = bson.Unmarshal(raw, &seq)
		var info bson.M
		if err := bson.Unmarshal(raw, &info); err == nil {
			_, _ = info["ferretdbVersion"]
		}
	})
}

// FuzzClockBounds checks the server-clock interval: ordered, and holding
// the server's true time whenever the sample's assumptions hold.
func FuzzClockBounds(f *testing.F) {
	f.Add(int64(1700000000000), int64(500_000), int64(10_000_000), int64(0))
	f.Add(int64(0), int64(0), int64(0), int64(0))
	f.Add(int64(1), int64(-5), int64(3_600_000_000_000), int64(999_999))
	f.Add(int64(-1), int64(1<<40), int64(1<<20), int64(-1<<40))
	f.Fuzz(func(t *testing.T, serverMs, rtt, elapsed, offset int64) {
		// Realistic ranges: a server clock within ±100 years of the epoch,
		// round trips and sample ages up to a day.
		const day = int64(24 * time.Hour)
		if serverMs < -100*365*day/1e6 || serverMs > 100*365*day/1e6 || rtt < 0 || rtt > day || elapsed < -day || elapsed > day {
			return
		}
		recv := time.Now()
		s := clockSample{server: time.UnixMilli(serverMs), recv: recv, rtt: time.Duration(rtt)}
		now := recv.Add(time.Duration(elapsed))
		lo, hi := s.bounds(now)
		if hi.Before(lo) {
			t.Fatalf("bounds %v > %v", lo, hi)
		}
		if w := s.width(now); w < s.rtt+time.Millisecond {
			t.Fatalf("width %v under rtt %v + 1ms", w, s.rtt)
		}
		// The server stamped localTime (truncated to the ms) at some point
		// of the round trip: its clock read true = localTime + frac +
		// (recv − stamp) at recv, with frac in [0, 1ms) and recv − stamp in
		// [0, rtt]. Without drift, at now it reads true + elapsed.
		if elapsed < 0 {
			return
		}
		frac := time.Duration(uint64(offset) % uint64(time.Millisecond))
		back := time.Duration(0)
		if rtt > 0 {
			back = time.Duration(uint64(offset>>20) % uint64(rtt+1))
		}
		truth := s.server.Add(frac + back + time.Duration(elapsed))
		if truth.Before(lo) || truth.After(hi) {
			t.Fatalf("server time %v outside [%v, %v] (rtt %v, elapsed %v)", truth, lo, hi, s.rtt, time.Duration(elapsed))
		}
	})
}

// FuzzOpen checks names and URLs: Open fails with ErrInvalidOption for a
// malformed URL, database or collection, never panics, and never repeats a
// password. The context is cancelled, so nothing waits on a server.
func FuzzOpen(f *testing.F) {
	f.Add("mongodb://127.0.0.1:1/", "app", "locks")
	f.Add("mongodb://user:s3cr3tpw@127.0.0.1:1/?authSource=admin", "app", "locks")
	f.Add("mongodb://127.0.0.1:1/", "a.b", "locks")
	f.Add("mongodb://127.0.0.1:1/", "app", "system.x")
	f.Add("mongodb://127.0.0.1:1/", "app", "a$b")
	f.Add("mongodb://127.0.0.1:1/?w=banana", "app", "c")
	f.Add("mongodb://%zz", "app", "c")
	f.Add("mongodb://", "", "")
	f.Add("http://x", "app", "c")
	f.Fuzz(func(t *testing.T, raw, database, collection string) {
		if strings.HasPrefix(raw, "mongodb+srv://") {
			return // resolving SRV records is network I/O
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		l, err := Open(ctx, raw, database, Collection(collection))
		if err == nil {
			// A cancelled ping cannot have succeeded.
			_ = l.Close(context.Background())
			t.Fatalf("Open(%q) succeeded with a cancelled context", raw)
		}
		invalid := validDatabase(database) != nil || validCollection(collection) != nil || !strings.HasPrefix(raw, "mongodb://")
		switch {
		case invalid && !errors.Is(err, locker.ErrInvalidOption):
			t.Fatalf("Open(%q, %q, %q): %v, want ErrInvalidOption", raw, database, collection, err)
		case !errors.Is(err, locker.ErrInvalidOption) && !errors.Is(err, context.Canceled):
			// A well-formed configuration fails only on the cancelled ping.
			t.Fatalf("Open(%q, %q, %q): %v, want ErrInvalidOption or context.Canceled", raw, database, collection, err)
		}
		if u, perr := url.Parse(raw); perr == nil && u.User != nil {
			if pw, ok := u.User.Password(); ok && len(pw) >= 6 && !strings.Contains(strings.Replace(raw, u.User.String()+"@", "", 1), pw) &&
				strings.Contains(err.Error(), pw) {
				t.Fatalf("Open's error repeats the password: %v", err)
			}
		}
	})
}

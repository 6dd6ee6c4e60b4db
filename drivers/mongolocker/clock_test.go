package mongolocker

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/dlock-go/dlock/testutil"
)

func TestClockSampleBounds(t *testing.T) {
	t.Parallel()
	server := time.UnixMilli(1_700_000_000_000)
	recv := time.Now()
	s := clockSample{server: server, recv: recv, rtt: 2 * time.Millisecond}
	for _, tc := range []struct {
		after  time.Duration
		lo, hi time.Duration // relative to server
	}{
		{0, -time.Millisecond - time.Microsecond, 3*time.Millisecond + time.Microsecond},
		{time.Second, time.Second - 2*time.Millisecond - time.Microsecond, time.Second + 4*time.Millisecond + time.Microsecond},
		{-time.Second, -time.Millisecond - time.Microsecond, 3*time.Millisecond + time.Microsecond}, // a reading before recv counts as recv
	} {
		lo, hi := s.bounds(recv.Add(tc.after))
		if got := lo.Sub(server); got != tc.lo {
			t.Errorf("%v after the sample: lo = server%+v, want server%+v", tc.after, got, tc.lo)
		}
		if got := hi.Sub(server); got != tc.hi {
			t.Errorf("%v after the sample: hi = server%+v, want server%+v", tc.after, got, tc.hi)
		}
	}
	if w := s.width(recv.Add(10 * time.Second)); w != 4*time.Millisecond+20*time.Millisecond+2*time.Microsecond {
		t.Errorf("width after 10s = %v", w)
	}
}

func TestCeilFloorMs(t *testing.T) {
	t.Parallel()
	base := time.UnixMilli(1_700_000_000_123)
	if got := ceilMs(base); got != bson.DateTime(1_700_000_000_123) {
		t.Errorf("ceilMs(whole ms) = %v", got)
	}
	if got := ceilMs(base.Add(time.Microsecond)); got != bson.DateTime(1_700_000_000_124) {
		t.Errorf("ceilMs(+1µs) = %v", got)
	}
	if got := floorMs(base.Add(999 * time.Microsecond)); got != bson.DateTime(1_700_000_000_123) {
		t.Errorf("floorMs(+999µs) = %v", got)
	}
	if got := ttlMs(1500 * time.Microsecond); got != 2 {
		t.Errorf("ttlMs(1.5ms) = %d", got)
	}
}

// The interval the clock gives always holds the server's own reading: a
// localTime read after lo was computed is at least lo (less its
// millisecond truncation), and one read before hi was computed is at most
// hi.
func TestServerClockHoldsServerTime(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := mongo.Connect(options.Client().ApplyURI(testutil.MongoURL(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	c := &serverClock{db: client.Database("admin"), period: 200 * time.Millisecond}
	deadline := time.Now().Add(time.Second)
	for i := 0; time.Now().Before(deadline); i++ {
		lo, _, err := c.bounds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var reply struct {
			LocalTime bson.DateTime `bson:"localTime"`
		}
		if err := client.Database("admin").RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&reply); err != nil {
			t.Fatal(err)
		}
		_, hi, err := c.bounds(ctx)
		if err != nil {
			t.Fatal(err)
		}
		server := reply.LocalTime.Time()
		if server.Add(time.Millisecond).Before(lo) || server.After(hi) {
			t.Fatalf("reading %d: server time %v outside [%v, %v]", i, server, lo, hi)
		}
		time.Sleep(10 * time.Millisecond)
	}
	c.mu.Lock()
	s := c.sample
	c.mu.Unlock()
	t.Logf("sample round trip %v, interval width now %v", s.rtt, s.width(time.Now()))
}

package mongolocker

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// maxDrift bounds how fast the server's clock and this process's monotonic
// clock may drift apart: 1000 ppm, twice the 500 ppm a clock disciplined by
// NTP slews at most, to allow for both sides slewing in opposite directions.
const maxDrift = 1e-3

// clockSample is one reading of the server's clock: the hello command's
// localTime (whole milliseconds), taken between two readings of this
// process's monotonic clock.
type clockSample struct {
	server time.Time     // localTime
	recv   time.Time     // monotonic reading when the reply arrived
	rtt    time.Duration // round trip of the hello command
}

// bounds returns an interval [lo, hi] that holds the server's current time at
// the monotonic instant now, if the server's clock was not stepped since the
// sample and drifts from ours by at most maxDrift.
//
// The server wrote localTime somewhere between sending and receiving, and
// truncated it to the millisecond, so at recv its clock read between
// localTime and localTime + rtt + 1ms; since then, now − recv has passed,
// give or take the drift. The low bound allows one more millisecond in case
// a server rounds localTime instead of truncating it.
func (s clockSample) bounds(now time.Time) (lo, hi time.Time) {
	e := now.Sub(s.recv)
	if e < 0 {
		e = 0
	}
	drift := time.Duration(float64(e)*maxDrift) + time.Microsecond
	lo = s.server.Add(e - drift - time.Millisecond)
	hi = s.server.Add(e + s.rtt + time.Millisecond + drift)
	return lo, hi
}

// width is hi − lo of s at the monotonic instant now.
func (s clockSample) width(now time.Time) time.Duration {
	lo, hi := s.bounds(now)
	return hi.Sub(lo)
}

// serverClock tracks the server's clock from hello samples. The first use
// takes a sample; later uses take a fresh one once the current one is older
// than the sync period, while other goroutines go on with the current one.
// Of two samples the one giving the narrower interval is kept, unless the
// older one is past maxSampleAge.
type serverClock struct {
	db     *mongo.Database
	period time.Duration

	mu      sync.Mutex
	sample  clockSample
	have    bool
	syncing bool
	ready   chan struct{} // closed when a first sample is taken or fails
}

// maxSampleAge is the age after which a sample is replaced by a fresh one
// even when the fresh one is wider, so a stepped server clock is picked up.
const maxSampleAge = time.Minute

// bounds returns an interval [lo, hi] holding the server's current time.
func (c *serverClock) bounds(ctx context.Context) (lo, hi time.Time, err error) {
	for {
		c.mu.Lock()
		now := time.Now()
		if c.have && (c.syncing || now.Sub(c.sample.recv) < c.period) {
			s := c.sample
			c.mu.Unlock()
			lo, hi = s.bounds(now)
			return lo, hi, nil
		}
		if c.syncing { // first sample under way: wait for it
			ready := c.ready
			c.mu.Unlock()
			select {
			case <-ready:
				continue
			case <-ctx.Done():
				return lo, hi, ctx.Err()
			}
		}
		c.syncing = true
		c.ready = make(chan struct{})
		c.mu.Unlock()

		s, err := c.take(ctx)

		c.mu.Lock()
		c.syncing = false
		close(c.ready)
		if err == nil {
			now := time.Now()
			if !c.have || now.Sub(c.sample.recv) > maxSampleAge || s.width(now) <= c.sample.width(now) {
				c.sample = s
			}
			c.have = true
		}
		have, cur := c.have, c.sample
		c.mu.Unlock()
		if err != nil && !have {
			return lo, hi, err
		}
		// A failed resync keeps the old sample: its interval only widens.
		lo, hi = cur.bounds(time.Now())
		return lo, hi, nil
	}
}

// take reads the server's clock once.
func (c *serverClock) take(ctx context.Context) (clockSample, error) {
	var reply struct {
		LocalTime bson.DateTime `bson:"localTime"`
	}
	sent := time.Now()
	err := c.db.RunCommand(ctx, bson.D{{Key: "hello", Value: 1}}).Decode(&reply)
	recv := time.Now()
	if err != nil {
		return clockSample{}, fmt.Errorf("read server clock (hello): %w", err)
	}
	if reply.LocalTime == 0 {
		return clockSample{}, fmt.Errorf("read server clock: hello reply has no localTime")
	}
	return clockSample{server: reply.LocalTime.Time(), recv: recv, rtt: recv.Sub(sent)}, nil
}

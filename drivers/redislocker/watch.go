package redislocker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/locker"
)

var _ locker.Watcher = (*Locker)(nil)

// DialFunc dials a new connection to one Redis server, e.g. a
// *redis.Pool's DialContext.
type DialFunc func(ctx context.Context) (redis.Conn, error)

// Subscriber sets how the Locker dials its subscription connections, the
// ones [Locker.Watch] listens to release notifications on: one function
// per server, in the order of the pools (one for [New]). Without this
// option the Locker dials with the pool's own DialContext or Dial when the
// pool is a *redis.Pool; other pools give no subscription, and waiting
// Lock calls then poll. Subscriber() with no functions turns
// notifications off. A nil function, or a count other than zero or the
// number of servers, is an error matching [locker.ErrInvalidOption].
func Subscriber(dial ...DialFunc) Option {
	return func(l *Locker) error {
		for i, d := range dial {
			if d == nil {
				return fmt.Errorf("redislocker: %w: subscriber dial function %d is nil", locker.ErrInvalidOption, i)
			}
		}
		l.dials = append([]DialFunc{}, dial...)
		l.dialsSet = true
		return nil
	}
}

// Timing of the subscription connections.
var (
	// watchTimeout bounds how long Watch waits for a subscription to be
	// confirmed (including the first dial).
	watchTimeout = 2 * time.Second
	// pingEvery is how often an idle subscription connection is pinged;
	// a connection silent for readIdle is declared dead.
	pingEvery = 20 * time.Second
	readIdle  = 3 * pingEvery
	// dialTimeout bounds one dial of a subscription connection.
	dialTimeout = 10 * time.Second
	// Reconnection backoff after a failure: from minBackoff, doubling, to
	// maxBackoff, with jitter.
	minBackoff = 25 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// errClosed is the error of a Watch on a closed Locker.
var errClosed = errors.New("redislocker: watch: the Locker is closed")

// setupSubscribers makes the (idle) subscribers of a new Locker.
func (l *Locker) setupSubscribers() error {
	n := len(l.nodes)
	dials := l.dials
	if l.dialsSet {
		if len(dials) != 0 && len(dials) != n {
			return fmt.Errorf("redislocker: %w: %d subscriber dial functions for %d servers", locker.ErrInvalidOption, len(dials), n)
		}
	} else {
		dials = make([]DialFunc, n)
		for i, p := range l.nodes {
			dials[i] = poolDial(p)
		}
	}
	if len(dials) == 0 {
		return nil
	}
	l.subs = make([]*subscriber, n)
	for i, d := range dials {
		if d != nil {
			l.subs[i] = &subscriber{dial: d, node: i, redlock: l.redlock, chans: map[string]*channel{}}
		}
	}
	return nil
}

// poolDial returns the dial function of a *redis.Pool, or nil.
func poolDial(p Pool) DialFunc {
	rp, ok := p.(*redis.Pool)
	if !ok {
		return nil
	}
	switch {
	case rp.DialContext != nil:
		return rp.DialContext
	case rp.Dial != nil:
		dial := rp.Dial
		return func(context.Context) (redis.Conn, error) { return dial() }
	}
	return nil
}

// Watch subscribes to the release notifications of key (the release script
// publishes on "<prefix>:{key}:released") and returns once the server has
// confirmed the subscription — on Redlock, once enough nodes have that
// every quorum includes one of them — so a release after Watch returns is
// never missed while the connection stands. The channel receives a value
// whenever key may have become free: after a release, and after a lost
// subscription connection came back (a release may have gone unheard).
// An expiry sends nothing. Call stop when done; it is idempotent.
//
// All watched keys share one subscription connection per server, dialled
// on the first Watch (see [Subscriber]) and kept until [Locker.Close];
// after an error it is redialled with backoff (25ms doubling to 5s).
// Watch returns an error, and the caller should poll, when the Locker has
// no way to dial, the connection failed and waits out its backoff, the
// subscription is not confirmed within 2 seconds or before ctx ends, or
// the Locker is closed. It returns [locker.ErrInvalidKey] for a bad key.
func (l *Locker) Watch(ctx context.Context, key string) (released <-chan struct{}, stop func(), err error) {
	if err := locker.ValidateKey(key); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("redislocker: watch: %w", context.Cause(ctx))
	}
	if len(l.subs) == 0 {
		return nil, nil, errors.New("redislocker: watch: no subscription connection: the pool does not say how to dial one (see the Subscriber option)")
	}
	name := l.lockKey(key) + ":released"
	w := &watcher{ch: make(chan struct{}, 1)}
	need := len(l.nodes) - l.quorum + 1 // every quorum includes one of them
	if !l.redlock {
		need = 1
	}

	type pending struct {
		s     *subscriber
		ready <-chan struct{}
		gen   *generation
	}
	var ps []pending
	var errs []error
	for i, s := range l.subs {
		if s == nil {
			errs = append(errs, fmt.Errorf("node %d: no way to dial", i))
			continue
		}
		ready, gen, err := s.add(name, w)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ps = append(ps, pending{s, ready, gen})
	}
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		for _, p := range ps {
			p.s.remove(name, w)
		}
	}
	fail := func(errs []error) (<-chan struct{}, func(), error) {
		stop()
		return nil, nil, fmt.Errorf("redislocker: watch: %w", errors.Join(errs...))
	}
	if len(ps) < need {
		return fail(errs)
	}

	t := time.NewTimer(watchTimeout)
	defer t.Stop()
	confirmed := 0
	if len(ps) == 1 {
		p := ps[0]
		select {
		case <-p.ready:
			confirmed++
		case <-p.gen.down:
			errs = append(errs, p.gen.failure())
		case <-ctx.Done():
			errs = append(errs, context.Cause(ctx))
		case <-t.C:
			errs = append(errs, fmt.Errorf("node %d: no confirmation within %v", p.s.node, watchTimeout))
		}
	} else {
		// Redlock: wait for enough nodes, however they answer.
		cases := make([]reflect.SelectCase, 0, 2*len(ps)+2)
		cases = append(cases,
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(ctx.Done())},
			reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(t.C)})
		for _, p := range ps {
			cases = append(cases,
				reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(p.ready)},
				reflect.SelectCase{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(p.gen.down)})
		}
		left := len(ps)
		for confirmed < need && confirmed+left >= need {
			i, _, _ := reflect.Select(cases)
			switch {
			case i == 0:
				errs = append(errs, context.Cause(ctx))
				left = 0
				continue
			case i == 1:
				errs = append(errs, fmt.Errorf("%d of %d nodes confirmed within %v, %d needed", confirmed, len(l.nodes), watchTimeout, need))
				left = 0
				continue
			}
			p := ps[(i-2)/2]
			if (i-2)%2 == 0 {
				confirmed++
			} else {
				errs = append(errs, p.gen.failure())
			}
			left--
			// This node has answered: wait no more on either of its channels.
			cases[2+(i-2)/2*2].Chan = reflect.Value{}
			cases[2+(i-2)/2*2+1].Chan = reflect.Value{}
		}
	}
	if confirmed < need {
		return fail(errs)
	}
	return w.ch, stop, nil
}

// watcher is one Watch call's channel.
type watcher struct{ ch chan struct{} }

func (w *watcher) notify() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// generation is one connection (or connection attempt) of a subscriber.
type generation struct {
	down chan struct{} // closed when the connection failed or was closed
	err  error         // why, set before down is closed
}

func newGeneration() *generation { return &generation{down: make(chan struct{})} }

func (g *generation) failure() error { return g.err }

// channel is the subscriber's state of one channel.
type channel struct {
	watchers   map[*watcher]struct{}
	want       bool          // the last command sent (or to send) is SUBSCRIBE
	pending    int           // replies due on this channel on the connection
	subscribed bool          // confirmed by the server, and still wanted
	ready      chan struct{} // closed when subscribed
	resub      bool          // re-subscribed after a reconnect: wake watchers when confirmed
}

// subscriber is the subscription connection to one server: dialled on the
// first Watch, multiplexing every watched channel with reference counts,
// redialled with backoff after an error, ended by Close.
type subscriber struct {
	dial    DialFunc
	node    int
	redlock bool

	mu      sync.Mutex
	closed  bool
	running bool
	conn    redis.Conn // set while connected
	gen     *generation
	down    error // set while backing off after a failure
	chans   map[string]*channel
	cancel  context.CancelFunc // ends the goroutine's dials and sleeps
	done    chan struct{}      // closed when the goroutine has exited
	ping    *time.Timer

	wmu sync.Mutex // serialises writes to conn
}

func (s *subscriber) errorf(format string, args ...interface{}) error {
	if s.redlock {
		return fmt.Errorf("node %d: "+format, append([]interface{}{s.node}, args...)...)
	}
	return fmt.Errorf(format, args...)
}

// add registers w on channel name, starting the connection if need be.
// It returns a channel closed once the server confirmed the subscription,
// and the connection whose failure means it never will be.
func (s *subscriber) add(name string, w *watcher) (<-chan struct{}, *generation, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.closed:
		return nil, nil, errClosed
	case s.down != nil:
		return nil, nil, s.errorf("subscription connection down: %w", s.down)
	case !s.running:
		ctx, cancel := context.WithCancel(context.Background())
		s.running, s.cancel, s.done, s.gen = true, cancel, make(chan struct{}), newGeneration()
		go s.run(ctx)
	}
	c := s.chans[name]
	if c == nil {
		c = &channel{watchers: map[*watcher]struct{}{}}
		s.chans[name] = c
	}
	c.watchers[w] = struct{}{}
	if !c.want {
		c.want, c.subscribed, c.ready = true, false, make(chan struct{})
		if s.conn != nil {
			c.pending++
			if err := s.send("SUBSCRIBE", name); err != nil {
				s.removeLocked(name, w)
				return nil, nil, s.errorf("subscribe: %w", err)
			}
		}
	}
	return c.ready, s.gen, nil
}

// remove unregisters w from channel name, unsubscribing when it was the
// last watcher.
func (s *subscriber) remove(name string, w *watcher) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.removeLocked(name, w)
}

func (s *subscriber) removeLocked(name string, w *watcher) {
	c := s.chans[name]
	if c == nil {
		return
	}
	delete(c.watchers, w)
	if len(c.watchers) > 0 || !c.want {
		return
	}
	c.want, c.subscribed, c.ready, c.resub = false, false, nil, false
	if s.conn == nil || s.closed {
		delete(s.chans, name) // the next connection will not subscribe it
		return
	}
	c.pending++
	_ = s.send("UNSUBSCRIBE", name) // a failed write ends the connection
}

// send writes a command to the connection; s.mu is held. A failed write
// closes the connection, so that the reader sees the failure and redials.
func (s *subscriber) send(cmd string, args ...interface{}) error {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.conn.Send(cmd, args...)
	if err == nil {
		err = s.conn.Flush()
	}
	if err != nil {
		s.conn.Close()
	}
	return err
}

// close stops the subscriber and waits until its goroutine has exited and
// its connection is closed.
func (s *subscriber) close() {
	s.mu.Lock()
	s.closed = true
	running, done := s.running, s.done
	if s.cancel != nil {
		s.cancel()
	}
	if s.conn != nil {
		s.conn.Close() // ends the reader's Receive
	}
	s.mu.Unlock()
	if running {
		<-done
	}
}

// run keeps the connection up until Close: dial, subscribe to every
// watched channel, read, and after an error back off and start again.
func (s *subscriber) run(ctx context.Context) {
	defer close(s.done)
	backoff := minBackoff
	for {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		conn, err := s.dial(dctx)
		cancel()
		if err == nil && conn == nil {
			err = errors.New("dial returned no connection")
		}
		s.mu.Lock()
		if s.closed {
			if conn != nil {
				conn.Close()
			}
			s.endLocked(errClosed)
			s.mu.Unlock()
			return
		}
		if err == nil {
			err = s.connectedLocked(conn)
		}
		s.mu.Unlock()
		if err == nil {
			var healthy bool
			healthy, err = s.read(conn)
			if healthy {
				backoff = minBackoff
			}
		}

		s.mu.Lock()
		conn2 := s.conn
		s.conn = nil
		if s.ping != nil {
			s.ping.Stop()
		}
		if conn2 != nil {
			conn2.Close()
		}
		if s.closed {
			s.endLocked(errClosed)
			s.mu.Unlock()
			return
		}
		s.endLocked(s.errorf("subscription connection: %w", err))
		s.down = err
		s.mu.Unlock()

		// Back off, with jitter, then try again.
		d := backoff/2 + rand.N(backoff/2+1)
		backoff = min(2*backoff, maxBackoff)
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
		s.mu.Lock()
		s.down = nil
		s.gen = newGeneration()
		if s.closed {
			s.endLocked(errClosed)
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

// endLocked ends the current generation with err: Watch calls still
// waiting fail, and the channels that keep watchers are marked to be
// subscribed again (and their watchers woken) on the next connection.
func (s *subscriber) endLocked(err error) {
	if s.gen != nil {
		select {
		case <-s.gen.down:
		default:
			s.gen.err = err
			close(s.gen.down)
		}
	}
	for name, c := range s.chans {
		if len(c.watchers) == 0 || !c.want {
			delete(s.chans, name)
			continue
		}
		c.pending = 0
		if c.subscribed {
			c.subscribed, c.ready, c.resub = false, make(chan struct{}), true
		}
	}
	if s.closed {
		s.running = false
	}
}

// connectedLocked installs a new connection and subscribes to every
// watched channel.
func (s *subscriber) connectedLocked(conn redis.Conn) error {
	s.conn = conn
	var names []interface{}
	for name, c := range s.chans {
		if c.want {
			c.pending = 1
			names = append(names, name)
		}
	}
	if len(names) > 0 {
		if err := s.send("SUBSCRIBE", names...); err != nil {
			return err
		}
	}
	s.ping = time.AfterFunc(pingEvery, s.pinger(conn))
	return nil
}

// pinger returns the ping timer's function for conn: a PING every
// pingEvery keeps replies coming, so that a dead connection is noticed
// within readIdle.
func (s *subscriber) pinger(conn redis.Conn) func() {
	return func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.conn != conn || s.closed {
			return
		}
		if s.send("PING") == nil {
			s.ping.Reset(pingEvery)
		}
	}
}

// read receives until the connection fails. healthy reports whether a
// reply came that was not an error (the backoff then starts again from its
// minimum): a server that refuses the subscriptions (an ACL without the
// channels, say) is not redialled at once, again and again.
func (s *subscriber) read(conn redis.Conn) (healthy bool, err error) {
	_, timeouts := conn.(redis.ConnWithTimeout)
	for {
		var v interface{}
		if timeouts {
			v, err = redis.ReceiveWithTimeout(conn, readIdle)
		} else {
			v, err = conn.Receive()
		}
		if err != nil {
			return healthy, err
		}
		healthy = true
		vs, ok := v.([]interface{})
		if !ok || len(vs) < 2 {
			continue // PONG outside subscribed mode
		}
		kind, _ := vs[0].([]byte)
		ch, _ := vs[1].([]byte)
		switch string(kind) {
		case "message":
			s.mu.Lock()
			if c := s.chans[string(ch)]; c != nil {
				for w := range c.watchers {
					w.notify()
				}
			}
			s.mu.Unlock()
		case "subscribe", "unsubscribe":
			s.mu.Lock()
			s.confirmLocked(string(ch))
			s.mu.Unlock()
		}
	}
}

// confirmLocked counts one SUBSCRIBE or UNSUBSCRIBE reply on channel name.
// Replies come in the order of the commands, so once none is due the
// server's state is that of the last command sent.
func (s *subscriber) confirmLocked(name string) {
	c := s.chans[name]
	if c == nil || c.pending == 0 {
		return
	}
	c.pending--
	if c.pending > 0 {
		return
	}
	if !c.want {
		delete(s.chans, name)
		return
	}
	if !c.subscribed {
		c.subscribed = true
		close(c.ready)
	}
	if c.resub {
		c.resub = false
		for w := range c.watchers {
			w.notify()
		}
	}
}

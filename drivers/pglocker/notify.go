package pglocker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/lib/pq"

	"github.com/dlock-go/dlock/locker"
)

var _ locker.Watcher = (*Locker)(nil)

// Notify turns on wake-on-release (see the package documentation): Release
// then notifies, in the same statement, on the lock table's channel, and
// [Locker.Watch] listens there on a connection of the Locker's own, opened
// with lib/pq from dsn (a URL or key=value connection string for the same
// database as the Locker's handle) on the first wait and kept until
// [Locker.Close]. An application_name in dsn names that session on the
// server. With [Open], an empty dsn means Open's own. Without Notify,
// Release sends nothing and waiting Lock calls poll.
//
// A dsn that lib/pq cannot parse, or an empty one given to [New], makes New
// and Open return an error matching locker.ErrInvalidOption.
func Notify(dsn string) Option {
	return func(c *config) { c.notify, c.notifyDSN = true, dsn }
}

// Timing of the listener connection.
var (
	// watchTimeout bounds how long Watch waits for the listener to connect
	// and LISTEN.
	watchTimeout = 2 * time.Second
	// dialTimeout bounds one dial of the listener connection.
	dialTimeout = 10 * time.Second
	// Reconnection backoff of the listener after a failure: from
	// minReconnect, doubling, to maxReconnect. Close waits for at most one
	// such pause.
	minReconnect = 25 * time.Millisecond
	maxReconnect = time.Second
)

// errNoNotify is the error of Watch on a Locker made without Notify.
var errNoNotify = errors.New("pglocker: watch: notifications are off (see the Notify option)")

// errClosed is the error of Watch on a closed Locker.
var errClosed = errors.New("pglocker: watch: the Locker is closed")

// maxChannelLen is the longest channel name PostgreSQL accepts, in bytes.
const maxChannelLen = 63

// channelName derives the notification channel of a lock table from its name
// as configured ("dlock_locks", "app.locks"): the name followed by
// ".released", or, when that is longer than PostgreSQL's 63-byte limit, as
// much of the name as fits (cut between characters) followed by "~" and 16
// hex digits of its SHA-256. Distinct table names get distinct channels
// (barring a hash collision on long names).
func channelName(table string) string {
	const suffix = ".released"
	if len(table)+len(suffix) <= maxChannelLen {
		return table + suffix
	}
	sum := sha256.Sum256([]byte(table))
	tail := "~" + hex.EncodeToString(sum[:8]) + suffix
	head := table[:maxChannelLen-len(tail)]
	for !utf8.ValidString(head) {
		head = head[:len(head)-1]
	}
	return head + tail
}

// listener is the Locker's LISTEN connection: a lib/pq Listener started on
// the first Watch, dispatching the notifications of the lock table's
// channel (payload: the key) to the waiters of each key.
type listener struct {
	dsn     string
	channel string
	dialer  *listenDialer

	mu        sync.Mutex
	closed    bool
	pql       *pq.Listener // set once started
	listening bool         // LISTEN confirmed (kept by lib/pq across reconnects)
	connected bool         // the connection is up
	failure   error        // why not, while down
	changed   chan struct{}
	keys      map[string]map[*waiter]struct{}
	done      sync.WaitGroup // the goroutines started with pql
}

// waiter is one Watch call's channel.
type waiter struct{ ch chan struct{} }

func (w *waiter) wake() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

func newListener(dsn, table string) *listener {
	return &listener{
		dsn:     dsn,
		channel: channelName(table),
		dialer:  newListenDialer(),
		changed: make(chan struct{}),
		keys:    map[string]map[*waiter]struct{}{},
	}
}

// signalLocked tells waiting Watch calls that the state changed.
func (l *listener) signalLocked() {
	close(l.changed)
	l.changed = make(chan struct{})
}

// Watch reports the releases of key until stop is called: the channel
// receives a value (without blocking; it has a buffer of one) when a
// Release of this Locker's table freed key, and when the listener
// connection came back after a loss (a release may have gone unheard).
// Notifications are hints: an expiry sends none, and [locker.Lock] still
// polls at its interval.
//
// Watch returns once the Locker's listener connection is up and LISTENing
// on the table's channel (it connects on the first Watch; see [Notify]),
// so that a release committed after Watch returns is delivered while the
// connection stands; if it had to wait for that, the channel already holds
// a value (a release may have gone unheard meanwhile). It returns an error, and the caller should poll, when
// the Locker was made without Notify, when the listener cannot connect
// (or is reconnecting after a loss) or does not LISTEN within 2 seconds or
// before ctx ends, and after [Locker.Close]; [locker.ErrInvalidKey] for a
// bad key. stop is idempotent. Every key and waiter shares the one
// connection.
func (l *Locker) Watch(ctx context.Context, key string) (released <-chan struct{}, stop func(), err error) {
	if err := locker.ValidateKey(key); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fmt.Errorf("pglocker: watch: %w", context.Cause(ctx))
	}
	if l.lis == nil {
		return nil, nil, errNoNotify
	}
	return l.lis.watch(ctx, key)
}

func (l *listener) watch(ctx context.Context, key string) (<-chan struct{}, func(), error) {
	w := &waiter{ch: make(chan struct{}, 1)}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, nil, errClosed
	}
	l.startLocked()
	set := l.keys[key]
	if set == nil {
		set = map[*waiter]struct{}{}
		l.keys[key] = set
	}
	set[w] = struct{}{}
	l.mu.Unlock()

	var once sync.Once
	stop := func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			if set := l.keys[key]; set != nil {
				delete(set, w)
				if len(set) == 0 {
					delete(l.keys, key)
				}
			}
		})
	}
	t := time.NewTimer(watchTimeout)
	defer t.Stop()
	for waited := false; ; waited = true {
		l.mu.Lock()
		ready, closed, failure, changed := l.listening && l.connected, l.closed, l.failure, l.changed
		l.mu.Unlock()
		var err error
		switch {
		case ready:
			if waited {
				// A release while the listener was connecting went
				// unheard: one more attempt now costs less than a poll.
				w.wake()
			}
			return w.ch, stop, nil
		case closed:
			err = errClosed
		case failure != nil:
			err = fmt.Errorf("pglocker: watch: listener connection down: %w", failure)
		}
		if err == nil {
			select {
			case <-changed:
				continue
			case <-ctx.Done():
				err = fmt.Errorf("pglocker: watch: %w", context.Cause(ctx))
			case <-t.C:
				err = fmt.Errorf("pglocker: watch: the listener did not LISTEN within %v", watchTimeout)
			}
		}
		stop()
		return nil, nil, err
	}
}

// startLocked starts the lib/pq Listener, once: its own goroutine connects
// (and reconnects); one of ours issues LISTEN, another dispatches.
func (l *listener) startLocked() {
	if l.pql != nil {
		return
	}
	pql := pq.NewDialListener(l.dialer, l.dsn, minReconnect, maxReconnect, l.event)
	l.pql = pql
	l.done.Add(2)
	go func() {
		defer l.done.Done()
		// Listen returns once LISTEN is in place (lib/pq waits for the
		// first connection, however long), or on Close.
		err := pql.Listen(l.channel)
		l.mu.Lock()
		defer l.mu.Unlock()
		if err == nil {
			l.listening = true
		} else if !l.closed {
			l.failure = fmt.Errorf("LISTEN: %w", err)
		}
		l.signalLocked()
	}()
	go func() {
		defer l.done.Done()
		for n := range pql.Notify { // closed by lib/pq after Close
			l.dispatch(n)
		}
	}()
}

// event records the connection's state changes (lib/pq calls it from its
// goroutine). After a reconnection lib/pq LISTENs again before reporting
// it, then sends a nil notification, which wakes every waiter.
func (l *listener) event(ev pq.ListenerEventType, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch ev {
	case pq.ListenerEventConnected, pq.ListenerEventReconnected:
		l.connected, l.failure = true, nil
	case pq.ListenerEventDisconnected, pq.ListenerEventConnectionAttemptFailed:
		if err == nil {
			err = errors.New("connection lost")
		}
		l.connected, l.failure = false, err
	}
	l.signalLocked()
}

// dispatch wakes the waiters of the key a notification names, or every
// waiter for the nil notification of a reconnection.
func (l *listener) dispatch(n *pq.Notification) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n == nil {
		for _, set := range l.keys {
			for w := range set {
				w.wake()
			}
		}
		return
	}
	if n.Channel != l.channel {
		return
	}
	for w := range l.keys[n.Extra] {
		w.wake()
	}
}

// close stops the listener and waits until its connection is closed and its
// goroutines (lib/pq's included) have exited: at most the current dial or
// reconnection pause.
func (l *listener) close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	pql := l.pql
	l.signalLocked()
	l.mu.Unlock()
	// Ends a dial in progress and any read on the connection, so that
	// lib/pq releases the lock Close takes even if the server stalls.
	l.dialer.close()
	if pql == nil {
		return nil
	}
	err := pql.Close()
	l.done.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// listenDialer dials the listener's connections with a timeout, and closes
// the current one (and refuses new ones) on close.
type listenDialer struct {
	ctx    context.Context
	cancel context.CancelFunc

	mu   sync.Mutex
	conn net.Conn // the last one dialled; lib/pq has one at a time
}

func newListenDialer() *listenDialer {
	ctx, cancel := context.WithCancel(context.Background())
	return &listenDialer{ctx: ctx, cancel: cancel}
}

func (d *listenDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

func (d *listenDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, network, address)
}

func (d *listenDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	stop := context.AfterFunc(d.ctx, cancel)
	defer stop()
	var nd net.Dialer
	c, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ctx.Err() != nil {
		c.Close()
		return nil, net.ErrClosed
	}
	d.conn = c
	return c, nil
}

func (d *listenDialer) close() {
	d.cancel()
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		d.conn.Close()
	}
}

// Package faultproxy is a small fault-injecting TCP proxy for tests: it
// listens on a loopback port, forwards every connection to one target
// address, and on demand adds latency, resets connections, refuses new ones
// or stops forwarding altogether (a network partition that keeps the
// connections open).
//
// It is meant for loopback test setups (dlock's torture run) and makes no
// attempt at speed: each direction of each connection is a reader goroutine
// and a writer goroutine with a queue between them, so that added latency
// delays bytes without throttling them.
package faultproxy

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy forwards connections from its loopback listener to a target address.
// Its methods are safe for concurrent use.
type Proxy struct {
	target string
	ln     net.Listener

	latency atomic.Int64 // base added latency per chunk, ns
	jitter  atomic.Int64 // random extra latency up to this, ns
	refuse  atomic.Bool

	mu     sync.Mutex
	conns  map[*link]struct{}
	paused chan struct{} // non-nil while paused; closed by Resume
	closed bool
	wg     sync.WaitGroup

	accepted, resets, refused atomic.Int64
}

// Stats counts what a Proxy did.
type Stats struct {
	Accepted int64 // connections accepted and forwarded
	Resets   int64 // connections reset by Reset
	Refused  int64 // connections reset at once while refusing
}

// link is one proxied connection: the client's side and the target's side.
type link struct {
	client, server net.Conn
	once           sync.Once
}

// close closes both sides. With reset, the client's side is closed with
// SO_LINGER 0, so the client sees a connection reset rather than an EOF.
func (l *link) close(reset bool) {
	l.once.Do(func() {
		if reset {
			if tc, ok := l.client.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			if tc, ok := l.server.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}
		l.client.Close()
		l.server.Close()
	})
}

// Listen starts a proxy on 127.0.0.1 (a free port) forwarding to target
// (host:port). It returns an error if the listener cannot be opened; the
// target is dialled only when a client connects.
func Listen(target string) (*Proxy, error) {
	if _, _, err := net.SplitHostPort(target); err != nil {
		return nil, fmt.Errorf("faultproxy: target %q: %w", target, err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen: %w", err)
	}
	p := &Proxy{target: target, ln: ln, conns: make(map[*link]struct{})}
	p.wg.Add(1)
	go p.accept()
	return p, nil
}

// Addr returns the proxy's listening address, host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Target returns the address the proxy forwards to.
func (p *Proxy) Target() string { return p.target }

// SetLatency delays every chunk of bytes, in both directions, by d plus a
// random extra of up to jitter. Zero values remove the latency. Bytes keep
// their order.
func (p *Proxy) SetLatency(d, jitter time.Duration) {
	p.latency.Store(int64(max(d, 0)))
	p.jitter.Store(int64(max(jitter, 0)))
}

// Refuse makes the proxy reset new connections at once (on) or forward them
// again (off). Open connections are not affected; see [Proxy.Reset].
func (p *Proxy) Refuse(on bool) { p.refuse.Store(on) }

// Reset closes every open connection with a TCP reset and returns how many
// it closed.
func (p *Proxy) Reset() int {
	p.mu.Lock()
	ls := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	for _, l := range ls {
		l.close(true)
	}
	p.resets.Add(int64(len(ls)))
	return len(ls)
}

// Pause stops forwarding bytes in both directions until [Proxy.Resume]:
// connections stay open (new ones are accepted) but nothing arrives, as in
// a network partition. Pausing a paused proxy does nothing.
func (p *Proxy) Pause() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused == nil {
		p.paused = make(chan struct{})
	}
}

// Resume forwards again what was held back by [Proxy.Pause].
func (p *Proxy) Resume() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paused != nil {
		close(p.paused)
		p.paused = nil
	}
}

// Conns returns the number of connections open through the proxy.
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Stats returns the proxy's counters.
func (p *Proxy) Stats() Stats {
	return Stats{Accepted: p.accepted.Load(), Resets: p.resets.Load(), Refused: p.refused.Load()}
}

// Close stops the listener, closes every connection and waits for the
// proxy's goroutines to end. It returns the listener's close error.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	if p.paused != nil {
		close(p.paused)
		p.paused = nil
	}
	ls := make([]*link, 0, len(p.conns))
	for l := range p.conns {
		ls = append(ls, l)
	}
	p.mu.Unlock()
	err := p.ln.Close()
	for _, l := range ls {
		l.close(false)
	}
	p.wg.Wait()
	return err
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			time.Sleep(5 * time.Millisecond) // e.g. too many open files
			continue
		}
		if p.refuse.Load() {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
			c.Close()
			p.refused.Add(1)
			continue
		}
		p.wg.Add(1)
		go p.serve(c)
	}
}

func (p *Proxy) serve(client net.Conn) {
	defer p.wg.Done()
	server, err := net.DialTimeout("tcp", p.target, 5*time.Second)
	if err != nil {
		if tc, ok := client.(*net.TCPConn); ok {
			_ = tc.SetLinger(0)
		}
		client.Close()
		return
	}
	l := &link{client: client, server: server}
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		l.close(false)
		return
	}
	p.conns[l] = struct{}{}
	p.mu.Unlock()
	p.accepted.Add(1)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pipe(l, server, client) }()
	go func() { defer wg.Done(); p.pipe(l, client, server) }()
	wg.Wait()

	p.mu.Lock()
	delete(p.conns, l)
	p.mu.Unlock()
}

type chunk struct {
	b   []byte
	due time.Time
}

// pipe copies src to dst through a queue, delaying each chunk by the
// latency in force when it was read and holding it while the proxy is
// paused. When either side fails, the whole link is closed.
func (p *Proxy) pipe(l *link, dst, src net.Conn) {
	defer l.close(false)
	q := make(chan chunk, 256)
	go func() {
		defer close(q)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				q <- chunk{b: buf[:n], due: time.Now().Add(p.delay())}
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() {
		// Unblock the reader (it may be stuck sending on a full queue) and
		// let it finish.
		l.close(false)
		for range q {
		}
	}()
	for c := range q {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		p.waitResumed()
		if _, err := dst.Write(c.b); err != nil {
			return
		}
	}
	// src ended: the deferred close ends the other direction too (the
	// protocols proxied here do not half-close).
}

func (p *Proxy) delay() time.Duration {
	d := time.Duration(p.latency.Load())
	if j := p.jitter.Load(); j > 0 {
		d += time.Duration(rand.Int64N(j + 1))
	}
	return d
}

func (p *Proxy) waitResumed() {
	p.mu.Lock()
	ch := p.paused
	p.mu.Unlock()
	if ch != nil {
		<-ch
	}
}

package main

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

// counter is a loopback TCP proxy that counts the bursts of bytes each way.
// Request/response protocols on loopback deliver a reply as one burst, so
// the replies per lock+unlock count its round trips to the server.
type counter struct {
	ln       net.Listener
	target   string
	requests atomic.Int64 // bursts from client to server
	replies  atomic.Int64 // bursts from server to client
	accepted atomic.Int64 // connections opened
	wg       sync.WaitGroup
	mu       sync.Mutex
	conns    []net.Conn
}

func newCounter(target string) (*counter, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &counter{ln: ln, target: target}
	c.wg.Add(1)
	go c.accept()
	return c, nil
}

func (c *counter) accept() {
	defer c.wg.Done()
	for {
		client, err := c.ln.Accept()
		if err != nil {
			return
		}
		server, err := net.DialTimeout("tcp", c.target, 5*time.Second)
		if err != nil {
			client.Close()
			continue
		}
		c.accepted.Add(1)
		c.mu.Lock()
		c.conns = append(c.conns, client, server)
		c.mu.Unlock()
		c.wg.Add(2)
		go c.pipe(server, client, &c.requests)
		go c.pipe(client, server, &c.replies)
	}
}

func (c *counter) pipe(dst, src net.Conn, n *atomic.Int64) {
	defer c.wg.Done()
	defer dst.Close()
	buf := make([]byte, 64<<10)
	for {
		k, err := src.Read(buf)
		if k > 0 {
			n.Add(1)
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (c *counter) reset() { c.requests.Store(0); c.replies.Store(0); c.accepted.Store(0) }

func (c *counter) close() {
	c.ln.Close()
	c.mu.Lock()
	for _, conn := range c.conns {
		conn.Close()
	}
	c.mu.Unlock()
	c.wg.Wait()
}

// proxied returns rawURL with its host:port replaced by a new counter's.
func proxied(rawURL string, counters *[]*counter) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", err
	}
	if u.Host == "" {
		return "", errors.New("URL without host")
	}
	c, err := newCounter(u.Host)
	if err != nil {
		return "", err
	}
	*counters = append(*counters, c)
	u.Host = c.ln.Addr().String()
	return u.String(), nil
}

// trips is what roundTrips counted for one workload.
type trips struct {
	PerOp float64 // replies per lock+unlock (per critical section when contended)
	Conns int64   // connections opened while counting
}

// roundTrips counts, through loopback proxies in front of s's servers, the
// round trips (server replies, summed over the servers) and the new
// connections of: n uncontended lock+unlock pairs after a warm-up, and of
// each contended workload run for d. The proxies add latency, so only the
// counts are kept.
func roundTrips(ctx context.Context, s subject, cfg *config, n int, d time.Duration) (map[string]trips, error) {
	e := cfg.Env
	var counters []*counter
	defer func() {
		for _, c := range counters {
			c.close()
		}
	}()
	var err error
	rewrite := func(u string) string {
		if u == "" || err != nil {
			return u
		}
		var p string
		p, err = proxied(u, &counters)
		return p
	}
	switch s.Backend {
	case bPostgres:
		e.PostgresURL = rewrite(e.PostgresURL)
	case bRedis:
		e.RedisURL = rewrite(e.RedisURL)
	case bRedlock:
		urls := make([]string, min(3, len(e.RedlockURLs)))
		for i := range urls {
			urls[i] = rewrite(e.RedlockURLs[i])
		}
		e.RedlockURLs = urls
	case bMongo:
		// One server, no discovery beyond this address.
		e.MongoURL = rewrite(e.MongoURL)
		if err == nil {
			e.MongoURL = withQuery(e.MongoURL, "directConnection", "true")
		}
	}
	if err != nil {
		return nil, err
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := s.open(octx, &e)
	if err != nil {
		return nil, err
	}
	defer c.close()

	key := "bench:roundtrips:" + slug(s.Name) + ":" + randomOwner()[:8]
	if r := runUncontended(ctx, cfg.mutexes(c, wUncontended), key+":warmup", 50*time.Millisecond); r.Errors > 0 {
		return nil, r.FirstErr
	}
	count := func(ops int) trips {
		var t trips
		for _, c := range counters {
			t.PerOp += float64(c.replies.Load())
			t.Conns += c.accepted.Load()
		}
		if ops > 0 {
			t.PerOp /= float64(ops)
		}
		return t
	}
	reset := func() {
		// Let traffic still on its way settle before counting.
		time.Sleep(20 * time.Millisecond)
		for _, c := range counters {
			c.reset()
		}
	}
	out := map[string]trips{}

	reset()
	m := c.newMutex(key, cfg.Poll)
	for range n {
		lctx, cancel := context.WithTimeout(ctx, opTimeout)
		err := m.Lock(lctx)
		if err == nil {
			err = m.Unlock(lctx)
		}
		cancel()
		if err != nil {
			return nil, err
		}
	}
	out[wUncontended] = count(n)

	for _, w := range []string{wContended, wRelaxed} {
		if !cfg.Workloads[w] {
			continue
		}
		reset()
		r := runContended(ctx, cfg.mutexes(c, w), key+":"+w, cfg.Contenders, cfg.Hold, d)
		if r.Errors > 0 {
			return nil, r.FirstErr
		}
		out[w] = count(r.Ops)
	}
	return out, nil
}

func withQuery(rawURL, k, v string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return rawURL
	}
	q := u.Query()
	q.Set(k, v)
	u.RawQuery = q.Encode()
	return u.String()
}

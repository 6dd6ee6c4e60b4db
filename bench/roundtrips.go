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

func (c *counter) reset() { c.requests.Store(0); c.replies.Store(0) }

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

// roundTrips measures the round trips of one uncontended lock+unlock of s,
// summed over every server it talks to, over n pairs after a warm-up.
func roundTrips(ctx context.Context, s subject, e env, n int) (float64, error) {
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
		// One connection, no server discovery beyond this address.
		e.MongoURL = rewrite(e.MongoURL)
		if err == nil {
			e.MongoURL = withQuery(e.MongoURL, "directConnection", "true")
		}
	}
	if err != nil {
		return 0, err
	}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := s.open(octx, &e)
	if err != nil {
		return 0, err
	}
	defer c.close()
	m := c.newMutex("bench:roundtrips:"+slug(s.Name)+":"+randomOwner()[:8], time.Millisecond)
	pair := func() error {
		lctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		if err := m.Lock(lctx); err != nil {
			return err
		}
		return m.Unlock(lctx)
	}
	for range 20 {
		if err := pair(); err != nil {
			return 0, err
		}
	}
	// Let background traffic of the warm-up (pool health checks, replies
	// still on their way) settle before counting.
	time.Sleep(20 * time.Millisecond)
	for _, c := range counters {
		c.reset()
	}
	for range n {
		if err := pair(); err != nil {
			return 0, err
		}
	}
	var replies int64
	for _, c := range counters {
		replies += c.replies.Load()
	}
	return float64(replies) / float64(n), nil
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

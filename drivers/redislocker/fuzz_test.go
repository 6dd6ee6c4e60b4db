package redislocker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gomodule/redigo/redis"

	"github.com/dlock-go/dlock/locker"
)

// The fuzz targets below feed arbitrary bytes to the driver as the Redis
// server's replies (through redigo's own RESP parser, over a fake
// connection), and arbitrary URLs and prefixes to its constructors. They
// check that nothing panics or hangs and that what the driver reports is
// consistent. Run one with, e.g.,
//
//	go test -run '^$' -fuzz '^FuzzReplies$' -fuzztime 60s ./drivers/redislocker/
//
// Their seed corpora are in testdata/fuzz/<target>/.

// hugeLength reports whether replies announce a bulk string or an array
// longer than 1 MiB elements. redigo v1.9.3 allocates whatever length a
// reply announces: a length past the address space panics in makeslice
// ("$99999999999999999999"), a merely huge one exhausts memory. That is the
// client library's behaviour with a hostile or corrupt server, outside the
// driver's reach, so such inputs are skipped (testdata keeps one as a
// reminder: redigo_bulk_length_overflow).
func hugeLength(replies ...[]byte) bool {
	for _, r := range replies {
		for i := 0; i < len(r); i++ {
			if r[i] != '$' && r[i] != '*' {
				continue
			}
			n, j := 0, i+1
			for ; j < len(r) && r[j] >= '0' && r[j] <= '9' && n <= 1<<20; j++ {
				n = n*10 + int(r[j]-'0')
			}
			if n > 1<<20 {
				return true
			}
		}
	}
	return false
}

// fzConn is a net.Conn whose reads come from a script of reply bytes and
// whose writes are discarded.
type fzConn struct {
	mu sync.Mutex
	r  *bytes.Reader
}

func (c *fzConn) Read(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.r.Read(p)
}
func (c *fzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fzConn) Close() error                     { return nil }
func (c *fzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fzConn) SetDeadline(time.Time) error      { return nil }
func (c *fzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fzConn) SetWriteDeadline(time.Time) error { return nil }

// fzPool hands out connections that all read the same script of replies,
// so that successive commands consume successive replies.
type fzPool struct{ conn *fzConn }

func newFzPool(replies []byte) *fzPool {
	return &fzPool{conn: &fzConn{r: bytes.NewReader(replies)}}
}

func (p *fzPool) GetContext(ctx context.Context) (redis.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return redis.NewConn(p.conn, time.Second, time.Second), nil
}

// replySeeds are well-formed and malformed replies of the Lua scripts.
var replySeeds = []string{
	":7\r\n",                                 // acquire: token 7
	":0\r\n",                                 // acquire: held
	":-3\r\n",                                // a negative token
	"-NOSCRIPT No matching script\r\n:5\r\n", // EVALSHA falls back to EVAL
	"*3\r\n$5\r\nowner\r\n:7\r\n:1500\r\n",   // inspect: a live lease
	"*0\r\n",                                 // inspect: free
	"*3\r\n$1\r\na\r\n$2\r\n12\r\n:-1\r\n",   // token as a bulk string, no expiry
	"*2\r\n$1\r\na\r\n:1\r\n",                // too short
	"*3\r\n:1\r\n:2\r\n:3\r\n",               // owner as an integer
	"$-1\r\n", "*-1\r\n", "+OK\r\n", "-ERR dlock: malformed lock value\r\n",
	"$3\r\nabc\r\n", ":99999999999999999999\r\n", "*1\r\n*1\r\n*1\r\n:1\r\n", "",
	":1\r\n:1\r\n:1\r\n*3\r\n$1\r\no\r\n:1\r\n:10\r\n",
}

func FuzzReplies(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s), uint8(0))
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, replies []byte, op uint8) {
		if hugeLength(replies) {
			return // an announced length redigo would try to allocate (an upstream panic; see hugeLength)
		}
		l, err := New(newFzPool(replies))
		if err != nil {
			t.Fatal(err)
		}
		fzOps(t, l, op)
	})
}

// FuzzRedlockReplies runs the operations on a three-node Redlock whose
// nodes answer with the three scripts given.
func FuzzRedlockReplies(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s), []byte(s), []byte(":0\r\n"), uint8(0))
		f.Add([]byte(s), []byte(":3\r\n:1\r\n"), []byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, a, b, c []byte, op uint8) {
		if hugeLength(a, b, c) {
			return // an announced length redigo would try to allocate (an upstream panic; see hugeLength)
		}
		l, err := NewRedlock([]Pool{newFzPool(a), newFzPool(b), newFzPool(c)})
		if err != nil {
			t.Fatal(err)
		}
		fzOps(t, l, op)
	})
}

// fzOps runs the operation op selects (all of them for op >= 4) and checks
// what they report.
func fzOps(t *testing.T, l *Locker, op uint8) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	const key, owner, ttl = "k", "owner", time.Second
	all := op >= 4
	if all || op == 0 {
		lease, err := l.Acquire(ctx, key, owner, ttl)
		switch {
		case err == nil && (lease.Token == 0 || lease.Validity <= 0 || lease.Validity > ttl):
			// Token 0 is what Lock.Token reports for no lease; a negative
			// token (a counter someone set below zero) still rises.
			t.Fatalf("Acquire granted %+v", lease)
		case err != nil && errors.Is(err, locker.ErrNotObtained) && strings.Contains(err.Error(), "nodes failed"):
			t.Fatalf("Acquire reported node failures as contention: %v", err)
		}
	}
	if all || op == 1 {
		lease, err := l.Refresh(ctx, key, owner, ttl)
		if err == nil && (lease.Token == 0 || lease.Validity <= 0 || lease.Validity > ttl) {
			t.Fatalf("Refresh granted %+v", lease)
		}
	}
	if all || op == 2 {
		_ = l.Release(ctx, key, owner)
	}
	if all || op == 3 {
		info, err := l.Inspect(ctx, key)
		if err == nil {
			if info.Key != key {
				t.Fatalf("Inspect = %+v, for another key", info)
			}
			if info.Owner == "" && (info.Token != 0 || info.TTL != 0) {
				t.Fatalf("Inspect = %+v: a free key with a token or TTL", info)
			}
			if info.TTL < 0 {
				t.Fatalf("Inspect = %+v: negative TTL", info)
			}
		}
	}
	if ctx.Err() != nil {
		t.Fatal("the operations did not finish within 10s")
	}
}

// FuzzParseHolder decodes inspect.lua's reply as redigo parses it.
func FuzzParseHolder(f *testing.F) {
	for _, s := range replySeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		if hugeLength(reply) {
			return // an announced length redigo would try to allocate (an upstream panic; see hugeLength)
		}
		c := redis.NewConn(&fzConn{r: bytes.NewReader(reply)}, time.Second, time.Second)
		v, err := c.Receive()
		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return
		}
		h, err := parseHolder(v, err)
		if err != nil {
			return
		}
		if h.pttl < 0 {
			t.Fatalf("parseHolder(%q) = %+v: negative pttl", reply, h)
		}
		if h.owner == "" && (h.token != 0 || h.pttl != 0) {
			// An empty owner is a free key to Info; a reply naming none
			// should not carry a lease.
			t.Logf("parseHolder(%q) = %+v: empty owner with a lease", reply, h)
		}
	})
}

// FuzzOpen checks URL parsing and options: Open never panics, does no I/O,
// and fails only with ErrInvalidOption, without repeating a password.
func FuzzOpen(f *testing.F) {
	for _, s := range []string{
		"redis://127.0.0.1:6379", "rediss://user:secret123@cache:6380/2", "redis://h/999999999",
		"redis://h/x", "redis://", "http://h", "redis:opaque", "redis://%zz", "redis://[::1]:1/0",
	} {
		f.Add(s, "distributed-locks", 0.01, int64(2*time.Millisecond))
	}
	f.Add("redis://h", "", -1.0, int64(-1))
	f.Add("redis://h", "a{b}", 1.0, int64(0))
	f.Add("redis://h", "a b", 0.5, int64(1))
	f.Fuzz(func(t *testing.T, raw, prefix string, factor float64, extra int64) {
		l, err := Open(raw, Prefix(prefix), Drift(factor, time.Duration(extra)))
		if err != nil {
			if !errors.Is(err, locker.ErrInvalidOption) {
				t.Fatalf("Open(%q): %v, want ErrInvalidOption", raw, err)
			}
			// The password as the URL grammar has it (an opaque URL such as
			// "redis:x@h" has none), when it is long enough to be
			// unmistakable and appears nowhere else in the URL.
			if u, perr := url.Parse(raw); perr == nil && u.User != nil {
				pw, ok := u.User.Password()
				rest := strings.Replace(raw, u.User.String()+"@", "", 1)
				if ok && len(pw) >= 6 && !strings.Contains(rest, pw) && strings.Contains(err.Error(), pw) {
					t.Fatalf("Open's error repeats the password: %v", err)
				}
			}
			return
		}
		if err := validatePrefix(l.prefix); err != nil {
			t.Fatalf("Open accepted prefix %q: %v", prefix, err)
		}
		if strings.ContainsAny(l.prefix, "{}") {
			t.Fatalf("prefix %q with a brace accepted", l.prefix)
		}
		if err := l.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
	})
}

package faultproxy

import (
	"bufio"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// echoServer answers every line it reads with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().String()
}

func start(t *testing.T) *Proxy {
	t.Helper()
	p, err := Listen(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func dial(t *testing.T, p *Proxy) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// roundTrip sends a line and returns the time its echo took.
func roundTrip(t *testing.T, c net.Conn, r *bufio.Reader) (time.Duration, error) {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return 0, err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	if line != "ping\n" {
		t.Fatalf("echo %q, want %q", line, "ping\n")
	}
	return time.Since(start), nil
}

func TestForwards(t *testing.T) {
	p := start(t)
	c, r := dial(t, p)
	for range 3 {
		if _, err := roundTrip(t, c, r); err != nil {
			t.Fatal(err)
		}
	}
	if got := p.Stats().Accepted; got != 1 {
		t.Fatalf("Accepted = %d, want 1", got)
	}
}

func TestLatency(t *testing.T) {
	p := start(t)
	c, r := dial(t, p)
	p.SetLatency(40*time.Millisecond, 0)
	d, err := roundTrip(t, c, r)
	if err != nil {
		t.Fatal(err)
	}
	// Both directions are delayed.
	if d < 80*time.Millisecond {
		t.Fatalf("round trip %v with 40ms latency each way, want at least 80ms", d)
	}
	p.SetLatency(0, 0)
	if d, err = roundTrip(t, c, r); err != nil {
		t.Fatal(err)
	}
	if d > 40*time.Millisecond {
		t.Logf("round trip %v after latency removed (a chunk read earlier may still be delayed)", d)
	}
}

func TestReset(t *testing.T) {
	p := start(t)
	c, r := dial(t, p)
	if _, err := roundTrip(t, c, r); err != nil {
		t.Fatal(err)
	}
	if n := p.Reset(); n != 1 {
		t.Fatalf("Reset closed %d connections, want 1", n)
	}
	var err error
	for range 3 { // the first write may still be buffered by the kernel
		if _, err = roundTrip(t, c, r); err != nil {
			break
		}
	}
	if err == nil {
		t.Fatal("round trips succeed after Reset")
	}
	// New connections work.
	c2, r2 := dial(t, p)
	if _, err := roundTrip(t, c2, r2); err != nil {
		t.Fatalf("new connection after Reset: %v", err)
	}
}

func TestRefuse(t *testing.T) {
	p := start(t)
	p.Refuse(true)
	// The reset may come before the connection is reported open (a dial
	// error) or after (a failed round trip).
	if c, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		defer c.Close()
		if _, err := roundTrip(t, c, bufio.NewReader(c)); err == nil {
			t.Fatal("round trip through a refusing proxy succeeded")
		}
	}
	p.Refuse(false)
	c2, r2 := dial(t, p)
	if _, err := roundTrip(t, c2, r2); err != nil {
		t.Fatalf("after Refuse(false): %v", err)
	}
	if p.Stats().Refused < 1 {
		t.Fatal("Refused counter not incremented")
	}
}

func TestPause(t *testing.T) {
	p := start(t)
	c, r := dial(t, p)
	p.Pause()
	_ = c.SetDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Write([]byte("ping\n"))
	_, err := r.ReadString('\n')
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read through a paused proxy: %v, want a timeout", err)
	}
	p.Resume()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := r.ReadString('\n')
	if err != nil || line != "ping\n" {
		t.Fatalf("after Resume: %q, %v", line, err)
	}
}

func TestCloseWhilePaused(t *testing.T) {
	p, err := Listen(echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	c, _ := dial(t, p)
	p.Pause()
	_, _ = c.Write([]byte("ping\n"))
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close of a paused proxy did not return")
	}
}

func TestBadTarget(t *testing.T) {
	if _, err := Listen("no-port"); err == nil {
		t.Fatal("Listen accepted a target without a port")
	}
}

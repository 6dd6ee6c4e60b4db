package torture

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is one worker process as the coordinator sees it.
type proc struct {
	idx    int
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	exited chan struct{} // closed when the process has exited and its output is read
	err    error         // Wait's error

	mu      sync.Mutex
	held    map[string]string // owner -> key, as the process reported
	last    stats             // latest cumulative statistics
	ended   bool              // printed its final statistics
	killed  bool              // by the kill fault
	stopped bool              // SIGSTOPped right now
	stderr  []string          // last lines
}

// spawn starts worker process idx.
func (r *runner) spawn(idx int) (*proc, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cc := r.child
	cc.Proc = idx
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), childEnv+"="+encodeChild(cc))
	p := &proc{idx: idx, cmd: cmd, exited: make(chan struct{}), held: map[string]string{}}
	if p.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.readStdout(stdout) }()
	go func() { defer wg.Done(); p.readStderr(stderr, r) }()
	go func() {
		wg.Wait()
		p.err = cmd.Wait()
		close(p.exited)
	}()
	return p, nil
}

func (p *proc) readStdout(rd io.Reader) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		kind, rest, _ := strings.Cut(line, " ")
		p.mu.Lock()
		switch kind {
		case "A":
			owner, key, _ := strings.Cut(rest, " ")
			p.held[owner] = key
		case "R":
			delete(p.held, rest)
		case "S":
			var s stats
			if json.Unmarshal([]byte(rest), &s) == nil {
				p.last = s
			}
		case "E":
			p.ended = true
		}
		p.mu.Unlock()
	}
}

func (p *proc) readStderr(rd io.Reader, r *runner) {
	sc := bufio.NewScanner(rd)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		p.mu.Lock()
		p.stderr = append(p.stderr, line)
		if len(p.stderr) > 40 {
			p.stderr = p.stderr[1:]
		}
		p.mu.Unlock()
		if r.cfg.Verbose {
			r.logf("proc %d: %s", p.idx, line)
		}
	}
}

// heldKeys returns the keys p holds, by its own reports.
func (p *proc) heldKeys() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ks []string
	for _, k := range p.held {
		ks = append(ks, k)
	}
	return ks
}

func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) signal(sig syscall.Signal) error {
	return p.cmd.Process.Signal(sig)
}

// pickHolder returns a live, running worker process that holds a lock, or,
// failing that, any live running one; nil if there is none.
func (r *runner) pickHolder() *proc {
	r.mu.Lock()
	defer r.mu.Unlock()
	var holders, running []*proc
	for _, p := range r.procs {
		p.mu.Lock()
		ok := !p.stopped && !p.killed
		held := len(p.held) > 0
		p.mu.Unlock()
		if !ok || !p.alive() {
			continue
		}
		running = append(running, p)
		if held {
			holders = append(holders, p)
		}
	}
	switch {
	case len(holders) > 0:
		return holders[rand.IntN(len(holders))]
	case len(running) > 0:
		return running[rand.IntN(len(running))]
	}
	return nil
}

// stopProcs asks every worker process to finish (by closing its standard
// input), waits up to timeout, then kills what is left.
func (r *runner) stopProcs(timeout time.Duration) {
	r.mu.Lock()
	ps := append([]*proc(nil), r.procs...)
	r.mu.Unlock()
	for _, p := range ps {
		_ = p.signal(syscall.SIGCONT)
		p.stdin.Close()
	}
	deadline := time.After(timeout)
	for _, p := range ps {
		select {
		case <-p.exited:
		case <-deadline:
			r.logf("proc %d did not finish in %v; killing it", p.idx, timeout)
			_ = p.cmd.Process.Kill()
			<-p.exited
		}
	}
}

// describeExit says how a worker process ended, or "" if it ended normally
// or was killed by the kill fault.
func (p *proc) describeExit() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.killed || (p.err == nil && p.ended) {
		return ""
	}
	return fmt.Sprintf("proc %d exited (%v, final statistics printed: %v); last stderr:\n  %s",
		p.idx, p.err, p.ended, strings.Join(p.stderr, "\n  "))
}

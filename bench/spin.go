package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"
)

// spinEnv marks a re-executed copy of this program that only burns CPU.
const spinEnv = "DLOCK_BENCH_SPIN"

// spinIfAsked turns this process into a spinner when spinEnv says so.
func spinIfAsked() {
	if os.Getenv(spinEnv) != "1" {
		return
	}
	for {
	}
}

// startSpinners starts n copies of this program at the lowest CPU priority
// (nice 19) that do nothing but spin, so that no CPU of the machine goes
// idle during the run. On a virtual machine an idle vCPU can take longer to
// wake than a loopback round trip to Redis: without spinners, a library
// that keeps a second goroutine runnable (and so a CPU awake) looks faster
// than one that blocks on the socket. Spinners yield to every other process,
// so they take little from the clients and servers. The copies die with this
// process; stop kills them sooner.
func startSpinners(n int) (stop func(), err error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	var cmds []*exec.Cmd
	stop = func() {
		for _, c := range cmds {
			_ = c.Process.Kill()
			_ = c.Wait()
		}
	}
	for i := 0; i < n; i++ {
		c := exec.Command(exe)
		c.Env = append(os.Environ(), spinEnv+"=1", "GOMAXPROCS=1")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			stop()
			return nil, fmt.Errorf("starting a spinner: %w", err)
		}
		cmds = append(cmds, c)
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, c.Process.Pid, 19); err != nil {
			stop()
			return nil, fmt.Errorf("lowering a spinner's priority: %w", err)
		}
	}
	return stop, nil
}

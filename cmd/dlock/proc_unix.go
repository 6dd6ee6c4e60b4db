//go:build unix

package main

import (
	"os"
	"os/exec"
	"syscall"
)

// forwardedSignals are the signals dlock run passes on to its command.
var forwardedSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP,
	syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2,
}

var (
	sigTERM os.Signal = syscall.SIGTERM
	sigCONT os.Signal = syscall.SIGCONT
	sigKILL os.Signal = syscall.SIGKILL
)

// isKeyboardSignal reports whether a terminal sends sig to its foreground
// process group from the keyboard.
func isKeyboardSignal(sig os.Signal) bool {
	return sig == syscall.SIGINT || sig == syscall.SIGQUIT
}

// setProcessGroup makes the command the leader of a new process group if
// own is true.
func setProcessGroup(cmd *exec.Cmd, own bool) {
	if own {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	}
}

// job is a started command.
type job struct {
	cmd   *exec.Cmd
	group bool // the command leads a process group of its own
}

// signal sends sig to the command's process group, or to the command alone
// when it shares dlock's group. Errors (the command already exited) are
// ignored.
func (j *job) signal(sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		return
	}
	pid := j.cmd.Process.Pid
	if j.group {
		_ = syscall.Kill(-pid, s)
		return
	}
	_ = syscall.Kill(pid, s)
}

// groupAlive reports whether any process of the command's group remains.
func (j *job) groupAlive() bool {
	return j.group && syscall.Kill(-j.cmd.Process.Pid, 0) == nil
}

// exitStatus returns the status a shell would report for a command that
// ended with state: its exit code, or 128+N if signal N killed it.
func exitStatus(state *os.ProcessState) int {
	if ws, ok := state.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return state.ExitCode()
}

func signalNumber(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return int(s)
	}
	return 0
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGINT: "SIGINT", syscall.SIGTERM: "SIGTERM", syscall.SIGHUP: "SIGHUP",
	syscall.SIGQUIT: "SIGQUIT", syscall.SIGUSR1: "SIGUSR1", syscall.SIGUSR2: "SIGUSR2",
}

func signalName(sig os.Signal) string {
	if s, ok := sig.(syscall.Signal); ok {
		if n, ok := signalNames[s]; ok {
			return n
		}
	}
	return sig.String()
}

//go:build !unix

package main

import (
	"os"
	"os/exec"
)

// Without Unix process groups and signals, dlock run forwards only an
// interrupt and ends a command that lost its lock by killing it.

var forwardedSignals = []os.Signal{os.Interrupt}

var (
	sigTERM os.Signal = os.Kill
	sigCONT os.Signal = os.Kill
	sigKILL os.Signal = os.Kill
)

func isKeyboardSignal(os.Signal) bool { return false }

func setProcessGroup(*exec.Cmd, bool) {}

type job struct {
	cmd   *exec.Cmd
	group bool
}

func (j *job) signal(sig os.Signal) { _ = j.cmd.Process.Signal(sig) }

func (j *job) groupAlive() bool { return false }

func exitStatus(state *os.ProcessState) int { return state.ExitCode() }

func signalNumber(os.Signal) int { return 2 }

func signalName(sig os.Signal) string { return sig.String() }

func inForeground() bool { return false }

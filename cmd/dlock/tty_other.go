//go:build unix && !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package main

// inForeground reports false where dlock cannot ask the terminal: the
// command then always runs in a process group of its own.
func inForeground() bool { return false }

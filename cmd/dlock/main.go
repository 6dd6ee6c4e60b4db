// Command dlock runs a job under a distributed lock and manages dlock's
// locks from the shell: flock(1) for a fleet of machines.
//
//	dlock run --url URL --key KEY [--ttl 30s] [--wait DURATION] [--grace 10s] -- COMMAND [ARGS...]
//	dlock migrate --url postgres://... [--down] [--table NAME]
//	dlock status --url URL KEY [--json]
//	dlock release --url URL KEY --force
//
// The storage is chosen by the URL: postgres:// or postgresql:// (PostgreSQL;
// create the lock table first with dlock migrate), redis:// or rediss://
// (one Redis server; several --url flags mean Redlock over independent
// servers), mongodb:// or mongodb+srv:// (MongoDB; the database is the URL's
// path). Without --url, the DLOCK_URL environment variable is used.
//
// Run "dlock help COMMAND" for each command's flags, exit statuses and
// examples.
//
// Install it with:
//
//	go install github.com/dlock-go/dlock/cmd/dlock@latest
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
)

// Exit statuses of dlock itself. dlock run otherwise exits with its
// command's status.
const (
	exitOK          = 0
	exitFailure     = 1   // a storage operation failed (status, release, migrate)
	exitUsage       = 2   // bad flags, arguments or URLs
	exitUnavailable = 69  // run: the storage failed, so the lock could not be taken (EX_UNAVAILABLE)
	exitNotObtained = 75  // run: the lock is held elsewhere (EX_TEMPFAIL)
	exitLost        = 76  // run: the lock was lost while the command ran
	exitCannotRun   = 126 // run: the command was found but could not be started
	exitNotFound    = 127 // run: the command was not found
)

// exitError ends the program with code after printing msg (if not empty)
// on stderr as "dlock: msg".
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

// usagef is an exitError for bad invocations: exit status 2.
func usagef(format string, args ...any) error {
	return &exitError{code: exitUsage, msg: fmt.Sprintf(format, args...)}
}

// failf is an exitError with the given code.
func failf(code int, format string, args ...any) error {
	return &exitError{code: code, msg: fmt.Sprintf(format, args...)}
}

// command is one subcommand of dlock.
type command struct {
	name    string
	summary string
	usage   string // the full help text
	run     func(env *environment, args []string) error
}

var commands []*command

func init() {
	commands = []*command{runCommand, migrateCommand, statusCommand, releaseCommand}
}

func findCommand(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// environment is what a command sees of the world; tests could replace it,
// main fills it from the process.
type environment struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

func main() {
	env := &environment{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
	os.Exit(realMain(env, os.Args[1:]))
}

// realMain runs dlock with args (without the program name) and returns the
// exit status.
func realMain(env *environment, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(env.stderr, mainUsage())
		return exitUsage
	}
	name := args[0]
	switch name {
	case "-h", "-help", "--help", "help":
		if name == "help" && len(args) > 1 {
			if c := findCommand(args[1]); c != nil {
				fmt.Fprint(env.stdout, c.usage)
				return exitOK
			}
			fmt.Fprintf(env.stderr, "dlock: unknown command %q\n\n%s", args[1], mainUsage())
			return exitUsage
		}
		fmt.Fprint(env.stdout, mainUsage())
		return exitOK
	case "-version", "--version", "version":
		fmt.Fprintf(env.stdout, "dlock %s\n", version())
		return exitOK
	}
	c := findCommand(name)
	if c == nil {
		if strings.HasPrefix(name, "-") {
			fmt.Fprintf(env.stderr, "dlock: flag %s before the command; flags go after it (dlock COMMAND [flags])\n\n%s", name, mainUsage())
		} else {
			fmt.Fprintf(env.stderr, "dlock: unknown command %q\n\n%s", name, mainUsage())
		}
		return exitUsage
	}
	err := c.run(env, args[1:])
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.msg != "" {
			fmt.Fprintf(env.stderr, "dlock %s: %s\n", c.name, oneLine(ee.msg))
		}
		if ee.code == exitUsage && ee.msg != "" {
			fmt.Fprintf(env.stderr, "Run 'dlock help %s' for usage.\n", c.name)
		}
		return ee.code
	}
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	fmt.Fprintf(env.stderr, "dlock %s: %s\n", c.name, oneLine(cleanErr(err)))
	return exitFailure
}

// oneLine joins the lines of a message (errors.Join separates errors with
// newlines) so that every message dlock prints is one line.
func oneLine(s string) string {
	return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ")
}

func mainUsage() string {
	var b strings.Builder
	b.WriteString(`dlock runs a job under a distributed lock, and manages dlock's locks.

Usage:
  dlock COMMAND [flags] [arguments]

Commands:
`)
	for _, c := range commands {
		fmt.Fprintf(&b, "  %-9s %s\n", c.name, c.summary)
	}
	b.WriteString(`
Storage URLs (--url, or the DLOCK_URL environment variable):
  postgres://user:pass@host/db?sslmode=disable   PostgreSQL (set up with dlock migrate)
  redis://host:6379/0, rediss://...                one Redis server
  several redis:// URLs                            Redlock over independent servers
  mongodb://host:27017/db                          MongoDB (database from the path)

Run 'dlock help COMMAND' for a command's flags and examples.
'dlock --version' prints the version.
`)
	return b.String()
}

// version returns the module version dlock was built from.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok || info.Main.Version == "" {
		return "(devel)"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && v == "(devel)" {
			if len(s.Value) > 12 {
				s.Value = s.Value[:12]
			}
			v += " " + s.Value
		}
	}
	return v
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"sync"
	"time"

	"github.com/dlock-go/dlock/locker"
)

const runUsage = `Usage: dlock run --url URL --key KEY [flags] -- COMMAND [ARGS...]

Run COMMAND while holding the lock KEY, as flock(1) does on one machine:
for a fleet. dlock takes the lock (waiting up to --wait; by default it does
not wait), starts COMMAND, keeps the lease alive in the background (a
refresh every third of --ttl), and releases the lock when COMMAND exits.
If the lock is held elsewhere, nothing is run and dlock exits 75.

COMMAND gets two environment variables:
  DLOCK_KEY     the lock's key
  DLOCK_TOKEN   the fencing token of this acquisition: a number that grows
                with every acquisition of KEY. Storing it next to what the
                job writes lets a store refuse writes from an older holder.

If the lock is lost while COMMAND runs (the storage became unreachable for
longer than the lease, or the lock was removed with 'dlock release --force'),
dlock sends COMMAND SIGTERM, SIGKILL after --grace, and exits 76.

The signals SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 sent to
dlock are forwarded to COMMAND, and dlock keeps waiting for it to exit.
COMMAND runs in a process group of its own, so forwarded signals and the
termination after a loss reach every process it started (sh -c 'a; b'
included). Started in the foreground of a terminal, dlock instead leaves
COMMAND in dlock's own (foreground) process group, so that COMMAND can use the
terminal and job control works as with flock(1): the keyboard's Ctrl-C and
Ctrl-\ then reach COMMAND directly and dlock does not forward SIGINT and
SIGQUIT a second time; after a loss only COMMAND itself is signalled.
(While stopped with Ctrl-Z, dlock cannot refresh the lease: a lease that
ran out meanwhile counts as lost when it continues.)
Processes that COMMAND leaves running in the background when it exits are
not waited for: the lock is released when COMMAND exits.

Flags:
  --url URL          storage URL; repeat for Redlock over several Redis
                     servers (default: $DLOCK_URL, which may list several
                     URLs separated by commas or spaces)
  --key KEY          the lock's key (required)
  --ttl DURATION     lease length, renewed while COMMAND runs (default 30s)
  --wait DURATION    how long to wait for a lock held elsewhere (default 0:
                     do not wait)
  --grace DURATION   after a loss, time between SIGTERM and SIGKILL
                     (default 10s)
  -q, --quiet        no message when the lock is held elsewhere (exit 75)
  -v, --verbose      report waiting, acquiring (with the token) and
                     releasing on stderr
  --table NAME       PostgreSQL lock table (default dlock_locks)
  --prefix PREFIX    Redis key prefix (default distributed-locks)
  --collection NAME  MongoDB collection (default locks)

Exit status:
  COMMAND's exit status, or 128+N if COMMAND was killed by signal N
  2     bad flags, arguments or URL; nothing run
  69    the storage failed or did not answer; nothing run
  75    the lock is held elsewhere (after --wait); nothing run
  76    the lock was lost while COMMAND ran; COMMAND was terminated
  126   COMMAND could not be started; 127 COMMAND not found
  128+N dlock got signal N while waiting for the lock; nothing run

Examples:
  # crontab: the nightly report runs on one replica, whichever gets there first
  0 3 * * * dlock run -q --url postgres://app@db/app --key nightly-report -- /usr/local/bin/report

  # wait up to 5 minutes for the previous run to finish
  dlock run --url redis://cache:6379 --key deploy --wait 5m -- ./deploy.sh

  # Redlock over three independent Redis servers, with the URLs in the environment
  export DLOCK_URL=redis://r1:6379,redis://r2:6379,redis://r3:6379
  dlock run --key reindex --ttl 1m -- sh -c 'echo "token $DLOCK_TOKEN"; ./reindex'
`

var runCommand = &command{
	name:    "run",
	summary: "run a command while holding a lock",
	usage:   runUsage,
}

func init() { runCommand.run = runRun }

// waitBackoff spaces the attempts of a waiting dlock run. Drivers that can
// announce releases wake the waiter sooner.
var waitBackoff = locker.ExponentialBackoff{Min: 50 * time.Millisecond, Max: 500 * time.Millisecond}

func runRun(env *environment, args []string) error {
	flags := newFlagSet("run")
	var sf storageFlags
	sf.register(flags)
	key := flags.String("key", "", "the lock's `key`")
	ttl := flags.Duration("ttl", 30*time.Second, "lease length")
	wait := flags.Duration("wait", 0, "how long to wait for the lock")
	grace := flags.Duration("grace", 10*time.Second, "time between SIGTERM and SIGKILL after a loss")
	var quiet, verbose bool
	flags.BoolVar(&quiet, "quiet", false, "no message when the lock is held elsewhere")
	flags.BoolVar(&quiet, "q", false, "short for --quiet")
	flags.BoolVar(&verbose, "verbose", false, "report waiting, acquiring and releasing on stderr")
	flags.BoolVar(&verbose, "v", false, "short for --verbose")
	if err := flags.Parse(args); err != nil {
		return parseError(env, runCommand, err)
	}
	argv := flags.Args()
	switch {
	case *key == "":
		return usagef("--key is required")
	case len(argv) == 0:
		return usagef("no command to run (dlock run --key KEY -- COMMAND [ARGS...])")
	case *wait < 0:
		return usagef("--wait %v is negative", *wait)
	case *grace < 0:
		return usagef("--grace %v is negative", *grace)
	}
	if err := locker.ValidateKey(*key); err != nil {
		return usagef("--key: %s", cleanErr(err))
	}
	if err := locker.ValidateTTL(*ttl); err != nil {
		return usagef("--ttl: %s", cleanErr(err))
	}
	octx, ocancel := context.WithTimeout(context.Background(), max(*ttl, 30*time.Second))
	defer ocancel()
	l, closeStorage, err := sf.open(octx, env, exitUnavailable)
	if err != nil {
		if ee, ok := err.(*exitError); ok && ee.code == exitUnavailable {
			ee.msg = fmt.Sprintf("cannot take lock %q: %s; nothing run", *key, ee.msg)
		}
		return err
	}
	defer closeStorage()

	// Find COMMAND before taking the lock: a typo must not hold it.
	path, err := exec.LookPath(argv[0])
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			return failf(exitNotFound, "%s: command not found; nothing run", argv[0])
		}
		return failf(exitCannotRun, "%s: %v; nothing run", argv[0], unwrapExec(err))
	}

	r := &runner{
		env: env, key: *key, ttl: *ttl, wait: *wait, grace: *grace, quiet: quiet, verbose: verbose,
		name: argv[0], path: path, args: argv,
	}
	return r.run(l)
}

// runner is one dlock run.
type runner struct {
	env               *environment
	key               string
	ttl, wait, grace  time.Duration
	quiet, verbose    bool
	name, path        string
	args              []string
	mu                sync.Mutex
	lastAttemptErr    error // the error of the last failed acquire attempt
	attemptsCompleted int
}

func (r *runner) observe(e locker.Event) {
	switch e.Kind {
	case locker.Contended:
		r.mu.Lock()
		r.lastAttemptErr = e.Err
		r.attemptsCompleted++
		r.mu.Unlock()
		if r.verbose && e.Attempt == 1 && r.wait > 0 {
			r.logf("lock %q is not free (%s); waiting up to %v", r.key, oneLine(cleanErr(e.Err)), r.wait)
		}
	case locker.Acquired:
		if r.verbose {
			r.logf("acquired lock %q, token %d, after %v", r.key, e.Token, e.Wait.Round(time.Millisecond))
		}
	case locker.Released:
		if r.verbose && e.Err == nil {
			r.logf("released lock %q after %v", r.key, e.Held.Round(time.Millisecond))
		}
	}
}

// logf prints a progress line on stderr.
func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(r.env.stderr, "dlock run: "+format+"\n", args...)
}

func (r *runner) run(l locker.Locker) error {
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, forwardedSignals...)
	defer signal.Stop(sigs)

	f, err := locker.NewFactory(l, locker.TTL(r.ttl), locker.AutoRefresh(), locker.Observe(r.observe))
	if err != nil {
		return usagef("%s", cleanErr(err))
	}
	lk := f.NewLock(r.key)

	if err := r.acquire(lk, sigs); err != nil {
		return err
	}
	return r.supervise(lk, sigs)
}

// acquire takes the lock, waiting up to r.wait; a signal stops the wait.
func (r *runner) acquire(lk *locker.Lock, sigs <-chan os.Signal) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		if r.wait > 0 {
			wctx, wcancel := context.WithTimeout(ctx, r.wait)
			defer wcancel()
			done <- lk.Lock(wctx, locker.Retries(locker.Unlimited), locker.WithBackoff(waitBackoff))
			return
		}
		// One attempt, bounded so that a storage that does not answer
		// cannot hang a cron job (a lease granted after a TTL has passed is
		// refused by the locker as expired on arrival).
		tctx, tcancel := context.WithTimeout(ctx, r.tryTimeout())
		defer tcancel()
		done <- lk.TryLock(tctx)
	}()

	var err error
	select {
	case err = <-done:
	case sig := <-sigs:
		cancel()
		if <-done == nil {
			r.unlock(lk)
		}
		return failf(128+signalNumber(sig), "got %s while waiting for lock %q; nothing run", signalName(sig), r.key)
	}
	if err == nil {
		return nil
	}

	r.mu.Lock()
	last, attempts := r.lastAttemptErr, r.attemptsCompleted
	r.mu.Unlock()
	switch {
	case errors.Is(err, locker.ErrInvalidOption) || errors.Is(err, locker.ErrInvalidKey):
		return usagef("%s", cleanErr(err))
	case last != nil && !errors.Is(last, locker.ErrNotObtained):
		return failf(exitUnavailable, "cannot take lock %q: %v; nothing run", r.key, last)
	case attempts == 0:
		limit := r.wait
		if limit == 0 {
			limit = r.tryTimeout()
		}
		return failf(exitUnavailable, "cannot take lock %q: the storage did not answer within %v; nothing run", r.key, limit)
	}
	if r.quiet {
		return &exitError{code: exitNotObtained}
	}
	if r.wait > 0 {
		return failf(exitNotObtained, "lock %q is still held elsewhere after waiting %v; %s not run", r.key, r.wait, r.name)
	}
	return failf(exitNotObtained, "lock %q is held elsewhere; %s not run", r.key, r.name)
}

// tryTimeout bounds a single attempt without --wait: a lease's length, but
// at least 10s, so that a short TTL leaves room to connect.
func (r *runner) tryTimeout() time.Duration { return max(r.ttl, 10*time.Second) }

// supervise runs the command under the held lock, forwards signals,
// terminates the command if the lock is lost, and releases the lock.
func (r *runner) supervise(lk *locker.Lock, sigs <-chan os.Signal) error {
	cmd := &exec.Cmd{
		Path:   r.path,
		Args:   r.args,
		Stdin:  os.Stdin,
		Stdout: os.Stdout,
		Stderr: os.Stderr,
		Env: append(os.Environ(),
			"DLOCK_KEY="+r.key,
			"DLOCK_TOKEN="+strconv.FormatInt(lk.Token(), 10)),
	}
	interactive := inForeground()
	ownGroup := !interactive
	setProcessGroup(cmd, ownGroup)
	if err := cmd.Start(); err != nil {
		r.unlock(lk)
		return failf(exitCannotRun, "%s: %v; nothing run", r.name, unwrapExec(err))
	}
	j := &job{cmd: cmd, group: ownGroup}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	lost := lk.Done()
	var (
		lostCause  error
		graceTimer *time.Timer
		graceC     <-chan time.Time
		killAt     time.Time
		waitErr    error
	)
loop:
	for {
		select {
		case sig := <-sigs:
			if interactive && isKeyboardSignal(sig) {
				continue // the terminal delivered it to COMMAND already
			}
			j.signal(sig)
		case <-lost:
			lost = nil
			lostCause = lk.Err()
			fmt.Fprintf(r.env.stderr, "dlock run: lock %q lost (%s); stopping %s: SIGTERM now, SIGKILL in %v\n",
				r.key, oneLine(cleanErr(lostCause)), r.name, r.grace)
			j.signal(sigTERM)
			j.signal(sigCONT) // a stopped command must be able to act on it
			killAt = time.Now().Add(r.grace)
			graceTimer = time.NewTimer(r.grace)
			graceC = graceTimer.C
		case <-graceC:
			graceC = nil
			j.signal(sigKILL)
		case waitErr = <-exited:
			break loop
		}
	}
	if graceTimer != nil {
		graceTimer.Stop()
		// Processes COMMAND started may still run without the lock: give
		// them what is left of the grace period, then kill them.
		if graceC != nil && ownGroup {
			for j.groupAlive() && time.Now().Before(killAt) {
				time.Sleep(20 * time.Millisecond)
			}
			j.signal(sigKILL)
		}
	}

	uerr := r.unlock(lk)
	switch {
	case lostCause != nil:
		return &exitError{code: exitLost}
	case errors.Is(uerr, locker.ErrNotHeld):
		return failf(exitLost, "lock %q was lost before %s finished (%s)", r.key, r.name, oneLine(cleanErr(uerr)))
	case uerr != nil:
		fmt.Fprintf(r.env.stderr, "dlock run: warning: releasing lock %q: %s (it expires by itself within %v)\n",
			r.key, oneLine(cleanErr(uerr)), r.ttl)
	}
	if cmd.ProcessState == nil {
		return failf(exitFailure, "waiting for %s: %v", r.name, waitErr)
	}
	return &exitError{code: exitStatus(cmd.ProcessState)}
}

// unlock releases the lock, waiting at most a lease's length.
func (r *runner) unlock(lk *locker.Lock) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.ttl)
	defer cancel()
	return lk.Unlock(ctx)
}

// unwrapExec drops the *exec.Error and *fs.PathError wrapping, whose
// messages repeat the command's name.
func unwrapExec(err error) error {
	var ee *exec.Error
	if errors.As(err, &ee) {
		err = ee.Err
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		err = pe.Err
	}
	return err
}

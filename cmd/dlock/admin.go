package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path"
	"syscall"
	"time"

	"github.com/pressly/goose/v3"

	"github.com/dlock-go/dlock/internal/storage"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
)

// opTimeout bounds status and release.
const opTimeout = time.Minute

// opContext returns a context that ends on SIGINT or SIGTERM, or after
// timeout if it is positive.
func opContext(timeout time.Duration) (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	if timeout <= 0 {
		return ctx, stop
	}
	tctx, cancel := context.WithTimeout(ctx, timeout)
	return tctx, func() { cancel(); stop() }
}

// ---- status ----

const statusUsage = `Usage: dlock status --url URL [--json] KEY

Show who holds the lock KEY: its holder (the owner value of the
acquisition), its fencing token and the lease time left by the storage's
clock, or "free".

Flags:
  --url URL          storage URL; repeat for Redlock (default: $DLOCK_URL)
  --json             print one JSON object:
                     {"key":"K","held":true,"owner":"…","token":42,"ttl_ms":27815}
                     or {"key":"K","held":false}
  --table NAME       PostgreSQL lock table (default dlock_locks)
  --prefix PREFIX    Redis key prefix (default distributed-locks)
  --collection NAME  MongoDB collection (default locks)

Exit status: 0 whether held or free; 1 if the storage failed; 2 for bad
flags, arguments or URL.

Examples:
  dlock status --url postgres://app@db/app nightly-report
  nightly-report: held by 9b1c5e0f6a2d4c8e8f3a7b6d5c4e3f21, token 42, 27.815s left

  DLOCK_URL=redis://cache:6379 dlock status --json deploy
  {"key":"deploy","held":false}
`

var statusCommand = &command{
	name:    "status",
	summary: "show who holds a lock",
	usage:   statusUsage,
}

func init() { statusCommand.run = runStatus }

type statusJSON struct {
	Key   string `json:"key"`
	Held  bool   `json:"held"`
	Owner string `json:"owner,omitempty"`
	Token int64  `json:"token,omitempty"`
	TTLms int64  `json:"ttl_ms,omitempty"`
}

// keyArg parses the flags and the one KEY argument of status and release.
func keyArg(env *environment, c *command, pos []string, err error) (string, error) {
	if err != nil {
		return "", parseError(env, c, err)
	}
	switch len(pos) {
	case 0:
		return "", usagef("no KEY given")
	case 1:
	default:
		return "", usagef("one KEY expected, got %d arguments", len(pos))
	}
	if err := locker.ValidateKey(pos[0]); err != nil {
		return "", usagef("KEY: %s", cleanErr(err))
	}
	return pos[0], nil
}

func runStatus(env *environment, args []string) error {
	fs := newFlagSet("status")
	var sf storageFlags
	sf.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	pos, err := parseInterspersed(fs, args)
	key, err := keyArg(env, statusCommand, pos, err)
	if err != nil {
		return err
	}
	ctx, cancel := opContext(opTimeout)
	defer cancel()
	l, closeStorage, err := sf.open(ctx, env, exitFailure)
	if err != nil {
		return err
	}
	defer closeStorage()
	info, err := l.Inspect(ctx, key)
	if err != nil {
		return failf(exitFailure, "%s", cleanErr(err))
	}
	if *asJSON {
		out := statusJSON{Key: key, Held: info.Held()}
		if info.Held() {
			out.Owner, out.Token, out.TTLms = info.Owner, info.Token, info.TTL.Milliseconds()
		}
		b, err := json.Marshal(out)
		if err != nil {
			return err
		}
		fmt.Fprintf(env.stdout, "%s\n", b)
		return nil
	}
	fmt.Fprintln(env.stdout, describe(info))
	return nil
}

// describe is the one-line human form of info.
func describe(info locker.Info) string {
	if !info.Held() {
		return info.Key + ": free"
	}
	return fmt.Sprintf("%s: held by %s, token %d, %v left", info.Key, info.Owner, info.Token, info.TTL.Round(time.Millisecond))
}

// ---- release ----

const releaseUsage = `Usage: dlock release --url URL --force KEY

Remove the lock KEY whoever holds it, for a lock left behind by a holder
that is stuck. It prints what it removed. Without --force it refuses.

The holder is not told: if it is still running (dlock run, or a program
using the library), it learns of the loss at its next refresh and must stop
(dlock run then terminates its command and exits 76); until then two
holders may work at once. Prefer waiting for the lease to expire.

The release is owner-checked: dlock reads the current holder, then releases
the lock as that holder. If the lock changed hands or expired in between,
nothing is removed (exit 1) — a newer holder is never removed by mistake.

Flags:
  --url URL          storage URL; repeat for Redlock (default: $DLOCK_URL)
  --force            really remove the lock
  --table NAME       PostgreSQL lock table (default dlock_locks)
  --prefix PREFIX    Redis key prefix (default distributed-locks)
  --collection NAME  MongoDB collection (default locks)

Exit status: 0 when the lock was removed or was free; 1 if it changed hands
meanwhile or the storage failed; 2 for bad flags, arguments or URL, or
without --force.

Examples:
  dlock release --url postgres://app@db/app --force nightly-report
  nightly-report: released; it was held by 9b1c5e0f6a2d4c8e8f3a7b6d5c4e3f21, token 42, 27.815s left
`

var releaseCommand = &command{
	name:    "release",
	summary: "remove a stuck lock (needs --force)",
	usage:   releaseUsage,
}

func init() { releaseCommand.run = runRelease }

func runRelease(env *environment, args []string) error {
	fs := newFlagSet("release")
	var sf storageFlags
	sf.register(fs)
	force := fs.Bool("force", false, "really remove the lock")
	pos, err := parseInterspersed(fs, args)
	key, err := keyArg(env, releaseCommand, pos, err)
	if err != nil {
		return err
	}
	if !*force {
		return usagef("refusing to remove lock %q without --force: its holder may still be working under it", key)
	}
	ctx, cancel := opContext(opTimeout)
	defer cancel()
	l, closeStorage, err := sf.open(ctx, env, exitFailure)
	if err != nil {
		return err
	}
	defer closeStorage()
	info, err := l.Inspect(ctx, key)
	if err != nil {
		return failf(exitFailure, "%s", cleanErr(err))
	}
	if !info.Held() {
		fmt.Fprintf(env.stdout, "%s: free; nothing to remove\n", key)
		return nil
	}
	switch err := l.Release(ctx, key, info.Owner); {
	case errors.Is(err, locker.ErrNotHeld):
		return failf(exitFailure, "lock %q changed hands or expired while being released (it was held by %s, token %d); nothing removed",
			key, info.Owner, info.Token)
	case err != nil:
		return failf(exitFailure, "%s", cleanErr(err))
	}
	fmt.Fprintf(env.stdout, "%s: released; it was held by %s, token %d, %v left\n",
		key, info.Owner, info.Token, info.TTL.Round(time.Millisecond))
	return nil
}

// ---- migrate ----

const migrateUsage = `Usage: dlock migrate --url postgres://... [--table NAME] [--down]

Set up PostgreSQL for dlock: create the lock table (default dlock_locks)
and the sequence its fencing tokens come from, by applying dlock's embedded
migrations. Applied migrations are recorded in a version table of dlock's
own (dlock_locks_goose_version), never in an application's. It is safe to
run at every deployment, from several machines at once. It prints each
migration applied and the resulting version.

Redis and MongoDB need no set-up.

Flags:
  --url URL     PostgreSQL URL (default: $DLOCK_URL)
  --table NAME  lock table, optionally schema-qualified ("app.locks"); the
                schema must exist (default dlock_locks)
  --down        roll back the last migration instead. Rolling back the
                first one drops the lock table and its token sequence, and
                with them every lock and the token history.

Exit status: 0 on success (also when there was nothing to do); 1 if a
migration failed; 2 for bad flags or URL.

Examples:
  dlock migrate --url 'postgres://app@db:5432/app?sslmode=disable'
  applied 00001_create_dlock_locks.sql (18ms)
  dlock_locks: at version 1

  DLOCK_URL=postgres://app@db/app dlock migrate --table jobs.locks
`

var migrateCommand = &command{
	name:    "migrate",
	summary: "create (or with --down, drop) the PostgreSQL lock table",
	usage:   migrateUsage,
}

func init() { migrateCommand.run = runMigrate }

func runMigrate(env *environment, args []string) error {
	fs := newFlagSet("migrate")
	var urls urlList
	fs.Var(&urls, "url", "PostgreSQL `URL`")
	table := fs.String("table", migrations.DefaultTable, "lock `table`")
	down := fs.Bool("down", false, "roll back the last migration")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return parseError(env, migrateCommand, err)
	}
	if len(pos) > 0 {
		return usagef("unexpected argument %q", pos[0])
	}
	sf := storageFlags{urls: urls}
	list, err := sf.list(env)
	if err != nil {
		return err
	}
	kind, err := storage.KindOf(list)
	if err != nil {
		return usagef("%s", cleanErr(err))
	}
	if kind != storage.Postgres {
		return usagef("migrate sets up PostgreSQL; %s needs no set-up", kind)
	}
	if _, err := migrations.ParseTable(*table); err != nil {
		return usagef("--table: %s", cleanErr(err))
	}
	db, err := sql.Open("postgres", list[0])
	if err != nil {
		return usagef("%s: %v", storage.Redact(list[0]), err)
	}
	defer db.Close()
	p, err := migrations.NewProvider(db, migrations.Table(*table))
	if err != nil {
		return usagef("%s", cleanErr(err))
	}
	ctx, cancel := opContext(0)
	defer cancel()

	if *down {
		res, err := p.Down(ctx)
		switch {
		case errors.Is(err, goose.ErrNoNextVersion):
			fmt.Fprintf(env.stdout, "nothing to roll back\n")
		case err != nil:
			return failf(exitFailure, "%s", cleanErr(err))
		default:
			fmt.Fprintf(env.stdout, "rolled back %s (%v)\n", path.Base(res.Source.Path), res.Duration.Round(time.Millisecond))
		}
	} else {
		res, err := p.Up(ctx)
		for _, r := range res {
			if r.Error == nil {
				fmt.Fprintf(env.stdout, "applied %s (%v)\n", path.Base(r.Source.Path), r.Duration.Round(time.Millisecond))
			}
		}
		if err != nil {
			return failf(exitFailure, "%s", cleanErr(err))
		}
		if len(res) == 0 {
			fmt.Fprintf(env.stdout, "nothing to apply\n")
		}
	}
	v, err := p.GetDBVersion(ctx)
	if err != nil {
		return failf(exitFailure, "%s", cleanErr(err))
	}
	fmt.Fprintf(env.stdout, "%s: at version %d\n", *table, v)
	return nil
}

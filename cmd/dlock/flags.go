package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/dlock-go/dlock/internal/storage"
	"github.com/dlock-go/dlock/locker"
)

// urlEnv names the environment variable that supplies --url when no --url
// flag is given. It may list several Redis URLs, separated by commas or
// spaces.
const urlEnv = "DLOCK_URL"

// urlList is a repeatable --url flag.
type urlList []string

func (u *urlList) String() string { return strings.Join(*u, ",") }

func (u *urlList) Set(s string) error {
	if strings.TrimSpace(s) == "" {
		return errors.New("empty URL")
	}
	*u = append(*u, strings.TrimSpace(s))
	return nil
}

// storageFlags are the flags that choose the storage.
type storageFlags struct {
	urls       urlList
	table      string
	prefix     string
	collection string
}

func (s *storageFlags) register(fs *flag.FlagSet) {
	fs.Var(&s.urls, "url", "storage `URL`; repeat for Redlock (default $DLOCK_URL)")
	fs.StringVar(&s.table, "table", "", "PostgreSQL lock `table`, optionally schema-qualified (default dlock_locks)")
	fs.StringVar(&s.prefix, "prefix", "", "Redis key `prefix` (default distributed-locks)")
	fs.StringVar(&s.collection, "collection", "", "MongoDB `collection` (default locks)")
}

// list returns the URLs from the flags, or else from $DLOCK_URL.
func (s *storageFlags) list(env *environment) ([]string, error) {
	if len(s.urls) > 0 {
		return s.urls, nil
	}
	if urls := storage.SplitList(env.getenv(urlEnv)); len(urls) > 0 {
		return urls, nil
	}
	return nil, usagef("no storage URL: give --url or set %s", urlEnv)
}

// open opens the storage. Configuration errors are usage errors (exit 2);
// a storage that fails to answer while being opened (MongoDB connects at
// once) is an exitError with failCode.
func (s *storageFlags) open(ctx context.Context, env *environment, failCode int) (locker.Locker, func() error, error) {
	urls, err := s.list(env)
	if err != nil {
		return nil, nil, err
	}
	kind, err := storage.KindOf(urls)
	if err != nil {
		return nil, nil, usagef("%s", cleanErr(err))
	}
	switch {
	case s.table != "" && kind != storage.Postgres:
		return nil, nil, usagef("--table applies to PostgreSQL URLs only, not %s", kind)
	case s.prefix != "" && kind != storage.Redis && kind != storage.Redlock:
		return nil, nil, usagef("--prefix applies to Redis URLs only, not %s", kind)
	case s.collection != "" && kind != storage.Mongo:
		return nil, nil, usagef("--collection applies to MongoDB URLs only, not %s", kind)
	}
	l, closeFn, err := storage.Open(ctx, urls, storage.Options{Table: s.table, Prefix: s.prefix, Collection: s.collection})
	switch {
	case errors.Is(err, locker.ErrInvalidOption):
		return nil, nil, usagef("%s", cleanErr(err))
	case err != nil:
		return nil, nil, failf(failCode, "%s", cleanErr(err))
	}
	return l, closeFn, nil
}

// cleanErr drops the "dlock: " prefix of a library error: the command's
// messages already start with "dlock COMMAND: ".
func cleanErr(err error) string {
	return strings.TrimPrefix(err.Error(), "dlock: ")
}

// newFlagSet returns a flag set that reports errors to the caller rather
// than printing them, so that they end up as one clear line.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("dlock "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	return fs
}

// parseError turns a flag-parsing error into the command's result: help on
// stdout for -h/--help, a usage error otherwise.
func parseError(env *environment, c *command, err error) error {
	if errors.Is(err, flag.ErrHelp) {
		fmt.Fprint(env.stdout, c.usage)
		return flag.ErrHelp
	}
	return usagef("%s", err)
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments ("dlock status KEY --json"), and returns the
// positional arguments. Everything after "--" is positional.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

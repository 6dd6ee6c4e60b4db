// Package storage turns the storage URLs given to the dlock command into a
// [locker.Locker].
//
// The URL scheme chooses the driver:
//
//	postgres://, postgresql://   drivers/pglocker (lib/pq)
//	redis://, rediss://          drivers/redislocker, one server
//	several redis URLs           drivers/redislocker, Redlock over them
//	mongodb://, mongodb+srv://   drivers/mongolocker, database from the path
//
// Several URLs are allowed only for Redis (Redlock); mixing schemes is an
// error. Every configuration error matches [locker.ErrInvalidOption], and no
// error message repeats a password.
package storage

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/drivers/redislocker"
	"github.com/dlock-go/dlock/locker"
)

// Kind names the kind of storage a set of URLs selects.
type Kind string

// The kinds of storage.
const (
	Postgres Kind = "postgres"
	Redis    Kind = "redis"   // one Redis server
	Redlock  Kind = "redlock" // several independent Redis servers
	Mongo    Kind = "mongodb"
)

// Options holds the storage-specific names. An empty field means the
// driver's default. Setting a field that does not apply to the storage the
// URLs select is an error.
type Options struct {
	Table      string // PostgreSQL lock table, optionally schema-qualified
	Prefix     string // Redis key prefix
	Collection string // MongoDB collection
}

// schemes maps a URL scheme to the storage it selects.
var schemes = map[string]Kind{
	"postgres":    Postgres,
	"postgresql":  Postgres,
	"redis":       Redis,
	"rediss":      Redis,
	"mongodb":     Mongo,
	"mongodb+srv": Mongo,
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{locker.ErrInvalidOption}, args...)...)
}

// Scheme returns the lower-cased scheme of rawURL, or an error matching
// [locker.ErrInvalidOption] if rawURL has none. The error never quotes the
// URL, which may hold a password.
func Scheme(rawURL string) (string, error) {
	i := strings.Index(rawURL, "://")
	if i <= 0 || !validScheme(rawURL[:i]) {
		// Never echo the text: it may hold a password.
		return "", invalid("storage URL without a scheme (want postgres://, redis:// or mongodb://)")
	}
	return strings.ToLower(rawURL[:i]), nil
}

// validScheme reports whether s has the form of a URL scheme (RFC 3986): a
// letter, then letters, digits, "+", "-" or ".".
func validScheme(s string) bool {
	for i, c := range s {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z':
		case i > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.'):
		default:
			return false
		}
	}
	return s != ""
}

// KindOf returns the storage that urls select. It returns an error matching
// [locker.ErrInvalidOption] for no URLs, an unknown scheme, mixed schemes,
// or several URLs of a storage other than Redis.
func KindOf(urls []string) (Kind, error) {
	if len(urls) == 0 {
		return "", invalid("no storage URL")
	}
	var kind Kind
	for i, u := range urls {
		s, err := Scheme(u)
		if err != nil {
			return "", err
		}
		k, ok := schemes[s]
		if !ok {
			return "", invalid("unknown URL scheme %q (want postgres, postgresql, redis, rediss, mongodb or mongodb+srv)", s)
		}
		if i > 0 && k != kind {
			return "", invalid("mixed storage URLs: %s and %s", kind, k)
		}
		kind = k
	}
	if len(urls) > 1 {
		if kind != Redis {
			return "", invalid("%d %s URLs: only Redis takes several URLs (Redlock)", len(urls), kind)
		}
		return Redlock, nil
	}
	return kind, nil
}

// SplitList splits a list of URLs separated by commas or white space, as
// found in the DLOCK_URL environment variable. A comma not followed by a new
// scheme ("scheme://") stays in the URL, so a PostgreSQL URL with several
// hosts (postgres://h1,h2/db) is one URL.
func SplitList(s string) []string {
	var out []string
	for _, field := range strings.Fields(s) {
		first := len(out)
		for _, part := range strings.Split(field, ",") {
			switch {
			case part == "":
			case len(out) > first && !strings.Contains(part, "://"):
				out[len(out)-1] += "," + part
			default:
				out = append(out, part)
			}
		}
	}
	return out
}

// Redact returns rawURL with any password replaced by "xxxxx", for
// messages. A URL that does not parse is reduced to its scheme.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		s, serr := Scheme(rawURL)
		if serr != nil {
			return "(malformed URL)"
		}
		return s + "://(malformed URL)"
	}
	return u.Redacted()
}

// Open returns a Locker on the storage urls select, and a function that
// closes its connections. For PostgreSQL and Redis it does no I/O: a server
// that cannot be reached shows up as an error of the first operation. For
// MongoDB it connects and pings the server within ctx, and returns the
// driver's wrapped error if that fails.
//
// Open returns an error matching [locker.ErrInvalidOption] for the cases
// [KindOf] rejects, a malformed URL, a MongoDB URL without a database name,
// an option that does not apply to the storage, or an option the driver
// rejects (a bad table, prefix or collection name). Any other error is a
// backend error.
func Open(ctx context.Context, urls []string, o Options) (locker.Locker, func() error, error) {
	kind, err := KindOf(urls)
	if err != nil {
		return nil, nil, err
	}
	if err := o.check(kind); err != nil {
		return nil, nil, err
	}
	switch kind {
	case Postgres:
		var opts []pglocker.Option
		if o.Table != "" {
			opts = append(opts, pglocker.Table(o.Table))
		}
		if _, err := url.Parse(urls[0]); err != nil {
			return nil, nil, invalid("malformed PostgreSQL URL %s", Redact(urls[0]))
		}
		l, err := pglocker.Open(urls[0], opts...)
		if err != nil {
			return nil, nil, asInvalid(err)
		}
		return l, l.Close, nil
	case Redis, Redlock:
		var opts []redislocker.Option
		if o.Prefix != "" {
			opts = append(opts, redislocker.Prefix(o.Prefix))
		}
		var l *redislocker.Locker
		if kind == Redlock {
			l, err = redislocker.OpenRedlock(urls, opts...)
		} else {
			l, err = redislocker.Open(urls[0], opts...)
		}
		if err != nil {
			return nil, nil, asInvalid(err)
		}
		return l, l.Close, nil
	case Mongo:
		return openMongo(ctx, urls[0], o.Collection)
	}
	return nil, nil, invalid("storage %s is not supported", kind)
}

// check rejects options that do not apply to kind.
func (o Options) check(kind Kind) error {
	switch {
	case o.Table != "" && kind != Postgres:
		return invalid("a table name applies only to PostgreSQL, not %s", kind)
	case o.Prefix != "" && kind != Redis && kind != Redlock:
		return invalid("a key prefix applies only to Redis, not %s", kind)
	case o.Collection != "" && kind != Mongo:
		return invalid("a collection name applies only to MongoDB, not %s", kind)
	}
	return nil
}

// asInvalid makes sure a constructor's error matches ErrInvalidOption: the
// PostgreSQL and Redis constructors do no I/O, so any error they return is a
// configuration error.
func asInvalid(err error) error {
	if errors.Is(err, locker.ErrInvalidOption) {
		return err
	}
	return fmt.Errorf("%w: %w", locker.ErrInvalidOption, err)
}

package storage

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"time"

	"github.com/dlock-go/dlock/drivers/mongolocker"
	"github.com/dlock-go/dlock/locker"
)

// closeTimeout bounds the wait for operations in flight when a MongoDB
// client disconnects.
const closeTimeout = 10 * time.Second

// MongoDatabase returns the database named by the path of a mongodb:// or
// mongodb+srv:// URL ("mongodb://h1,h2/app?replicaSet=rs" names "app"). It
// returns an error matching [locker.ErrInvalidOption] if the path names none.
func MongoDatabase(rawURL string) (string, error) {
	_, rest, _ := strings.Cut(rawURL, "://")
	_, path, found := strings.Cut(rest, "/")
	db, _, _ := strings.Cut(path, "?")
	if !found || db == "" {
		return "", invalid("MongoDB URL %s names no database: add it as the path (mongodb://host:27017/DATABASE)", Redact(rawURL))
	}
	return db, nil
}

// openMongo connects to the MongoDB server at rawURL and returns a Locker on
// collection (the driver's default if empty) of the URL's database.
func openMongo(ctx context.Context, rawURL, collection string) (locker.Locker, func() error, error) {
	db, err := MongoDatabase(rawURL)
	if err != nil {
		return nil, nil, err
	}
	var opts []mongolocker.Option
	if collection != "" {
		opts = append(opts, mongolocker.Collection(collection))
	}
	l, err := mongolocker.Open(ctx, rawURL, db, opts...)
	if err != nil {
		return nil, nil, redactErr(err, rawURL)
	}
	closeFn := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		return l.Close(ctx)
	}
	return l, closeFn, nil
}

// redactErr makes sure an error does not repeat the URL's password.
func redactErr(err error, rawURL string) error {
	pw := password(rawURL)
	if pw == "" {
		return err
	}
	msg := err.Error()
	for _, p := range []string{pw, unescape(pw)} {
		msg = strings.ReplaceAll(msg, p, "xxxxx")
	}
	if msg != err.Error() {
		if errors.Is(err, locker.ErrInvalidOption) {
			return invalid("%s", strings.TrimPrefix(msg, locker.ErrInvalidOption.Error()+": "))
		}
		return errors.New(msg)
	}
	return err
}

func unescape(s string) string {
	if u, err := url.PathUnescape(s); err == nil {
		return u
	}
	return s
}

// password returns the password of a URL's user information, if any.
func password(rawURL string) string {
	_, rest, _ := strings.Cut(rawURL, "://")
	if i := strings.IndexAny(rest, "/?"); i >= 0 {
		rest = rest[:i]
	}
	i := strings.LastIndex(rest, "@")
	if i < 0 {
		return ""
	}
	_, pw, _ := strings.Cut(rest[:i], ":")
	return pw
}

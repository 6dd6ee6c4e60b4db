package storage_test

import (
	"context"
	"errors"
	"net/url"
	"strings"
	"testing"

	"github.com/dlock-go/dlock/internal/storage"
	"github.com/dlock-go/dlock/locker"
)

// The fuzz targets below check that URL handling never panics, fails only
// with ErrInvalidOption, and never repeats a password. Run one with, e.g.,
//
//	go test -run '^$' -fuzz '^FuzzOpen$' -fuzztime 60s ./internal/storage/
//
// Their seed corpora are in testdata/fuzz/<target>/.

var urlSeeds = []string{
	"postgres://app:s3cret@db:5432/app?sslmode=disable",
	"postgresql://h1,h2/db",
	"redis://:hunter22@127.0.0.1:6379/0",
	"rediss://user:pa%40ss@cache/3",
	"redis://127.0.0.1:6379,redis://127.0.0.1:6380 redis://127.0.0.1:6381",
	"mongodb://root:toor@127.0.0.1:27017/app?authSource=admin",
	"mongodb+srv://u:p@cluster.example/app",
	"mongodb://127.0.0.1:27017/",
	"mysql://x", "://", "", "redis://", "redis://%zz", "postgres://[::1", "redis://h/db?x=%",
	"REDIS://H/1", "redis://a:b@c:d@e/1",
}

// secret returns the password of rawURL when the check that it is not
// repeated makes sense: long enough to be unmistakable and found nowhere
// else in the URL.
func secret(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil || u.User == nil {
		return ""
	}
	pw, ok := u.User.Password()
	if !ok || len(pw) < 4 || strings.Contains("xxxxx", pw) || strings.Contains(u.User.Username(), pw) {
		return ""
	}
	rest := strings.Replace(rawURL, u.User.String()+"@", "", 1)
	if strings.Contains(rest, pw) || strings.Contains(rest, url.PathEscape(pw)) || strings.Contains(rest, url.QueryEscape(pw)) {
		return ""
	}
	return pw
}

func noSecret(t *testing.T, what, text, pw string) {
	t.Helper()
	if pw != "" && strings.Contains(text, pw) {
		t.Fatalf("%s repeats the password %q: %s", what, pw, text)
	}
}

func FuzzRedact(f *testing.F) {
	for _, s := range urlSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		r := storage.Redact(raw)
		noSecret(t, "Redact", r, secret(raw))
		if _, err := storage.Scheme(raw); err != nil && !errors.Is(err, locker.ErrInvalidOption) {
			t.Fatalf("Scheme: %v", err)
		}
		if _, err := storage.MongoDatabase(raw); err != nil {
			if !errors.Is(err, locker.ErrInvalidOption) {
				t.Fatalf("MongoDatabase: %v", err)
			}
			noSecret(t, "MongoDatabase's error", err.Error(), secret(raw))
		}
	})
}

func FuzzKindOf(f *testing.F) {
	for _, s := range urlSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		urls := storage.SplitList(list)
		for _, u := range urls {
			if u == "" {
				t.Fatalf("SplitList(%q) returned an empty URL", list)
			}
		}
		kind, err := storage.KindOf(urls)
		if err != nil {
			if !errors.Is(err, locker.ErrInvalidOption) {
				t.Fatalf("KindOf: %v", err)
			}
			for _, u := range urls {
				noSecret(t, "KindOf's error", err.Error(), secret(u))
			}
			return
		}
		switch kind {
		case storage.Postgres, storage.Redis, storage.Mongo:
			if len(urls) != 1 {
				t.Fatalf("KindOf(%q) = %s for %d URLs", urls, kind, len(urls))
			}
		case storage.Redlock:
			if len(urls) < 2 {
				t.Fatalf("KindOf(%q) = redlock for %d URLs", urls, len(urls))
			}
		default:
			t.Fatalf("KindOf(%q) = %q", urls, kind)
		}
	})
}

// FuzzOpen opens PostgreSQL and Redis lockers (which do no I/O until used)
// from arbitrary URL lists and names. MongoDB URLs are left out: opening
// one connects to the server.
func FuzzOpen(f *testing.F) {
	for _, s := range urlSeeds {
		f.Add(s, "", "", "")
	}
	f.Add("postgres://u:verysecret@h/db", "app.locks", "", "")
	f.Add("postgres://h/db", `a"b`, "", "")
	f.Add("redis://h", "", "pre fix", "")
	f.Add("redis://h", "", "", "coll")
	f.Add("redis://h/99999999999", "", "p{x}", "")
	f.Fuzz(func(t *testing.T, list, table, prefix, collection string) {
		urls := storage.SplitList(list)
		if kind, err := storage.KindOf(urls); err == nil && kind == storage.Mongo {
			return
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel() // no I/O is expected; a cancelled context makes sure of it
		l, closeFn, err := storage.Open(ctx, urls, storage.Options{Table: table, Prefix: prefix, Collection: collection})
		if err != nil {
			if !errors.Is(err, locker.ErrInvalidOption) {
				t.Fatalf("Open: %v, want an error matching ErrInvalidOption", err)
			}
			for _, u := range urls {
				noSecret(t, "Open's error", err.Error(), secret(u))
			}
			return
		}
		if l == nil || closeFn == nil {
			t.Fatal("Open returned a nil Locker or close function without an error")
		}
		if err := closeFn(); err != nil {
			t.Fatalf("close: %v", err)
		}
	})
}

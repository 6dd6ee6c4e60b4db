package storage

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/dlock-go/dlock/locker"
)

func TestKindOf(t *testing.T) {
	t.Parallel()
	tests := []struct {
		urls    []string
		want    Kind
		wantErr string
	}{
		{[]string{"postgres://u@h/db"}, Postgres, ""},
		{[]string{"postgresql://u@h/db?sslmode=disable"}, Postgres, ""},
		{[]string{"POSTGRES://h/db"}, Postgres, ""},
		{[]string{"redis://h:6379"}, Redis, ""},
		{[]string{"rediss://h:6380/2"}, Redis, ""},
		{[]string{"redis://a", "redis://b", "rediss://c"}, Redlock, ""},
		{[]string{"mongodb://h/db"}, Mongo, ""},
		{[]string{"mongodb+srv://cluster.example/db"}, Mongo, ""},
		{nil, "", "no storage URL"},
		{[]string{"http://h"}, "", `unknown URL scheme "http"`},
		{[]string{"h:6379"}, "", "without a scheme"},
		{[]string{"://h"}, "", "without a scheme"},
		{[]string{"redis://a", "postgres://b/db"}, "", "mixed storage URLs: redis and postgres"},
		{[]string{"postgres://a/db", "postgres://b/db"}, "", "2 postgres URLs: only Redis"},
		{[]string{"mongodb://a/db", "mongodb://b/db"}, "", "2 mongodb URLs: only Redis"},
	}
	for _, tt := range tests {
		got, err := KindOf(tt.urls)
		if tt.wantErr != "" {
			if !errors.Is(err, locker.ErrInvalidOption) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("KindOf(%q) = %v, want an invalid-option error containing %q", tt.urls, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("KindOf(%q) = %q, %v; want %q", tt.urls, got, err, tt.want)
		}
	}
}

func TestSplitList(t *testing.T) {
	t.Parallel()
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"  ", nil},
		{"redis://a", []string{"redis://a"}},
		{"redis://a,redis://b", []string{"redis://a", "redis://b"}},
		{"redis://a, redis://b\tredis://c\n", []string{"redis://a", "redis://b", "redis://c"}},
		{"redis://a,,redis://b,", []string{"redis://a", "redis://b"}},
		{"postgres://h1,h2/db?sslmode=disable", []string{"postgres://h1,h2/db?sslmode=disable"}},
		{"postgres://h1,h2/db redis://x", []string{"postgres://h1,h2/db", "redis://x"}},
	}
	for _, tt := range tests {
		if got := SplitList(tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("SplitList(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestRedact(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"redis://:secret@h:6379/0":             "redis://:xxxxx@h:6379/0",
		"postgres://u:secret@h/db?sslmode=off": "postgres://u:xxxxx@h/db?sslmode=off",
		"postgres://u@h/db":                    "postgres://u@h/db",
		"redis://:sec ret@h:%zz":               "redis://(malformed URL)",
		"nonsense":                             "nonsense",
	} {
		if got := Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestOpen: Open builds a Locker without I/O for every kind of URL, and
// rejects bad configuration with an error matching ErrInvalidOption that
// never repeats a password.
func TestOpen(t *testing.T) {
	t.Parallel()
	ok := []struct {
		urls []string
		o    Options
	}{
		{[]string{"postgres://u@127.0.0.1:1/db?sslmode=disable"}, Options{}},
		{[]string{"postgresql://u@127.0.0.1:1/db"}, Options{Table: "app.locks"}},
		{[]string{"redis://127.0.0.1:1"}, Options{Prefix: "p"}},
		{[]string{"redis://127.0.0.1:1", "redis://127.0.0.1:2", "redis://127.0.0.1:3"}, Options{}},
	}
	for _, tt := range ok {
		l, closeFn, err := Open(context.Background(), tt.urls, tt.o)
		if err != nil || l == nil || closeFn == nil {
			t.Errorf("Open(%q, %+v) = %v, %v", tt.urls, tt.o, l, err)
			continue
		}
		if err := closeFn(); err != nil {
			t.Errorf("close of Open(%q): %v", tt.urls, err)
		}
	}

	bad := []struct {
		urls []string
		o    Options
		want string
	}{
		{[]string{"redis://h"}, Options{Table: "t"}, "table name applies only to PostgreSQL"},
		{[]string{"postgres://h/db"}, Options{Prefix: "p"}, "key prefix applies only to Redis"},
		{[]string{"redis://h"}, Options{Collection: "c"}, "collection name applies only to MongoDB"},
		{[]string{"postgres://h/db"}, Options{Table: `a"b`}, ""},
		{[]string{"redis://h"}, Options{Prefix: "a b"}, "prefix"},
		{[]string{"redis://:hunter2@h/notanumber"}, Options{}, "not a number"},
		{[]string{"redis://:hunter2@h:%zz"}, Options{}, "malformed"},
		{[]string{"ftp://h"}, Options{}, "unknown URL scheme"},
		{[]string{"mongodb://:hunter2@h"}, Options{}, "names no database"},
		{[]string{"mongodb://h/db"}, Options{Collection: "a$b"}, "collection"},
	}
	for _, tt := range bad {
		_, _, err := Open(context.Background(), tt.urls, tt.o)
		if !errors.Is(err, locker.ErrInvalidOption) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Open(%q, %+v) = %v, want an invalid-option error containing %q", tt.urls, tt.o, err, tt.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q): error repeats the password: %v", tt.urls, err)
		}
	}
}

func TestMongoDatabase(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"mongodb://h/app": "app",
		"mongodb://u:p@h1:27017,h2:27017/app?replicaSet=rs":  "app",
		"mongodb+srv://cluster.example/app?retryWrites=true": "app",
		"mongodb://h":                "",
		"mongodb://h/":               "",
		"mongodb://h/?replicaSet=rs": "",
	} {
		got, err := MongoDatabase(in)
		if want == "" {
			if !errors.Is(err, locker.ErrInvalidOption) {
				t.Errorf("MongoDatabase(%q) = %q, %v; want an invalid-option error", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("MongoDatabase(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestRedactErr(t *testing.T) {
	t.Parallel()
	const u = "mongodb://user:p%40ss@h/app"
	for _, err := range []error{
		errors.New("auth failed for user:p%40ss"),
		errors.New("auth failed for user:p@ss"),
		fmt.Errorf("%w: bad URL user:p@ss", locker.ErrInvalidOption),
	} {
		got := redactErr(err, u)
		if strings.Contains(got.Error(), "p@ss") || strings.Contains(got.Error(), "p%40ss") {
			t.Errorf("redactErr(%q) = %q: password left in", err, got)
		}
		if errors.Is(err, locker.ErrInvalidOption) != errors.Is(got, locker.ErrInvalidOption) {
			t.Errorf("redactErr(%q) = %q: lost or gained ErrInvalidOption", err, got)
		}
	}
}

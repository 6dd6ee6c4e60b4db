// Command ferretdb runs an embedded FerretDB server (SQLite handler) on a
// loopback address for dlock's MongoDB tests. It is a test tool only; it
// lives in its own module so FerretDB's dependencies never reach dlock's
// go.mod.
//
// Usage:
//
//	ferretdb -listen 127.0.0.1:27018 [-dir /tmp/x] [-log-level error] [-durable]
//
// It stores data in a temporary directory (removed on exit unless -dir is
// given) and stops cleanly on SIGINT or SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:27018", "loopback `host:port` to listen on")
	dir := flag.String("dir", "", "SQLite data `directory` (default: a temporary directory removed on exit)")
	durable := flag.Bool("durable", false, "fsync every commit (default: SQLite synchronous=off, fine for a throwaway test server)")
	level := flag.String("log-level", "error", "FerretDB's log `level`: debug, info, warn or error (warn logs every error reply)")
	flag.Parse()

	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		log.Fatalf("ferretdb: bad -log-level: %v", err)
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if err := run(*listen, *dir, *durable, logger); err != nil {
		log.Fatalf("ferretdb: %v", err)
	}
}

func run(listen, dir string, durable bool, logger *slog.Logger) error {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("bad -listen %q: %w", listen, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("bad -listen %q: not a loopback IP address", listen)
	}

	if dir == "" {
		tmp, err := os.MkdirTemp("", "dlock-ferretdb-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		dir = tmp
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}

	sqliteURL := "file:" + dir + "/"
	if !durable {
		sqliteURL += "?_pragma=synchronous(off)"
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: listen},
		Handler:   "sqlite",
		SQLiteURL: sqliteURL,
		Logger:    logger,
	})
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	log.Printf("ferretdb: listening on %s (data in %s)", listen, dir)
	if err := f.Run(ctx); err != nil && ctx.Err() == nil {
		return err
	}
	log.Printf("ferretdb: stopped")
	return nil
}

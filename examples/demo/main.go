// Command demo shows several workers, each standing for one replica of a
// service, contending for one dlock lock. Every worker takes the lock in
// turn, does a little work inside the critical section and releases it; the
// demo checks that no two workers were ever inside at once.
//
// With no flags it runs on the in-process memlocker and needs no server:
//
//	go run ./examples/demo
//
// Given a PostgreSQL URL it migrates the lock table and runs each worker
// with a connection pool of its own, as separate replicas would:
//
//	go run ./examples/demo -url 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/dlock-go/dlock/drivers/memlocker"
	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
	_ "github.com/lib/pq"
)

func main() {
	url := flag.String("url", "", "PostgreSQL URL (default: the in-process memlocker)")
	workers := flag.Int("workers", 4, "number of contending workers")
	rounds := flag.Int("rounds", 3, "critical sections per worker")
	flag.Parse()
	if err := run(*url, *workers, *rounds); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(url string, workers, rounds int) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// newStorage returns one replica's storage client.
	var newStorage func() (locker.Locker, func(), error)
	where := "memlocker (in process)"
	if url != "" {
		db, err := sql.Open("postgres", url)
		if err != nil {
			return err
		}
		defer db.Close()
		if err := migrations.Up(ctx, db); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
		newStorage = func() (locker.Locker, func(), error) {
			l, err := pglocker.Open(url) // a pool of its own, like a replica's
			if err != nil {
				return nil, nil, err
			}
			return l, func() { l.Close() }, nil
		}
		where = "PostgreSQL"
	} else {
		shared := memlocker.New()
		newStorage = func() (locker.Locker, func(), error) { return shared, func() {}, nil }
	}
	fmt.Printf("%d workers contend for lock %q on %s\n", workers, "demo-report", where)

	var inside, overlaps atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 1; w <= workers; w++ {
		storage, closeStorage, err := newStorage()
		if err != nil {
			return err
		}
		defer closeStorage()
		factory, err := locker.NewFactory(storage, locker.TTL(5*time.Second),
			locker.Retries(locker.Unlimited), locker.Interval(20*time.Millisecond))
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			lock := factory.NewLock("demo-report")
			for r := 1; r <= rounds; r++ {
				if err := lock.Lock(ctx); err != nil {
					if errors.Is(err, locker.ErrNotObtained) {
						err = fmt.Errorf("worker %d gave up: %w", w, err)
					}
					errs <- err
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				fmt.Printf("worker %d holds the lock (fencing token %d), section %d of %d\n", w, lock.Token(), r, rounds)
				time.Sleep(10 * time.Millisecond) // the critical section's work
				inside.Add(-1)
				if err := lock.Unlock(ctx); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		return err
	}
	if n := overlaps.Load(); n > 0 {
		return fmt.Errorf("%d overlapping critical sections", n)
	}
	fmt.Printf("done: %d critical sections, never two at once\n", workers*rounds)
	return nil
}

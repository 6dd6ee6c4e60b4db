package pglocker_test

import (
	"context"
	"database/sql"
	"errors"
	"log"
	"time"

	"github.com/dlock-go/dlock/drivers/pglocker"
	"github.com/dlock-go/dlock/locker"
	"github.com/dlock-go/dlock/migrations"
)

// A service creates the lock table at start-up and hands its own pool to the
// driver.
func Example() {
	ctx := context.Background()
	db, err := sql.Open("postgres", "postgres://app@localhost/app?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := migrations.Up(ctx, db); err != nil {
		log.Fatal(err)
	}
	pg, err := pglocker.New(db)
	if err != nil {
		log.Fatal(err)
	}
	lease, err := pg.Acquire(ctx, "nightly-report", "worker-1", 30*time.Second)
	if errors.Is(err, locker.ErrNotObtained) {
		return // another worker has it
	} else if err != nil {
		log.Fatal(err)
	}
	log.Printf("got it with fencing token %d", lease.Token)
	if err := pg.Release(ctx, "nightly-report", "worker-1"); err != nil {
		log.Print(err)
	}
}

// A write guarded by Fence commits only while the lease is held: a holder
// whose lease ran out (a long GC pause, a slow job) and was perhaps taken over
// gets ErrNotHeld and rolls back, so it cannot overwrite the new holder's
// work; and while the guarded transaction is open, nobody can take the lock.
func ExampleLocker_Fence() {
	ctx := context.Background()
	db, err := sql.Open("postgres", "postgres://app@localhost/app?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	pg, err := pglocker.New(db, pglocker.Table("app.locks"))
	if err != nil {
		log.Fatal(err)
	}
	f, err := locker.NewFactory(pg)
	if err != nil {
		log.Fatal(err)
	}
	lock := f.NewLock("invoice-42")
	if err := lock.Lock(ctx, locker.TTL(10*time.Second)); err != nil {
		log.Fatal(err)
	}
	defer lock.Unlock(ctx)

	// ... work that may outlive the lease ...

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if err := pg.Fence(ctx, tx, lock.Key(), lock.Token()); errors.Is(err, locker.ErrNotHeld) {
		log.Print("lease lost: not writing")
		return
	} else if err != nil {
		log.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE invoices SET state = 'sent' WHERE id = 42`); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil { // no takeover could happen before this
		log.Fatal(err)
	}
}

// With Notify, a Lock call waiting for a held key is woken by its release
// instead of polling: the Locker listens on a connection of its own, opened
// from the connection string on the first wait and closed by Close.
func ExampleNotify() {
	ctx := context.Background()
	const dsn = "postgres://app@localhost/app?sslmode=disable&application_name=locks"
	pg, err := pglocker.Open(dsn, pglocker.Notify(""), pglocker.SingleStatement(true))
	if err != nil {
		log.Fatal(err)
	}
	defer pg.Close() // ends the listener connection too
	f, err := locker.NewFactory(pg)
	if err != nil {
		log.Fatal(err)
	}
	// Polls every 10 seconds, but takes the lock as soon as it is released.
	err = f.Do(ctx, "nightly-report", func(ctx context.Context) error {
		return nil // ... the work ...
	}, locker.Retries(locker.Unlimited), locker.Interval(10*time.Second))
	if err != nil {
		log.Print(err)
	}
}

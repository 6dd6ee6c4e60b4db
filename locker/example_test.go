package locker_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/dlock-go/dlock/drivers/memlocker"
	"github.com/dlock-go/dlock/locker"
)

// The npm package's example, in Go: one factory over a storage, one lock
// per critical section, ErrNotObtained when someone else has it.
func Example() {
	ctx := context.Background()
	f, err := locker.NewFactory(memlocker.New()) // or pglocker, redislocker, mongolocker
	if err != nil {
		panic(err)
	}
	lock := f.NewLock("my-key") // the key names the critical section
	err = lock.Lock(ctx, locker.TTL(10*time.Second), locker.Interval(5*time.Second), locker.Retries(3))
	if errors.Is(err, locker.ErrNotObtained) {
		fmt.Println("couldn't get the lock")
		return
	}
	if err != nil {
		panic(err)
	}
	defer lock.Unlock(ctx)

	fmt.Println("in the critical section with token", lock.Token())
	// Output: in the critical section with token 1
}

func ExampleLock_TryLock() {
	ctx := context.Background()
	f, _ := locker.NewFactory(memlocker.New())
	a, b := f.NewLock("report"), f.NewLock("report")

	fmt.Println(a.TryLock(ctx))
	err := b.TryLock(ctx)
	fmt.Println(errors.Is(err, locker.ErrNotObtained))
	_ = a.Unlock(ctx)
	fmt.Println(b.TryLock(ctx), b.Token())
	// Output:
	// <nil>
	// true
	// <nil> 2
}

// Do holds the lock, keeps it alive while the function runs, and releases
// it afterwards; the function's context ends if the lease is lost.
func ExampleFactory_Do() {
	f, _ := locker.NewFactory(memlocker.New())
	err := f.Do(context.Background(), "nightly-billing", func(ctx context.Context) error {
		fmt.Println("billing, alone")
		return ctx.Err()
	}, locker.TTL(30*time.Second))
	fmt.Println(err)
	// Output:
	// billing, alone
	// <nil>
}

// A lock that must outlive its TTL refreshes itself; Done and Context say
// when the lease is gone, whatever the reason.
func ExampleAutoRefresh() {
	ctx := context.Background()
	f, _ := locker.NewFactory(memlocker.New())
	l := f.NewLock("long-job", locker.TTL(3*time.Second), locker.AutoRefresh())
	if err := l.Lock(ctx); err != nil {
		panic(err)
	}
	work := l.Context() // pass this to the work done under the lock
	_ = l.Unlock(ctx)
	<-work.Done()
	fmt.Println(errors.Is(context.Cause(work), locker.ErrNotHeld))
	// Output: true
}

// Fencing tokens let the protected resource refuse a stale holder's late
// write: it remembers the highest token it has seen and rejects lower ones.
func ExampleLock_Token() {
	ctx := context.Background()
	store := memlocker.New()
	f, _ := locker.NewFactory(store)

	var highest int64 // kept by the resource, next to the data
	write := func(token int64, what string) {
		if token < highest {
			fmt.Println("rejected stale write:", what)
			return
		}
		highest = token
		fmt.Println("accepted:", what)
	}

	a := f.NewLock("ledger")
	_ = a.TryLock(ctx, locker.TTL(time.Millisecond))
	stale := a.Token()
	<-a.Done() // a's lease ran out (a GC pause, a slow disk...)

	b := f.NewLock("ledger")
	_ = b.Lock(ctx, locker.Retries(locker.Unlimited), locker.Interval(time.Millisecond))
	write(b.Token(), "b's write")
	write(stale, "a's late write")
	// Output:
	// accepted: b's write
	// rejected stale write: a's late write
}

// Observe plugs the lock's events into any logger or metrics system.
func ExampleObserve() {
	f, _ := locker.NewFactory(memlocker.New(), locker.Observe(func(e locker.Event) {
		fmt.Println(e.Kind, e.Key, e.Token)
	}))
	_ = f.Do(context.Background(), "job", func(context.Context) error { return nil })
	// Output:
	// acquired job 1
	// released job 1
}

// Goroutines of one process taking turns on a key: each Unlock hands the
// lock straight to the goroutine that has waited longest, in one storage
// operation, with a new fencing token.
func ExampleHandoff() {
	ctx := context.Background()
	f, _ := locker.NewFactory(memlocker.New(),
		locker.Retries(locker.Unlimited), locker.Interval(time.Second),
		locker.Handoff(locker.DefaultHandoff)) // the default: shown for the reader
	done := make(chan int64)
	for range 4 {
		go func() {
			l := f.NewLock("nightly-report")
			if err := l.Lock(ctx); err != nil {
				panic(err)
			}
			token := l.Token()
			if err := l.Unlock(ctx); err != nil { // hands over if another waits
				panic(err)
			}
			done <- token
		}()
	}
	seen := map[int64]bool{}
	for range 4 {
		seen[<-done] = true
	}
	fmt.Println(len(seen), "critical sections, each with its own token")
	// Output: 4 critical sections, each with its own token
}

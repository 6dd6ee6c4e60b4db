package mongolocker_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/dlock-go/dlock/drivers/mongolocker"
	"github.com/dlock-go/dlock/locker"
)

// Open a Locker from a URL and take a lock through a Factory.
func Example() {
	ctx := context.Background()
	ml, err := mongolocker.Open(ctx, "mongodb://127.0.0.1:27017/", "app")
	if err != nil {
		log.Fatal(err)
	}
	defer ml.Close(ctx)
	if err := ml.EnsureIndexes(ctx); err != nil {
		log.Fatal(err)
	}

	f, err := locker.NewFactory(ml, locker.TTL(30*time.Second))
	if err != nil {
		log.Fatal(err)
	}
	l := f.NewLock("nightly-report")
	if err := l.Lock(ctx); err != nil {
		if errors.Is(err, locker.ErrNotObtained) {
			return // another process is writing the report
		}
		log.Fatal(err)
	}
	defer l.Unlock(ctx)
	fmt.Println("writing the report with fencing token", l.Token())
}

// Use the application's own client and collection.
func ExampleNew() {
	ctx := context.Background()
	client, err := mongo.Connect(options.Client().ApplyURI("mongodb://127.0.0.1:27017/"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Disconnect(ctx)

	ml, err := mongolocker.New(client.Database("app").Collection("app_locks"))
	if err != nil {
		log.Fatal(err)
	}
	if err := ml.EnsureIndexes(ctx); err != nil {
		log.Fatal(err)
	}
	// Delete lock documents that expired over a day ago; tokens carry on.
	if _, err := ml.Purge(ctx, 24*time.Hour); err != nil {
		log.Fatal(err)
	}
}

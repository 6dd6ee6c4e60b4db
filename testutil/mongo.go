package testutil

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Environment variables of the MongoDB fixtures.
const (
	// MongoURLEnv names the URL of the MongoDB server (or the FerretDB
	// stand-in that scripts/ferretdb.sh starts) the tests use.
	MongoURLEnv = "DLOCK_TEST_MONGO_URL"
	// MongoDatabaseEnv carries the random database name of a test process
	// to the child processes it re-executes, so that they share its locks.
	// A process that finds it set uses that database and never drops it.
	MongoDatabaseEnv = "DLOCK_TEST_MONGO_DATABASE"
)

// DefaultMongoURL is the MongoDB server tried when MongoURLEnv is unset.
const DefaultMongoURL = "mongodb://127.0.0.1:27017/"

// mongoDatabasePrefix starts the name of every database the fixture creates:
// dlock_test_<unix seconds>_<random>.
const mongoDatabasePrefix = "dlock_test_"

var mongoContainer = &Container{
	Repository: "mongo",
	Tag:        "7",
	Port:       "27017/tcp",
	URL:        func(hostPort string) string { return "mongodb://" + hostPort + "/" },
	Ready:      PingMongo,
}

var mongoURL struct {
	once sync.Once
	url  string
}

// MongoURL returns the URL of the MongoDB server for tests:
// $DLOCK_TEST_MONGO_URL, else DefaultMongoURL if a server answers there,
// else a mongo:7 container if a Docker engine answers, else the test ends
// through [Absent]. The URL found is exported in DLOCK_TEST_MONGO_URL so that
// re-executed child processes use the same server.
func MongoURL(t testing.TB) string {
	t.Helper()
	u := ServerURL(t, "mongodb", MongoURLEnv, DefaultMongoURL, mongoContainer)
	mongoURL.once.Do(func() {
		mongoURL.url = u
		if os.Getenv(MongoURLEnv) == "" {
			os.Setenv(MongoURLEnv, u)
		}
	})
	return u
}

// PingMongo connects to url and runs ping, within five seconds.
func PingMongo(url string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := mongo.Connect(options.Client().ApplyURI(url).SetServerSelectionTimeout(5 * time.Second))
	if err != nil {
		return err
	}
	defer c.Disconnect(context.Background())
	return c.Ping(ctx, nil)
}

var mongoDB struct {
	once    sync.Once
	name    string
	url     string
	created bool // by this process, which alone drops it
}

// MongoDatabase returns the server URL and the name of a database that
// belongs to this test process. The name is chosen once per process and
// exported in DLOCK_TEST_MONGO_DATABASE; a re-executed child process reuses
// it instead of choosing its own. MongoDB creates the database on first
// write. Call [MongoCleanup] from TestMain to drop it at the end.
func MongoDatabase(t testing.TB) (url, database string) {
	t.Helper()
	u := MongoURL(t)
	mongoDB.once.Do(func() {
		mongoDB.url = u
		if name := os.Getenv(MongoDatabaseEnv); name != "" {
			mongoDB.name = name
			return
		}
		var b [4]byte
		_, _ = rand.Read(b[:])
		mongoDB.name = fmt.Sprintf("%s%d_%s", mongoDatabasePrefix, time.Now().Unix(), hex.EncodeToString(b[:]))
		mongoDB.created = true
		os.Setenv(MongoDatabaseEnv, mongoDB.name)
	})
	return mongoDB.url, mongoDB.name
}

// MongoCleanup drops the test database if this process chose it, and
// databases of earlier runs that are more than an hour old (left by crashed
// or interrupted runs). Call it from TestMain after m.Run; it does nothing in
// re-executed child processes and when no test used the database.
func MongoCleanup() {
	if !mongoDB.created {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := mongo.Connect(options.Client().ApplyURI(mongoDB.url).SetServerSelectionTimeout(5 * time.Second))
	if err != nil {
		fmt.Fprintf(os.Stderr, "testutil: drop database %s: %v\n", mongoDB.name, err)
		return
	}
	defer c.Disconnect(context.Background())
	if err := c.Database(mongoDB.name).Drop(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "testutil: drop database %s: %v\n", mongoDB.name, err)
	}
	names, err := c.ListDatabaseNames(ctx, bson.D{})
	if err != nil {
		return
	}
	for _, n := range names {
		var secs int64
		rest, ok := strings.CutPrefix(n, mongoDatabasePrefix)
		if !ok || n == mongoDB.name {
			continue
		}
		if _, err := fmt.Sscanf(rest, "%d_", &secs); err != nil {
			continue
		}
		if time.Since(time.Unix(secs, 0)) > time.Hour {
			_ = c.Database(n).Drop(ctx)
		}
	}
}

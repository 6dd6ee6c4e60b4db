package migrations_test

import (
	"context"
	"database/sql"
	"log"

	"github.com/dlock-go/dlock/migrations"
)

// A service creates its lock table at start-up; running Up from every
// replica at once is safe.
func ExampleUp() {
	db, err := sql.Open("postgres", "postgres://app@localhost/app?sslmode=disable")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	// The "app" schema must exist; the table, its token sequence and the
	// version table app.locks_goose_version are created in it.
	if err := migrations.Up(context.Background(), db, migrations.Table("app.locks")); err != nil {
		log.Fatal(err)
	}
}

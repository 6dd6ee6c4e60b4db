package storage

import (
	"context"

	"github.com/dlock-go/dlock/locker"
)

// openMongo is replaced once the MongoDB driver is available.
func openMongo(_ context.Context, rawURL, _ string) (locker.Locker, func() error, error) {
	return nil, nil, invalid("MongoDB storage is not available in this build (%s)", Redact(rawURL))
}

package pglocker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/lib/pq"

	"github.com/dlock-go/dlock/locker"
)

// SQLSTATE codes that mean a lost race rather than a failure.
const (
	codeSerializationFailure = "40001"
	codeDeadlockDetected     = "40P01"
	codeUniqueViolation      = "23505"
)

// interpretError translates an error of operation op at the edge of the
// package, once: no row becomes the operation's sentinel (ErrNotObtained for
// acquire, ErrNotHeld for the others), a lost race becomes ErrNotObtained
// (wrapping the server's error), and anything else is wrapped with the
// package and operation name. When ctx has ended the result also matches
// ctx's error, whatever the driver made of the cancellation.
func interpretError(ctx context.Context, op string, err error) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, sql.ErrNoRows) {
		if op == "acquire" {
			return fmt.Errorf("pglocker: %s: %w", op, locker.ErrNotObtained)
		}
		return fmt.Errorf("pglocker: %s: %w", op, locker.ErrNotHeld)
	}
	if ctxErr := ctx.Err(); ctxErr != nil && !errors.Is(err, ctxErr) {
		err = errors.Join(ctxErr, err)
	}
	switch sqlState(err) {
	case codeSerializationFailure, codeDeadlockDetected, codeUniqueViolation:
		return fmt.Errorf("pglocker: %s: %w: %w", op, locker.ErrNotObtained, err)
	}
	return fmt.Errorf("pglocker: %s: %w", op, err)
}

// sqlState returns the SQLSTATE code of a PostgreSQL error from lib/pq, or
// from any driver whose errors have a SQLState method (pgx's *pgconn.PgError
// does), and "" for other errors.
func sqlState(err error) string {
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return string(pqErr.Code)
	}
	var stater interface{ SQLState() string }
	if errors.As(err, &stater) {
		return stater.SQLState()
	}
	return ""
}

package torture

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"net"
	"strings"
	"syscall"

	"github.com/lib/pq"

	"github.com/dlock-go/dlock/locker"
)

// errorKind names the kind of err for the summary's error counts: a short,
// stable label rather than the message, which carries addresses and times.
func errorKind(err error) string {
	var pqErr *pq.Error
	var netErr net.Error
	switch {
	case err == nil:
		return "none"
	case errors.Is(err, locker.ErrLost):
		return "lost"
	case errors.Is(err, locker.ErrNotHeld):
		return "not-held"
	case errors.Is(err, syscall.ECONNRESET):
		return "conn-reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "conn-refused"
	case errors.Is(err, syscall.EPIPE):
		return "broken-pipe"
	case errors.As(err, &pqErr):
		return "pg-" + string(pqErr.Code)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "deadline"
	case errors.Is(err, locker.ErrNotObtained):
		return "not-obtained"
	case errors.Is(err, driver.ErrBadConn):
		return "bad-conn"
	case errors.As(err, &netErr) && netErr.Timeout():
		return "timeout"
	}
	msg := err.Error()
	for _, s := range []struct{ sub, kind string }{
		{"connection reset", "conn-reset"},
		{"connection refused", "conn-refused"},
		{"broken pipe", "broken-pipe"},
		{"EOF", "eof"},
		{"i/o timeout", "timeout"},
		{"server selection", "mongo-server-selection"},
		{"use of closed network connection", "closed-conn"},
		{"the database system is", "pg-starting-or-stopping"},
		{"LOADING", "redis-loading"},
		{"NOSCRIPT", "redis-noscript"},
		{"quorum", "redlock-no-quorum"},
	} {
		if strings.Contains(msg, s.sub) {
			return s.kind
		}
	}
	return "other"
}

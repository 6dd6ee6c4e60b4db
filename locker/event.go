package locker

import (
	"fmt"
	"time"
)

// EventKind says what happened to a lock.
type EventKind int

// The kinds of [Event].
const (
	Acquired  EventKind = iota + 1 // an attempt obtained the lock
	Contended                      // an attempt failed: held elsewhere, or a backend error (Err)
	Refreshed                      // the lease was extended
	Released                       // Unlock released the lease
	Lost                           // the lease was lost before Unlock (Err is the cause)
)

func (k EventKind) String() string {
	switch k {
	case Acquired:
		return "acquired"
	case Contended:
		return "contended"
	case Refreshed:
		return "refreshed"
	case Released:
		return "released"
	case Lost:
		return "lost"
	}
	return fmt.Sprintf("EventKind(%d)", int(k))
}

// Event is passed to the function registered with [Observe].
type Event struct {
	Kind    EventKind
	Key     string
	Owner   string        // the acquisition's owner value
	Token   int64         // the fencing token; 0 for Contended
	Attempt int           // Acquired, Contended: 1 for the first attempt
	Wait    time.Duration // Acquired, Contended: time since Lock was called
	Held    time.Duration // Refreshed, Released, Lost: time since the lock was acquired
	Err     error         // Contended: the attempt's error; Lost: the cause; Released: Unlock's error
}

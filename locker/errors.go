package locker

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"
)

var (
	// ErrNotObtained is returned when a lock could not be acquired because
	// another owner holds it (the npm package's FailedToObtainKey). When a
	// wait is cut short by its context, the error matches both ErrNotObtained
	// and the context's error.
	ErrNotObtained = errors.New("dlock: lock not obtained")

	// ErrNotHeld is returned by Unlock and Refresh when the caller does not
	// hold the lock: it never locked it, already unlocked it, or its lease
	// expired (and perhaps another owner took the key).
	ErrNotHeld = errors.New("dlock: lock not held")

	// ErrLost is the cause with which a lock's context is cancelled when its
	// lease is lost: a refresh found another owner, or the lease's validity
	// ran out. It matches ErrNotHeld.
	ErrLost error = lostError{}

	// ErrAlreadyHeld is returned by Lock and TryLock on a handle that already
	// holds its lock. Use a second handle for a second acquisition.
	ErrAlreadyHeld = errors.New("dlock: lock already held by this handle")

	// ErrInvalidKey is matched by errors for an empty key, a key longer than
	// [MaxKeyLen] bytes, or a key that is not valid UTF-8.
	ErrInvalidKey = errors.New("dlock: invalid key")

	// ErrInvalidOption is matched by errors for option values out of range and
	// for bad driver configuration (nil pools, unusable names).
	ErrInvalidOption = errors.New("dlock: invalid option")
)

type lostError struct{}

func (lostError) Error() string        { return "dlock: lock lost" }
func (lostError) Is(target error) bool { return target == ErrNotHeld }

const (
	// MaxKeyLen is the longest key accepted, in bytes.
	MaxKeyLen = 512
	// MinTTL is the shortest lease accepted.
	MinTTL = time.Millisecond
)

// ValidateKey reports whether key is usable: non-empty, at most [MaxKeyLen]
// bytes and valid UTF-8. The error matches [ErrInvalidKey].
func ValidateKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty", ErrInvalidKey)
	case len(key) > MaxKeyLen:
		return fmt.Errorf("%w: %d bytes, the limit is %d", ErrInvalidKey, len(key), MaxKeyLen)
	case !utf8.ValidString(key):
		return fmt.Errorf("%w: not valid UTF-8", ErrInvalidKey)
	}
	return nil
}

// ValidateTTL reports whether ttl is a usable lease length: at least [MinTTL].
// The error matches [ErrInvalidOption].
func ValidateTTL(ttl time.Duration) error {
	if ttl < MinTTL {
		return fmt.Errorf("%w: ttl %v is under the minimum of %v", ErrInvalidOption, ttl, MinTTL)
	}
	return nil
}

// CheckArgs validates the arguments of an Acquire or Refresh call; drivers
// call it first so that bad input never reaches the storage. Errors match
// [ErrInvalidKey] or [ErrInvalidOption].
func CheckArgs(key, owner string, ttl time.Duration) error {
	if err := CheckOwner(key, owner); err != nil {
		return err
	}
	return ValidateTTL(ttl)
}

// CheckOwner validates the arguments of a Release call: a valid key and a
// non-empty owner. Inspect needs only [ValidateKey].
func CheckOwner(key, owner string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	if owner == "" {
		return fmt.Errorf("%w: empty owner", ErrInvalidOption)
	}
	return nil
}

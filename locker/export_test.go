package locker

// Waiting reports how many Lock calls of f are waiting in line for a
// hand-off of key, for tests that must not unlock before a waiter is there.
func Waiting(f *Factory, key string) int {
	if f.waits == nil {
		return 0
	}
	f.waits.mu.Lock()
	defer f.waits.mu.Unlock()
	n := 0
	if q := f.waits.keys[key]; q != nil {
		for _, w := range q.waiters {
			if w.state == idle {
				n++
			}
		}
	}
	return n
}

// Tracked reports how many keys f keeps hand-off state for (holders and
// waiters): zero once nothing is held or waited for.
func Tracked(f *Factory) int {
	if f.waits == nil {
		return 0
	}
	f.waits.mu.Lock()
	defer f.waits.mu.Unlock()
	return len(f.waits.keys)
}

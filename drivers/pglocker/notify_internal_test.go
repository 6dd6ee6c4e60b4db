package pglocker

import (
	"strings"
	"testing"
	"unicode/utf8"
)

// Channel names fit PostgreSQL's 63 bytes, stay valid UTF-8 and differ for
// different tables.
func TestChannelName(t *testing.T) {
	if got := channelName("dlock_locks"); got != "dlock_locks.released" {
		t.Errorf("default channel %q", got)
	}
	long := strings.Repeat("s", 63) + "." + strings.Repeat("ü", 24)
	seen := map[string]string{}
	for _, table := range []string{
		"dlock_locks", "app.locks", "Locks", "locks", long, long[:len(long)-2] + "x",
		strings.Repeat("é", 31) + "." + strings.Repeat("t", 49),
		strings.Repeat("é", 31) + "." + strings.Repeat("t", 48) + "u",
	} {
		c := channelName(table)
		if len(c) > maxChannelLen || !utf8.ValidString(c) || strings.ContainsRune(c, 0) {
			t.Errorf("channelName(%q) = %q (%d bytes)", table, c, len(c))
		}
		if prev, dup := seen[c]; dup {
			t.Errorf("tables %q and %q share channel %q", prev, table, c)
		}
		seen[c] = table
	}
}

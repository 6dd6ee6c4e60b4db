package torture

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"
)

// Summary is the outcome of one torture run.
type Summary struct {
	Backend        string
	Duration       time.Duration
	Procs, Workers int
	Keys           int
	TTL            time.Duration
	Faults         []string
	RedlockNodes   int
	RedlockPersist bool
	LockOverlapOK  bool   // violations of the lock are reported, not failures (set by the caller)
	Unsafe         string // why the storage is documented not to exclude under these faults
	TokensUnsafe   string // why it is documented not to hand out rising tokens under these faults

	ProcsStarted   int              // including replacements of killed ones
	FaultsInjected map[string]int64 // by fault name; "<fault>-failed" when a fault could not be injected
	Stats          stats            // the worker processes' counters, summed
	Check          checkResult      // what the fenced log says

	KillRecoveries  int           // keys of killed holders taken by another process afterwards
	KillRecoveryMax time.Duration // longest time from a kill to that
	KillStuck       []string      // keys of killed holders nobody took again

	Crashes  []string // worker processes that ended abnormally
	Failures []string // why the run failed; empty when it passed
}

// Failed reports whether the run found a problem.
func (s *Summary) Failed() bool { return len(s.Failures) > 0 }

// Violations returns the number of times the fence caught the lock
// breaking its promises: a write rejected while its writer still trusted its
// lease (two holders at once by the lock's own account), or a section whose
// fresh token was not greater than one that began before.
func (s *Summary) Violations() int64 {
	return s.Check.Violations + s.Stats.BeginViolations
}

func (s *Summary) judge() {
	fail := func(format string, args ...any) { s.Failures = append(s.Failures, fmt.Sprintf(format, args...)) }
	if s.Check.AcceptedOverlap > 0 {
		fail("%d overlaps among accepted writes", s.Check.AcceptedOverlap)
	}
	if s.Check.TokenRegression > 0 {
		fail("%d accepted tokens did not rise", s.Check.TokenRegression)
	}
	if s.Check.Accepted == 0 {
		fail("no critical section was accepted: no progress")
	}
	if v := s.Check.Violations; v > 0 && !s.LockOverlapOK && s.Unsafe == "" {
		fail("%d lock overlaps: the fence rejected writes whose writers still trusted their leases", v)
	}
	if v := s.Stats.BeginViolations; v > 0 && !s.LockOverlapOK && s.TokensUnsafe == "" {
		fail("%d fresh tokens were not greater than one that began before (fencing broken)", v)
	}
	if s.Stats.LostUndetected > 0 {
		fail("%d holders rejected by the fence did not learn they had lost the lock (Done/Context)", s.Stats.LostUndetected)
	}
	if len(s.KillStuck) > 0 {
		fail("%d keys of killed holders were never taken again", len(s.KillStuck))
	}
	if len(s.Crashes) > 0 {
		fail("%d worker processes ended abnormally", len(s.Crashes))
	}
}

// Print writes the summary for people.
func (s *Summary) Print(w io.Writer) {
	st, c := &s.Stats, &s.Check
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	faults := strings.Join(s.Faults, ",")
	if faults == "" {
		faults = "none"
	}
	p("== dlock torture: backend %s, %v, %d procs × %d workers, %d keys, ttl %v, faults %s",
		s.Backend, s.Duration, s.Procs, s.Workers, s.Keys, s.TTL, faults)
	if s.RedlockNodes > 0 {
		persist := "none (no AOF, no RDB)"
		if s.RedlockPersist {
			persist = "AOF, fsync always"
		}
		p("   redlock group    %d private redis-server nodes, persistence: %s", s.RedlockNodes, persist)
	}
	if s.Unsafe != "" && s.Unsafe == s.TokensUnsafe {
		p("   KNOWN LIMIT      %s; lock overlaps and non-rising tokens are reported, not failures; overlaps among accepted writes still fail the run", s.Unsafe)
	} else {
		if s.Unsafe != "" {
			p("   KNOWN LIMIT      %s; lock overlaps are reported, not failures; overlaps among accepted writes still fail the run", s.Unsafe)
		}
		if s.TokensUnsafe != "" {
			p("   KNOWN LIMIT      %s; non-rising tokens are reported, not failures", s.TokensUnsafe)
		}
	}
	p("   acquisitions     %d (%d left to expire), contended attempts %d, failed attempts %d, refreshes %d, procs started %d",
		st.Acquired, st.Abandoned, st.Contended, st.AttemptErrors, st.Refreshed, s.ProcsStarted)
	p("   faults injected  %s", formatCounts(s.FaultsInjected, AllFaults))
	p("   locks lost       %d loss events (Done closed); rejected holders that learned it %d, did not %d; Unlock reported loss %d",
		st.LostEvents, st.LostDetected, st.LostUndetected, st.UnlockLost)
	p("   sections         %d logged: %d accepted (%d after a known loss, nobody else had begun), %d rejected by the fence",
		c.Sections, c.Accepted, st.AcceptedAfterLoss, c.Rejected)
	p("   fenced rejects   %d writer knew it had lost the lease, %d lease ran out by the writer's clock in flight, %d WHILE TRUSTED",
		c.RejectedLost, c.Rejected-c.RejectedLost-c.Violations, c.Violations)
	p("   overlaps         accepted writes: %d (must be 0); lock overlaps seen by the fence: %d sections (%d while trusted)",
		c.AcceptedOverlap, c.LockOverlap, c.Violations)
	p("   tokens           %d regressions among accepted sections (must be 0); begins rejected %d, of which %d with a fresh token NOT ABOVE an earlier one while trusted",
		c.TokenRegression, st.BeginRejected, st.BeginViolations)
	if s.FaultsInjected[FaultKill] > 0 {
		p("   after kills      %d keys of killed holders taken again, the longest after %v (ttl %v); never taken: %d",
			s.KillRecoveries, s.KillRecoveryMax.Round(time.Millisecond), s.TTL, len(s.KillStuck))
	}
	p("   fence errors     %d (sections abandoned because the log could not be written)", st.FenceErrors)
	p("   errors by kind   %s", formatCounts(st.Errors, nil))
	for _, k := range sortedKeys(st.Samples) {
		p("     e.g. %-28s %s", k, st.Samples[k])
	}
	for _, d := range c.Details {
		p("   ! %s", d)
	}
	for _, d := range s.KillStuck {
		p("   ! %s", d)
	}
	for _, d := range s.Crashes {
		p("   ! %s", d)
	}
	switch {
	case s.Failed():
		p("   verdict          FAIL: %s", strings.Join(s.Failures, "; "))
	case s.Violations() > 0:
		p("   verdict          PASS for the fence (no accepted overlap), with %d violations of the lock (overlaps or non-rising tokens) this storage does not rule out under these faults", s.Violations())
	default:
		p("   verdict          PASS")
	}
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// formatCounts prints m as "a 1, b 2", in order's order and then by name.
func formatCounts(m map[string]int64, order []string) string {
	if len(m) == 0 {
		return "none"
	}
	ks := sortedKeys(m)
	sort.SliceStable(ks, func(i, j int) bool {
		a, b := slices.Index(order, ks[i]), slices.Index(order, ks[j])
		if a < 0 {
			a = len(order)
		}
		if b < 0 {
			b = len(order)
		}
		return a < b
	})
	parts := make([]string, len(ks))
	for i, k := range ks {
		parts[i] = fmt.Sprintf("%s %d", k, m[k])
	}
	return strings.Join(parts, ", ")
}

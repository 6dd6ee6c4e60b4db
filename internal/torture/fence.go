package torture

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"time"
)

// The fenced log lives in PostgreSQL, in the run's own schema:
//
//	fence_hwm  one row per key: the highest token that began a section, and
//	           its owner (the high-water mark)
//	fence_log  one row per finished section, accepted or rejected
//
// A section is two fenced writes. Its begin raises the key's high-water mark
// to the section's token, and is rejected unless the token is greater than
// every token that began before. Its end appends the log row, accepted only
// if no other section began since (the mark still names this token and
// owner). Both statements lock the key's mark row, so for one key they are
// serialized, and the database's clock_timestamp() taken inside them orders
// them: an accepted section's [start, end] cannot overlap another accepted
// section of the key unless the fence itself is broken, which the check
// after the run would report.
//
// The fence is the independent judge of the lock: a section rejected at its
// end means another holder began while this one was inside its critical
// section. If the client still trusted its lease when it sent the write (its
// remaining validity exceeded the write's round trip), two holders overlapped
// by the lock's own account: a mutual-exclusion failure of the lock,
// recorded as a violation.

const fenceSchemaSQL = `
CREATE TABLE %[1]s.fence_hwm (
    key        text   PRIMARY KEY,
    last_token bigint NOT NULL,
    last_owner text   NOT NULL
);
CREATE TABLE %[1]s.fence_log (
    id        bigserial   PRIMARY KEY,
    key       text        NOT NULL,
    owner     text        NOT NULL,
    token     bigint      NOT NULL,
    proc      int         NOT NULL,
    worker    int         NOT NULL,
    start_ts  timestamptz NOT NULL,
    end_ts    timestamptz NOT NULL,
    accepted  boolean     NOT NULL,
    lost      boolean     NOT NULL,  -- the client knew its lease was lost when it wrote
    violation boolean     NOT NULL DEFAULT false -- rejected while the client trusted its lease
);
CREATE TABLE %[1]s.fence_events (
    id   bigserial   PRIMARY KEY,
    ts   timestamptz NOT NULL DEFAULT clock_timestamp(),
    kind text        NOT NULL,
    key  text        NOT NULL DEFAULT ''
);
`

// createFence creates the fence tables in schema (which must exist) and one
// mark row per key.
func createFence(ctx context.Context, db *sql.DB, schema string, keys []string) error {
	q := quoteIdent(schema)
	if _, err := db.ExecContext(ctx, fmt.Sprintf(fenceSchemaSQL, q)); err != nil {
		return fmt.Errorf("create fence tables: %w", err)
	}
	for _, k := range keys {
		if _, err := db.ExecContext(ctx, `INSERT INTO `+q+`.fence_hwm (key, last_token, last_owner) VALUES ($1, 0, '')`, k); err != nil {
			return fmt.Errorf("create fence mark: %w", err)
		}
	}
	return nil
}

// fence runs the fenced writes of one process.
type fence struct {
	db                   *sql.DB
	beginSQL, endSQL     string
	violationSQL, evtSQL string
}

func newFence(db *sql.DB, schema string) *fence {
	q := quoteIdent(schema)
	return &fence{
		db: db,
		// The second subquery reads the snapshot before the update: the old mark.
		beginSQL: `WITH u AS (
    UPDATE ` + q + `.fence_hwm SET last_token = $2, last_owner = $3
    WHERE key = $1 AND last_token < $2
    RETURNING clock_timestamp() AS ts)
SELECT (SELECT ts FROM u), (SELECT last_token FROM ` + q + `.fence_hwm WHERE key = $1)`,
		endSQL: `WITH h AS (
    SELECT last_token, last_owner FROM ` + q + `.fence_hwm WHERE key = $1 FOR UPDATE)
INSERT INTO ` + q + `.fence_log (key, owner, token, proc, worker, start_ts, end_ts, accepted, lost)
SELECT $1, $2, $3, $4, $5, $6, clock_timestamp(), h.last_token = $3 AND h.last_owner = $2, $7 FROM h
RETURNING id, accepted`,
		violationSQL: `UPDATE ` + q + `.fence_log SET violation = true WHERE id = $1`,
		evtSQL:       `INSERT INTO ` + q + `.fence_events (kind, key) VALUES ($1, $2) RETURNING ts`,
	}
}

// begin opens a section of key for token and owner. ok is false when the
// fence rejected it; mark is then the high-water mark that beat it.
func (f *fence) begin(ctx context.Context, key, owner string, token int64) (start time.Time, ok bool, mark int64, err error) {
	var ts sql.NullTime
	if err := f.db.QueryRowContext(ctx, f.beginSQL, key, token, owner).Scan(&ts, &mark); err != nil {
		return time.Time{}, false, 0, err
	}
	return ts.Time, ts.Valid, mark, nil
}

// end closes a section begun at start and reports whether it was accepted.
func (f *fence) end(ctx context.Context, key, owner string, token int64, proc, worker int, start time.Time, lost bool) (id int64, accepted bool, err error) {
	err = f.db.QueryRowContext(ctx, f.endSQL, key, owner, token, proc, worker, start, lost).Scan(&id, &accepted)
	return id, accepted, err
}

func (f *fence) markViolation(ctx context.Context, id int64) error {
	_, err := f.db.ExecContext(ctx, f.violationSQL, id)
	return err
}

// event records a fault in the database, by its clock, and returns when.
func (f *fence) event(ctx context.Context, kind, key string) (time.Time, error) {
	var ts time.Time
	err := f.db.QueryRowContext(ctx, f.evtSQL, kind, key).Scan(&ts)
	return ts, err
}

// section is one row of the fenced log.
type section struct {
	key, owner         string
	token              int64
	proc, worker       int
	start, end         time.Time
	accepted, lost, vl bool
}

// checkResult is what the check after the run found in the fenced log.
type checkResult struct {
	Sections        int64 `json:"sections"`
	Accepted        int64 `json:"accepted"`
	Rejected        int64 `json:"rejected"`
	RejectedLost    int64 `json:"rejected_after_known_loss"`
	Violations      int64 `json:"rejected_while_trusted"`
	AcceptedOverlap int64 `json:"accepted_overlaps"`
	LockOverlap     int64 `json:"lock_overlaps_seen_by_fence"`
	TokenRegression int64 `json:"token_regressions"`
	Details         []string
}

// check reads the fenced log of schema and verifies that no two accepted
// sections of a key overlapped and that accepted tokens only rose. It also
// counts the overlaps among all logged sections (accepted or not): those are
// lock overlaps, which only the fence kept out of the log's accepted part.
func check(ctx context.Context, db *sql.DB, schema string) (checkResult, error) {
	q := quoteIdent(schema)
	rows, err := db.QueryContext(ctx, `SELECT key, owner, token, proc, worker, start_ts, end_ts, accepted, lost, violation
FROM `+q+`.fence_log ORDER BY key, start_ts, id`)
	if err != nil {
		return checkResult{}, err
	}
	defer rows.Close()
	byKey := map[string][]section{}
	var r checkResult
	for rows.Next() {
		var s section
		if err := rows.Scan(&s.key, &s.owner, &s.token, &s.proc, &s.worker, &s.start, &s.end, &s.accepted, &s.lost, &s.vl); err != nil {
			return checkResult{}, err
		}
		byKey[s.key] = append(byKey[s.key], s)
		r.Sections++
		switch {
		case s.accepted:
			r.Accepted++
		case s.vl:
			r.Rejected++
			r.Violations++
		default:
			r.Rejected++
			if s.lost {
				r.RejectedLost++
			}
		}
	}
	if err := rows.Err(); err != nil {
		return checkResult{}, err
	}
	keys := make([]string, 0, len(byKey))
	for k := range byKey {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	detail := func(format string, args ...any) {
		if len(r.Details) < 20 {
			r.Details = append(r.Details, fmt.Sprintf(format, args...))
		}
	}
	for _, k := range keys {
		ss := byKey[k]
		// Accepted sections: disjoint and with rising tokens, in start order.
		var prev *section
		for i := range ss {
			s := &ss[i]
			if !s.accepted {
				continue
			}
			if prev != nil {
				if s.start.Before(prev.end) {
					r.AcceptedOverlap++
					detail("ACCEPTED OVERLAP on %q: token %d (proc %d) [%s, %s] and token %d (proc %d) [%s, %s]",
						k, prev.token, prev.proc, ts(prev.start), ts(prev.end), s.token, s.proc, ts(s.start), ts(s.end))
				}
				if s.token <= prev.token {
					r.TokenRegression++
					detail("TOKEN REGRESSION on %q: %d after %d", k, s.token, prev.token)
				}
			}
			prev = s
		}
		// Rejected sections that overlapped an accepted one: two holders
		// inside the critical section at once by the database's clock, of
		// which the fence kept one out of the log.
		for i := range ss {
			s := &ss[i]
			if s.accepted {
				continue
			}
			for j := range ss {
				a := &ss[j]
				if a.accepted && s.start.Before(a.end) && a.start.Before(s.end) {
					r.LockOverlap++
					if s.vl {
						detail("lock overlap while trusted on %q: rejected token %d (proc %d) [%s, %s], accepted token %d (proc %d) [%s, %s]",
							k, s.token, s.proc, ts(s.start), ts(s.end), a.token, a.proc, ts(a.start), ts(a.end))
					}
					break
				}
			}
		}
	}
	return r, nil
}

func ts(t time.Time) string { return t.UTC().Format("15:04:05.000000") }

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string {
	out := []byte{'"'}
	for i := 0; i < len(s); i++ {
		if s[i] == '"' {
			out = append(out, '"')
		}
		out = append(out, s[i])
	}
	return string(append(out, '"'))
}

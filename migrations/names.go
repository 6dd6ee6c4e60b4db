package migrations

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/dlock-go/dlock/locker"
)

// DefaultTable is the lock table used when no other name is configured.
const DefaultTable = "dlock_locks"

// Name suffixes of the objects that belong to a lock table. The sequence and
// the version table live in the lock table's schema.
const (
	sequenceSuffix = "_token_seq"
	versionSuffix  = "_goose_version"
)

// Length limits in bytes. PostgreSQL silently truncates identifiers longer
// than 63 bytes, so a table part must leave room for the longest suffix.
const (
	maxIdentLen = 63
	maxTableLen = maxIdentLen - len(versionSuffix)
)

// Names holds the SQL identifiers of one lock table's objects, each quoted as
// a PostgreSQL identifier (and schema-qualified when the table name is), ready
// to be placed in SQL text.
type Names struct {
	// Table is the lock table, e.g. "app"."locks".
	Table string
	// Sequence is the fencing-token sequence, e.g. "app"."locks_token_seq".
	Sequence string
	// VersionTable is the goose version table the Go helper records applied
	// migrations in, e.g. "app"."locks_goose_version".
	VersionTable string

	plain    bool // the default name: SQL text is used unchanged
	replacer *strings.Replacer
}

// ParseTable checks a lock table name and returns the quoted identifiers of
// the table, its token sequence and its version table.
//
// A name is a table, or a schema and a table separated by one dot
// ("app.locks"). Each part is used exactly as written (case-sensitive) and
// always quoted, so spaces, semicolons, dashes and non-ASCII letters are
// safe. A part must be non-empty valid UTF-8 without quotes, backslashes or
// control characters; the schema part may be at most 63 bytes and the table
// part at most 49 bytes (room for the suffixes of the derived names). A
// name that breaks these rules yields an error matching
// [locker.ErrInvalidOption].
func ParseTable(name string) (Names, error) {
	schema, table, qualified := strings.Cut(name, ".")
	if !qualified {
		schema, table = "", name
	}
	if strings.Contains(table, ".") {
		return Names{}, fmt.Errorf("%w: table name %q has more than one dot", locker.ErrInvalidOption, name)
	}
	if qualified {
		if err := checkPart(name, "schema", schema, maxIdentLen); err != nil {
			return Names{}, err
		}
	}
	if err := checkPart(name, "table", table, maxTableLen); err != nil {
		return Names{}, err
	}
	qualify := func(ident string) string {
		if qualified {
			return quoteIdent(schema) + "." + quoteIdent(ident)
		}
		return quoteIdent(ident)
	}
	n := Names{
		Table:        qualify(table),
		Sequence:     qualify(table + sequenceSuffix),
		VersionTable: qualify(table + versionSuffix),
		plain:        name == DefaultTable,
	}
	// The default names appear in the SQL text of the migrations and the
	// queries as identifiers, and the sequence also as the text literal given
	// to nextval. Longer patterns come first: a Replacer tries its patterns
	// in argument order at each position.
	n.replacer = strings.NewReplacer(
		"'"+DefaultTable+sequenceSuffix+"'", "'"+n.Sequence+"'",
		DefaultTable+sequenceSuffix, n.Sequence,
		DefaultTable, n.Table,
	)
	return n, nil
}

// Rewrite returns sql with the default object names (dlock_locks and
// dlock_locks_token_seq) replaced by the quoted names of n. For the default
// table it returns sql unchanged. It is meant for dlock's own SQL text, in
// which every occurrence of those names is a reference to the objects.
func (n Names) Rewrite(sql string) string {
	if n.plain || n.replacer == nil {
		return sql
	}
	return n.replacer.Replace(sql)
}

// IsDefault reports whether n names the default, unqualified table, whose
// SQL text needs no rewriting.
func (n Names) IsDefault() bool { return n.plain }

func checkPart(name, what, part string, maxLen int) error {
	bad := func(why string) error {
		return fmt.Errorf("%w: table name %q: %s %s", locker.ErrInvalidOption, name, what, why)
	}
	switch {
	case part == "":
		return bad("is empty")
	case len(part) > maxLen:
		return bad(fmt.Sprintf("is %d bytes, the limit is %d", len(part), maxLen))
	case !utf8.ValidString(part):
		return bad("is not valid UTF-8")
	}
	for _, r := range part {
		switch {
		case r == '"' || r == '\'' || r == '\\':
			return bad(fmt.Sprintf("contains %q", r))
		case unicode.IsControl(r):
			return bad(fmt.Sprintf("contains the control character %U", r))
		}
	}
	return nil
}

// quoteIdent quotes s as a PostgreSQL identifier. checkPart has already
// rejected double quotes, so wrapping is enough; doubling keeps it safe
// should that rule ever be relaxed.
func quoteIdent(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

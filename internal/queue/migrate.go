package queue

// Our schema, beside River's: numbered migrations per database
// (migrations/<driver>/NNN_name.sql), applied in order after River's own,
// each in a transaction with its number recorded in
// receive_booking_schema_version. A file holds statements that each end
// with ";" at the end of a line.
//
// Databases made before the schema was numbered have our tables but no
// version table: they are brought to version 2 from what their schema
// has (upgradeLegacy), and the migrations after it, all IF NOT EXISTS,
// are applied as to any other.

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
)

//go:embed migrations
var migrationFiles embed.FS

// migration is one numbered file.
type migration struct {
	version int
	name    string
	stmts   []string
}

// schemaDB is a database as migrations use it: statements in one
// transaction, and single integer values.
type schemaDB interface {
	inTx(ctx context.Context, fn func(exec func(query string, args ...any) error) error) error
	value(ctx context.Context, query string, args ...any) (int64, error)
}

const createSchemaVersion = `CREATE TABLE IF NOT EXISTS receive_booking_schema_version (
	version    INTEGER NOT NULL PRIMARY KEY,
	applied_at BIGINT  NOT NULL
)`

// legacyColumns are the columns that versions before numbered migrations
// added to the booking table one by one (migration 2 adds them to a new
// one): a database they made may have any of them.
var legacyColumns = []struct{ name, ddl string }{
	{"running_attempt", "ALTER TABLE receive_booking_booking ADD COLUMN running_attempt BIGINT"},
	{"running_until", "ALTER TABLE receive_booking_booking ADD COLUMN running_until BIGINT"},
}

// upgradeLegacy brings a database made before the schema was numbered to
// version 2: migration 1 again (its tables are all IF NOT EXISTS; a
// development build made the booking table before the slots), and each
// running-claim column it lacks (those versions added them one at a time).
func upgradeLegacy(ctx context.Context, q *queries, db schemaDB, first migration, now int64) error {
	// Read before the transaction: on SQLite it holds the one connection.
	var missing []string
	for _, c := range legacyColumns {
		n, err := db.value(ctx, q.columnExists, "receive_booking_booking", c.name)
		if err != nil {
			return err
		}
		if n == 0 {
			missing = append(missing, c.ddl)
		}
	}
	return db.inTx(ctx, func(exec func(string, ...any) error) error {
		for _, stmt := range append(slices.Clone(first.stmts), missing...) {
			if err := exec(stmt); err != nil {
				return err
			}
		}
		for v := 1; v <= 2; v++ {
			if err := exec(`INSERT INTO receive_booking_schema_version (version, applied_at) VALUES ($1, $2)`, v, now); err != nil {
				return err
			}
		}
		return nil
	})
}

// NewerSchemaError: the queue database's schema is newer than this build
// knows: a newer receive_booking wrote it. It is used by neither.
type NewerSchemaError struct {
	Driver       string
	Found, Known int
}

func (e *NewerSchemaError) Error() string {
	return fmt.Sprintf("the queue database's schema is version %d, newer than this build's %d (%s): a newer receive_booking wrote it; "+
		"run that version (or newer) on this database, or give this one another database", e.Found, e.Known, e.Driver)
}

// migrate brings our schema up to date; a schema newer than ours is a
// *NewerSchemaError and is left as it is.
func migrate(ctx context.Context, driver string, q *queries, db schemaDB, now int64) error {
	ms, err := loadMigrations(driver)
	if err != nil {
		return err
	}
	known, err := db.value(ctx, q.columnExists, "receive_booking_schema_version", "version")
	if err != nil {
		return fmt.Errorf("migrating queue: %w", err)
	}
	legacy, err := db.value(ctx, q.columnExists, "receive_booking_booking", "booking")
	if err != nil {
		return fmt.Errorf("migrating queue: %w", err)
	}
	err = db.inTx(ctx, func(exec func(string, ...any) error) error { return exec(createSchemaVersion) })
	if err != nil {
		return fmt.Errorf("migrating queue: %w", err)
	}
	if known == 0 && legacy > 0 {
		if err := upgradeLegacy(ctx, q, db, ms[0], now); err != nil {
			return fmt.Errorf("migrating queue (made before numbered migrations): %w", err)
		}
	}
	current, err := db.value(ctx, `SELECT coalesce(max(version), 0) FROM receive_booking_schema_version`)
	if err != nil {
		return fmt.Errorf("migrating queue: %w", err)
	}
	if latest := ms[len(ms)-1].version; int(current) > latest {
		// A newer receive_booking migrated it: its tables may hold rows
		// this build misreads or breaks (a hold, a pause, a claim of a kind
		// it does not know). Nothing is read or written.
		return &NewerSchemaError{Driver: driver, Found: int(current), Known: latest}
	}
	for _, m := range ms {
		if m.version <= int(current) {
			continue
		}
		err := db.inTx(ctx, func(exec func(string, ...any) error) error {
			for _, s := range m.stmts {
				if err := exec(s); err != nil {
					return err
				}
			}
			return exec(`INSERT INTO receive_booking_schema_version (version, applied_at) VALUES ($1, $2)`, m.version, now)
		})
		if err != nil {
			return fmt.Errorf("migrating queue (%s/%s): %w", driver, m.name, err)
		}
	}
	return nil
}

// loadMigrations reads a driver's migrations, in order; their numbers
// must run 1, 2, 3… without a gap.
func loadMigrations(driver string) ([]migration, error) {
	dir := path.Join("migrations", driver)
	entries, err := fs.ReadDir(migrationFiles, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations of %s: %w", driver, err)
	}
	var out []migration
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || !strings.HasSuffix(e.Name(), ".sql") {
			return nil, fmt.Errorf("migration %s/%s: not named NNN_name.sql", driver, e.Name())
		}
		body, err := fs.ReadFile(migrationFiles, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: e.Name(), stmts: statements(string(body))})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migrations of %s: %s where %d was expected", driver, m.name, i+1)
		}
	}
	return out, nil
}

// statements splits a migration into its statements (each ends with ";"
// at the end of a line), leaving out comment lines.
func statements(body string) []string {
	var out []string
	var cur strings.Builder
	for line := range strings.Lines(body) {
		if strings.HasPrefix(strings.TrimSpace(line), "--") {
			continue
		}
		cur.WriteString(line)
		if t := strings.TrimRight(line, " \t\r\n"); strings.HasSuffix(t, ";") {
			if s := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";"); s != "" {
				out = append(out, s)
			}
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}

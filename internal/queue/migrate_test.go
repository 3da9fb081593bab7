package queue

// Numbered migrations on real databases: a new one, one made before the
// schema was numbered (with and without the running claim's columns), and
// a second start, which applies nothing.

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// legacyBooking is the booking table as the versions before numbered
// migrations first made it (legacyColumns, in migrate.go, are the columns
// they added to it one at a time).
const legacyBooking = `CREATE TABLE receive_booking_booking (
	target_id TEXT NOT NULL, org TEXT NOT NULL, booking TEXT NOT NULL,
	event_type TEXT NOT NULL DEFAULT '', waiting_job_id BIGINT, running_job_id BIGINT,
	PRIMARY KEY (target_id, org, booking))`

// schemaCase opens one database for a migration case.
type schemaCase struct {
	driver string
	q      *queries
	open   func(t *testing.T) (schemaDB, func(string))
}

func schemaCases(t *testing.T) []schemaCase {
	cases := []schemaCase{{SQLite, &sqliteSQL, func(t *testing.T) (schemaDB, func(string)) {
		db, err := sql.Open("sqlite", sqliteDSN(filepath.Join(t.TempDir(), "m.sqlite3")))
		require.NoError(t, err)
		t.Cleanup(func() { _ = db.Close() })
		db.SetMaxOpenConns(1)
		return &sqliteDialect{db: db}, func(q string) { _, err := db.Exec(q); require.NoError(t, err) }
	}}}
	return append(cases, schemaCase{Postgres, &postgresSQL, func(t *testing.T) (schemaDB, func(string)) {
		pool, err := pgxpool.New(t.Context(), testkit.FreshPostgresDSN(t))
		require.NoError(t, err)
		t.Cleanup(pool.Close)
		conn, err := pool.Acquire(t.Context())
		require.NoError(t, err)
		t.Cleanup(conn.Release)
		return pgConn{conn}, func(q string) { _, err := conn.Exec(context.Background(), q); require.NoError(t, err) }
	}})
}

func TestMigrations(t *testing.T) {
	for _, c := range schemaCases(t) {
		ms, err := loadMigrations(c.driver)
		require.NoError(t, err)
		last := int64(len(ms))
		version := func(t *testing.T, db schemaDB) (n int64) {
			n, err := db.value(t.Context(), `SELECT max(version) FROM receive_booking_schema_version`)
			require.NoError(t, err)
			return n
		}
		hasColumns := func(t *testing.T, db schemaDB) {
			for _, col := range []string{"running_attempt", "running_until", "waiting_job_id"} {
				n, err := db.value(t.Context(), c.q.columnExists, "receive_booking_booking", col)
				require.NoError(t, err)
				assert.EqualValues(t, 1, n, col)
			}
			for table, col := range map[string]string{"receive_booking_event": "job_id", "receive_booking_slot": "until",
				"receive_booking_webhook_id": "id_hash", "receive_booking_health": "checked_at"} {
				n, err := db.value(t.Context(), c.q.columnExists, table, col)
				require.NoError(t, err)
				assert.EqualValues(t, 1, n, table)
			}
		}
		t.Run(c.driver+"/new", func(t *testing.T) {
			db, _ := c.open(t)
			require.NoError(t, migrate(t.Context(), c.driver, c.q, db, 1))
			assert.Equal(t, last, version(t, db))
			hasColumns(t, db)
			// A second start applies nothing (and fails on nothing).
			require.NoError(t, migrate(t.Context(), c.driver, c.q, db, 2))
			n, err := db.value(t.Context(), `SELECT count(*) FROM receive_booking_schema_version WHERE applied_at = 2`)
			require.NoError(t, err)
			assert.Zero(t, n)
		})
		// A database a newer build migrated further is refused as it is:
		// nothing applied, nothing changed.
		t.Run(c.driver+"/newer", func(t *testing.T) {
			db, exec := c.open(t)
			require.NoError(t, migrate(t.Context(), c.driver, c.q, db, 1))
			exec(fmt.Sprintf(`INSERT INTO receive_booking_schema_version (version, applied_at) VALUES (%d, 5)`, last+3))
			err := migrate(t.Context(), c.driver, c.q, db, 6)
			var newer *NewerSchemaError
			require.ErrorAs(t, err, &newer)
			assert.Equal(t, NewerSchemaError{Driver: c.driver, Found: int(last) + 3, Known: int(last)}, *newer)
			assert.Equal(t, fmt.Sprintf("the queue database's schema is version %d, newer than this build's %d (%s): a newer receive_booking wrote it; "+
				"run that version (or newer) on this database, or give this one another database", last+3, last, c.driver), err.Error())
			n, err := db.value(t.Context(), `SELECT count(*) FROM receive_booking_schema_version WHERE applied_at = 6`)
			require.NoError(t, err)
			assert.Zero(t, n)
		})
		// The booking table alone (as a development build left it, before
		// the slots), with none, one or both of the running claim's columns.
		for _, legacy := range []struct {
			name    string
			columns int
		}{{"legacy-without-claim-columns", 0}, {"legacy-with-one-claim-column", 1}, {"legacy-with-claim-columns", 2}} {
			t.Run(c.driver+"/"+legacy.name, func(t *testing.T) {
				db, exec := c.open(t)
				exec(legacyBooking)
				exec(`INSERT INTO receive_booking_booking (target_id, org, booking, waiting_job_id) VALUES ('default', 'o', 'b', 7)`)
				for _, c := range legacyColumns[:legacy.columns] {
					exec(c.ddl)
				}
				require.NoError(t, migrate(t.Context(), c.driver, c.q, db, 1))
				assert.Equal(t, last, version(t, db))
				hasColumns(t, db)
				n, err := db.value(t.Context(), `SELECT waiting_job_id FROM receive_booking_booking WHERE booking = 'b'`)
				require.NoError(t, err)
				assert.EqualValues(t, 7, n, "the rows stay")
			})
		}
	}
}

// TestStatementsSplitsMigrations: comment lines go, a statement ends at a
// ";" that ends its line.
func TestStatementsSplitsMigrations(t *testing.T) {
	got := statements("-- a comment; not a statement\nCREATE TABLE a (x TEXT DEFAULT 'a;b');\n\nALTER TABLE a\n\tADD COLUMN y INT;\n")
	assert.Equal(t, []string{"CREATE TABLE a (x TEXT DEFAULT 'a;b')", "ALTER TABLE a\n\tADD COLUMN y INT"}, got)
}

// TestPendingStatesSQL: the SQL list of pending states is PendingStates.
func TestPendingStatesSQL(t *testing.T) {
	var got []string
	for s := range strings.SplitSeq(pendingStatesSQL, ",") {
		got = append(got, strings.Trim(strings.TrimSpace(s), "'"))
	}
	slices.Sort(got)
	want := slices.Clone(PendingStates)
	slices.Sort(want)
	assert.Equal(t, want, got)
}

// TestSQLiteBindsDollarPlaceholders: the SQL the two databases share is
// written with $N placeholders and run as written on SQLite (modernc
// binds $N to the argument of ordinal N, in any order), so a literal $ in
// a query's text is left alone.
func TestSQLiteBindsDollarPlaceholders(t *testing.T) {
	db, err := sql.Open("sqlite", sqliteDSN(filepath.Join(t.TempDir(), "b.sqlite3")))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	d := &sqliteDialect{db: db}
	rows, err := d.queryRows(t.Context(), `SELECT '$1 costs $2' || ':' || $2 || ':' || $1`, "a", "b")
	require.NoError(t, err)
	defer rows.Close()
	require.True(t, rows.Next())
	var got string
	require.NoError(t, rows.Scan(&got))
	assert.Equal(t, "$1 costs $2:b:a", got)
}

package stmtcache

// Tests on a real SQLite file through modernc.org/sqlite, the driver the
// queue runs on. A counting layer under the cache counts the statements
// the driver is asked to prepare.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"modernc.org/sqlite"
)

type countingConnector struct {
	driver.Connector
	prepares *atomic.Int64
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	dc, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return countingConn{dc.(inner), c.prepares}, nil
}

type countingConn struct {
	inner
	prepares *atomic.Int64
}

func (c countingConn) PrepareContext(ctx context.Context, q string) (driver.Stmt, error) {
	c.prepares.Add(1)
	return c.inner.PrepareContext(ctx, q)
}

func open(t *testing.T, size int) (*sql.DB, *atomic.Int64) {
	t.Helper()
	base, err := sqlite.NewConnector("file:" + filepath.Join(t.TempDir(), "t.sqlite3") + "?_pragma=journal_mode(WAL)")
	require.NoError(t, err)
	var n atomic.Int64
	db := sql.OpenDB(Connector(countingConnector{base, &n}, size))
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { require.NoError(t, db.Close()) })
	_, err = db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL)`)
	require.NoError(t, err)
	n.Store(0)
	return db, &n
}

func TestStatementsArePreparedOnce(t *testing.T) {
	db, prepares := open(t, 8)
	for i := range 100 {
		_, err := db.Exec(`INSERT INTO t (id, v) VALUES (?, ?)`, i, "x")
		require.NoError(t, err)
		var v string
		require.NoError(t, db.QueryRow(`SELECT v FROM t WHERE id = ?`, i).Scan(&v))
		require.Equal(t, "x", v)
	}
	// Inside transactions too: statements belong to the connection.
	for i := range 10 {
		tx, err := db.Begin()
		require.NoError(t, err)
		_, err = tx.Exec(`UPDATE t SET v = ? WHERE id = ?`, "y", i)
		require.NoError(t, err)
		require.NoError(t, tx.Commit())
	}
	require.EqualValues(t, 3, prepares.Load(), "one prepare per distinct statement")
}

func TestQueryWhileItsRowsAreOpen(t *testing.T) {
	db, _ := open(t, 8)
	for i := range 3 {
		_, err := db.Exec(`INSERT INTO t (id, v) VALUES (?, ?)`, i, "x")
		require.NoError(t, err)
	}
	tx, err := db.Begin()
	require.NoError(t, err)
	defer tx.Rollback() //nolint:errcheck
	const q = `SELECT id FROM t WHERE id >= ? ORDER BY id`
	outer, err := tx.Query(q, 0)
	require.NoError(t, err)
	var got []int
	for outer.Next() {
		var id int
		require.NoError(t, outer.Scan(&id))
		// The same statement again while its rows are open: run uncached.
		inner, err := tx.Query(q, id)
		require.NoError(t, err)
		n := 0
		for inner.Next() {
			n++
		}
		require.NoError(t, inner.Close())
		got = append(got, n)
	}
	require.NoError(t, outer.Err())
	require.NoError(t, outer.Close())
	require.Equal(t, []int{3, 2, 1}, got)
	// And cached again once they are closed.
	var n int
	require.NoError(t, tx.QueryRow(`SELECT count(*) FROM (`+q+`)`, 1).Scan(&n))
	require.Equal(t, 2, n)
}

func TestLeastRecentlyUsedGoesFirst(t *testing.T) {
	db, prepares := open(t, 2)
	run := func(q string) {
		t.Helper()
		var n int
		require.NoError(t, db.QueryRow(q).Scan(&n))
	}
	run(`SELECT 1`)
	run(`SELECT 2`)
	run(`SELECT 1`) // cached; SELECT 2 is now the least recently used
	run(`SELECT 3`) // evicts SELECT 2
	run(`SELECT 1`) // still cached
	require.EqualValues(t, 3, prepares.Load())
	run(`SELECT 2`) // prepared again
	require.EqualValues(t, 4, prepares.Load())
}

func TestSchemaChangeAndErrors(t *testing.T) {
	db, _ := open(t, 8)
	_, err := db.Exec(`INSERT INTO t (id, v) VALUES (1, 'a')`)
	require.NoError(t, err)
	cols := func() []string {
		t.Helper()
		rows, err := db.Query(`SELECT * FROM t`)
		require.NoError(t, err)
		defer rows.Close()
		c, err := rows.Columns()
		require.NoError(t, err)
		return c
	}
	require.Equal(t, []string{"id", "v"}, cols())
	_, err = db.Exec(`ALTER TABLE t ADD COLUMN w TEXT`)
	require.NoError(t, err)
	require.Equal(t, []string{"id", "v", "w"}, cols(), "a cached statement sees the new schema")

	// A failing run leaves the statement usable.
	const ins = `INSERT INTO t (id, v) VALUES (?, ?)`
	_, err = db.Exec(ins, 1, "dup")
	require.Error(t, err)
	_, err = db.Exec(ins, 2, "b")
	require.NoError(t, err)

	// A script of several statements runs whole, every time.
	for range 2 {
		_, err = db.Exec(`DELETE FROM t WHERE id = 2; INSERT INTO t (id, v) VALUES (2, 'c')`)
		require.NoError(t, err)
	}
	var v string
	require.NoError(t, db.QueryRow(`SELECT v FROM t WHERE id = 2`).Scan(&v))
	require.Equal(t, "c", v)
}

func TestOneStatementPerLimit(t *testing.T) {
	db, prepares := open(t, 16)
	for i := range 20 {
		_, err := db.Exec(`INSERT INTO t (id, v) VALUES (?, ?)`, i, "x")
		require.NoError(t, err)
	}
	prepares.Store(0)
	count := func(q string, args ...any) int {
		t.Helper()
		rows, err := db.Query(q, args...)
		require.NoError(t, err)
		defer rows.Close()
		n := 0
		for rows.Next() {
			n++
		}
		return n
	}
	for range 3 {
		for limit := 1; limit <= 3; limit++ {
			require.Equal(t, limit, count(`SELECT id FROM t WHERE v = ?1 ORDER BY id LIMIT ?2`, "x", limit))
			require.Equal(t, limit, count(`SELECT id FROM t WHERE v = ? ORDER BY id LIMIT ?`, "x", limit))
			require.Equal(t, limit, count(`SELECT id FROM t WHERE v = $1 ORDER BY id LIMIT $2`, "x", limit))
		}
	}
	require.EqualValues(t, 9, prepares.Load(), "one statement per query and LIMIT value")
	require.Equal(t, []int{3}, limitParams(`SELECT id FROM t WHERE v = $1 AND w = $2 LIMIT $3`))
	require.Equal(t, []int{2}, limitParams(`SELECT id FROM t WHERE v = ? ORDER BY id LIMIT ?`))
	require.Equal(t, []int{7, 5}, limitParams("SELECT (SELECT 1 LIMIT ?7 - 1) FROM t\n    limit ?5\n)"))
	require.Empty(t, limitParams(`SELECT id FROM t LIMIT 10`))
}

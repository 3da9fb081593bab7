package queue

// SQLite: the embedded default, one file and one connection, guarded by a
// file lock so that no two processes run workers on it.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"modernc.org/sqlite" // the pure-Go SQLite driver

	"github.com/bookingwebhook/caddy-receive-booking/internal/stmtcache"
)

// stmtCacheSize bounds the prepared statements kept: River's and the
// queue's hot statements are well under it, River's fetch counting once
// per number of idle workers it asks for.
const stmtCacheSize = 256

// sqliteDialect runs the queue on an embedded SQLite file through one
// connection: SQLite has one writer at a time anyway, and River's SQLite
// driver is built for a single connection. Every transaction starts
// IMMEDIATE, taking the write lock at once, so the booking rows need no
// row locks.
type sqliteDialect struct {
	db   *sql.DB
	lock *os.File
}

func openSQLite(ctx context.Context, rq *Config, q *Engine) (backend, error) {
	path := rq.Location
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating queue directory: %w", err)
	}
	lock, err := lockFile(path + ".lock")
	if err != nil {
		return nil, err
	}
	// synchronous(NORMAL) by default, for River's own transactions (a
	// fetch, a completion, maintenance): in WAL mode they survive a crash
	// of the process, and the next durable commit takes them to disk. The
	// commits that must survive a power cut before anything goes on (a
	// webhook's record before its 2xx, a claim before its call, a replay,
	// the health probe) run with synchronous=FULL (beginSync).
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	base, err := sqlite.NewConnector(dsn)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("opening queue file: %w", err)
	}
	// Parsing SQL was the largest cost of a record and a sync here; the
	// connection keeps its statements (River's and ours, a few dozen).
	db := sql.OpenDB(stmtcache.Connector(base, stmtCacheSize))
	db.SetMaxOpenConns(1)
	d := &sqliteDialect{db: db, lock: lock}
	b, err := newSQLiteBackend(ctx, d, q)
	if err != nil {
		d.close()
		return nil, err
	}
	return b, nil
}

func newSQLiteBackend(ctx context.Context, d *sqliteDialect, q *Engine) (backend, error) {
	migrator, err := rivermigrate.New(riversqlite.New(d.db), nil)
	if err != nil {
		return nil, fmt.Errorf("preparing migrations: %w", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("migrating queue: %w", err)
	}
	if err := migrateOurs(func(ddl string) error { _, err := d.db.ExecContext(ctx, ddl); return err }); err != nil {
		return nil, err
	}
	if err := setupTally(ctx, d.db); err != nil {
		return nil, err
	}
	// This process holds the file's lock, so a job still marked running
	// was cut short by a crash: make it available again, rather than
	// waiting for River's rescuer, but not before its call could have
	// ended: import-bookings goes on after its caller dies, and a retry
	// beside it would be a second sync of the booking.
	if _, err := d.db.ExecContext(ctx, `UPDATE river_job SET state = 'available',
		scheduled_at = max(strftime('%Y-%m-%d %H:%M:%f', 'now'), strftime('%Y-%m-%d %H:%M:%f', attempted_at, ?))
		WHERE state = 'running' AND queue = ?`,
		fmt.Sprintf("+%d seconds", int(q.rq.WorkerTimeout.Seconds())), riverQueueName); err != nil {
		return nil, fmt.Errorf("recovering interrupted jobs: %w", err)
	}
	driver := newWakeDriver(d.db)
	insert, _ := json.Marshal(struct {
		Queue string `json:"queue"`
	}{riverQueueName})
	return &riverBackend[*wakeDriver, *sql.Tx]{driver: driver, db: d, q: q, group: newGroupCommit(d, d.beginSync),
		wake: func() { driver.hub.publish(topicInsert, string(insert)) }}, nil
}

func (d *sqliteDialect) begin(ctx context.Context) (*sql.Tx, error) {
	return d.db.BeginTx(ctx, nil)
}

// beginSync begins a transaction that commits with synchronous=FULL
// (durable: the commit is on disk when it returns) or with the
// connection's NORMAL (see groupCommit). The setting belongs to the
// connection: a durable transaction holds it from the setting to its
// restoring, so that no other transaction commits with it, and a
// connection whose restoring fails is discarded (a new one opens with
// NORMAL).
func (d *sqliteDialect) beginSync(ctx context.Context, durable bool) (*sql.Tx, func(), error) {
	if !durable {
		tx, err := d.db.BeginTx(ctx, nil)
		return tx, func() {}, err
	}
	conn, err := d.db.Conn(ctx)
	if err != nil {
		return nil, nil, err
	}
	end := func() {
		if _, err := conn.ExecContext(context.Background(), `PRAGMA synchronous = NORMAL`); err != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		_ = conn.Close()
	}
	if _, err := conn.ExecContext(ctx, `PRAGMA synchronous = FULL`); err != nil {
		end()
		return nil, nil, err
	}
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		end()
		return nil, nil, err
	}
	return tx, end, nil
}

func (d *sqliteDialect) commit(_ context.Context, tx *sql.Tx) error { return tx.Commit() }

func (d *sqliteDialect) rollback(_ context.Context, tx *sql.Tx) { _ = tx.Rollback() }

func (d *sqliteDialect) exec(ctx context.Context, tx *sql.Tx, query string, args ...any) error {
	_, err := tx.ExecContext(ctx, rebindSQLite(query), args...)
	return err
}

func (d *sqliteDialect) queryRow(ctx context.Context, tx *sql.Tx, query string, args ...any) scanner {
	return tx.QueryRowContext(ctx, rebindSQLite(query), args...)
}

func (d *sqliteDialect) queryRows(ctx context.Context, query string, args ...any) (rowsIter, error) {
	rows, err := d.db.QueryContext(ctx, rebindSQLite(query), args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

func (d *sqliteDialect) queryTx(ctx context.Context, tx *sql.Tx, query string, args ...any) (rowsIter, error) {
	rows, err := tx.QueryContext(ctx, rebindSQLite(query), args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

func (d *sqliteDialect) lockSuffix() string { return "" }

func (d *sqliteDialect) close() {
	_ = d.db.Close()
	unlockFile(d.lock)
}

// sqlRows adapts *sql.Rows to rowsIter.
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

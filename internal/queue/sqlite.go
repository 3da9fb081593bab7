package queue

// SQLite: the embedded default, one file and one connection, guarded by a
// file lock so that no two processes run workers on it.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"go.uber.org/zap"
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
	base, err := sqlite.NewConnector(sqliteDSN(path))
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("opening queue file: %w", err)
	}
	// Parsing SQL was the largest cost of a record and a sync here; the
	// connection keeps its statements (River's and ours, a few dozen).
	db := sql.OpenDB(stmtcache.Connector(base, stmtCacheSize))
	db.SetMaxOpenConns(1)
	d := &sqliteDialect{db: db, lock: lock}
	if err := d.incrementalVacuum(ctx, q); err != nil {
		d.close()
		return nil, err
	}
	b, err := newSQLiteBackend(ctx, d, q)
	if err != nil {
		d.close()
		return nil, err
	}
	return b, nil
}

// sqliteDSN opens the file at path as the queue uses it. synchronous(NORMAL)
// by default, for River's own transactions (a fetch, a completion,
// maintenance): in WAL mode they survive a crash of the process, and the
// next durable commit takes them to disk. The commits that must survive a
// power cut before anything goes on (a webhook's record before its 2xx, a
// claim before its call, a replay, the health probe) run with
// synchronous=FULL (beginSync). auto_vacuum comes first: it takes effect
// only on a file that has no page yet, and WAL mode writes the first (see
// incrementalVacuum for older files). The WAL is reused from its start
// after each checkpoint, but a large transaction (River's cleaner, a
// reclaim) grows it for good unless journal_size_limit cuts it back.
func sqliteDSN(path string) string {
	return "file:" + (&url.URL{Path: path}).EscapedPath() +
		"?_pragma=auto_vacuum(INCREMENTAL)&_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)" +
		fmt.Sprintf("&_pragma=journal_size_limit(%d)", walSizeLimit) + "&_pragma=synchronous(NORMAL)&_txlock=immediate"
}

// walSizeLimit is the size a WAL is cut back to after a checkpoint: about
// what SQLite's automatic checkpoint (every 1000 pages) lets it reach.
const walSizeLimit = 4 << 20

func newSQLiteBackend(ctx context.Context, d *sqliteDialect, q *Engine) (backend, error) {
	migrator, err := rivermigrate.New(riversqlite.New(d.db), nil)
	if err != nil {
		return nil, fmt.Errorf("preparing migrations: %w", err)
	}
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return nil, fmt.Errorf("migrating queue: %w", err)
	}
	if err := migrate(ctx, SQLite, &sqliteSQL, d, time.Now().UnixNano()); err != nil {
		return nil, err
	}
	if err := setupTally(ctx, d.db); err != nil {
		return nil, err
	}
	driver := newWakeDriver(d.db)
	insert, _ := json.Marshal(struct {
		Queue string `json:"queue"`
	}{riverQueueName})
	b := &riverBackend[*wakeDriver, *sql.Tx]{driver: driver, db: d, q: q,
		wake: func() { driver.hub.publish(topicInsert, string(insert)) }}
	// This process holds the file's lock, so a job still marked running
	// was cut short by a crash.
	if err := b.recoverInterrupted(ctx); err != nil {
		return nil, err
	}
	b.group = newGroupCommit(d, d.beginSync)
	return b, nil
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
	_, err := tx.ExecContext(ctx, query, args...)
	return err
}

func (d *sqliteDialect) execCount(ctx context.Context, tx *sql.Tx, query string, args ...any) (int64, error) {
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (d *sqliteDialect) queryRow(ctx context.Context, tx *sql.Tx, query string, args ...any) scanner {
	return tx.QueryRowContext(ctx, query, args...)
}

func (d *sqliteDialect) queryRows(ctx context.Context, query string, args ...any) (rowsIter, error) {
	rows, err := d.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

func (d *sqliteDialect) queryTx(ctx context.Context, tx *sql.Tx, query string, args ...any) (rowsIter, error) {
	rows, err := tx.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return sqlRows{rows}, nil
}

func (d *sqliteDialect) isNoRows(err error) bool { return errors.Is(err, sql.ErrNoRows) }

func (d *sqliteDialect) sql() *queries { return &sqliteSQL }

// columns passes columns as one JSON array of rows, which the statements
// read with json_each: the statement's text, and its prepared program,
// stay the same whatever the number of rows.
func (d *sqliteDialect) columns(cols ...any) ([]any, error) {
	n := -1
	for _, col := range cols {
		var m int
		switch c := col.(type) {
		case []string:
			m = len(c)
		case []int64:
			m = len(c)
		default:
			return nil, fmt.Errorf("columns: unexpected column %T", c)
		}
		if n >= 0 && m != n {
			return nil, fmt.Errorf("columns: %d rows beside %d", m, n)
		}
		n = m
	}
	rows := make([][]any, max(n, 0))
	for i := range rows {
		rows[i] = make([]any, len(cols))
		for j, col := range cols {
			switch c := col.(type) {
			case []string:
				rows[i][j] = c[i]
			case []int64:
				rows[i][j] = c[i]
			}
		}
	}
	b, err := json.Marshal(rows)
	if err != nil {
		return nil, err
	}
	return []any{string(b)}, nil
}

// One process owns the file (lockFile): max_in_flight caps its workers,
// and no slot, claim number or notice is shared with anyone.

func (d *sqliteDialect) takeSlot(context.Context, *sql.Tx, slotClaim, int) (bool, error) {
	return true, nil
}

func (d *sqliteDialect) releaseSlot(context.Context, *sql.Tx, int64, int) error { return nil }

func (d *sqliteDialect) ensureSlots(context.Context, int) error { return nil }

func (d *sqliteDialect) waitSlot(ctx context.Context, wait time.Duration, _ int, _ time.Time) {
	select {
	case <-time.After(wait):
	case <-ctx.Done():
	}
}

func (d *sqliteDialect) claim(ctx context.Context, tx *sql.Tx, args ...any) (int64, error) {
	return 0, d.exec(ctx, tx, claimBooking, args...)
}

func (d *sqliteDialect) claimMark(context.Context, *sql.Tx) (int64, error) { return 0, nil }

func (d *sqliteDialect) publish(context.Context, *sql.Tx, *publication) error { return nil }

// workers is Workers, capped by MaxInFlight: one instance, so the cap is
// simply the number of workers.
func (d *sqliteDialect) workers(s Settings) int {
	if s.MaxInFlight > 0 {
		return min(s.Workers, s.MaxInFlight)
	}
	return s.Workers
}

// fetchCooldown lets River fetch again at once: a fetch shares the one
// connection, and the wake-ups (wake.go) already come per commit.
func (d *sqliteDialect) fetchCooldown() time.Duration { return time.Millisecond }

// sqliteSQL is the SQL that SQLite says differently from PostgreSQL.
var sqliteSQL = queries{
	// An IMMEDIATE transaction holds the write lock: no row lock needed.
	lockRow: "",
	// "WHERE true" tells SQLite's parser that ON CONFLICT is the upsert's.
	upsertBookings: `INSERT INTO receive_booking_booking (target_id, org, booking, event_type, urgency)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4 FROM json_each($1) WHERE true` + upsertBookingsReturning,
	setWaitingMany: `UPDATE receive_booking_booking SET waiting_job_id = v.id
FROM (SELECT value->>0 AS target_id, value->>1 AS org, value->>2 AS booking, value->>3 AS id FROM json_each($1)) AS v
WHERE receive_booking_booking.target_id = v.target_id AND receive_booking_booking.org = v.org
	AND receive_booking_booking.booking = v.booking`,
	renewAttempts: `UPDATE river_job SET max_attempts = max(max_attempts, attempt + $2)
WHERE id IN (SELECT value->>0 FROM json_each($1))`,
	promoteWaiting: `UPDATE river_job SET priority = $2 WHERE priority > $2 AND id IN
	(SELECT waiting_job_id FROM receive_booking_booking WHERE org = $1 AND waiting_job_id IS NOT NULL
		AND urgency >= $3 AND urgency < $4)`,
	// River keeps times as text: strftime's format, in UTC.
	raiseWaiting: `UPDATE river_job SET priority = min(priority, $2),
	state = CASE WHEN $3 = 1 AND state = 'retryable' AND $4 <= unixepoch('now', 'subsec') THEN 'available' ELSE state END,
	scheduled_at = CASE WHEN $3 = 1 AND state IN ('retryable', 'available') AND scheduled_at > strftime('%Y-%m-%d %H:%M:%f', $4, 'unixepoch')
		THEN strftime('%Y-%m-%d %H:%M:%f', $4, 'unixepoch') ELSE scheduled_at END
	WHERE id = $1`,
	insertEvents: `INSERT INTO receive_booking_event (target_id, org, booking, kind, data, at, job_id)
SELECT value->>0, value->>1, value->>2, value->>3, value->>4, value->>5, value->>6 FROM json_each($1)`,
	// Kept by triggers (tally.go).
	countByState: `SELECT state, n FROM receive_booking_job_count WHERE queue = $1`,
	// Jobs are created in id order: the first pending one by id is the
	// oldest, found through a partial index of only those jobs' ids
	// (tally.go) whatever the size of the queue or of the history kept
	// beside it.
	oldestPending: `SELECT max(unixepoch('now', 'subsec') - unixepoch(created_at, 'subsec'), 0)
FROM river_job INDEXED BY receive_booking_job_pending
WHERE state IN (` + pendingStatesSQL + `) AND queue = $1 ORDER BY id LIMIT 1`,
	argField: "args ->> '$.", argFieldEnd: "'",
	// This process holds the file's lock, so a job still marked running
	// was cut short: every one is this instance's ($2, unused here).
	recoverJobs: `UPDATE river_job SET state = 'available',
	scheduled_at = CASE WHEN ` + claimedByJob + `
		THEN max(strftime('%Y-%m-%d %H:%M:%f', 'now'), strftime('%Y-%m-%d %H:%M:%f', attempted_at, '+' || $3 || ' seconds'))
		ELSE strftime('%Y-%m-%d %H:%M:%f', 'now') END
	WHERE state = 'running' AND queue = $1 AND $2 IS NOT NULL`,
	resumeJobs: `UPDATE river_job SET state = 'available', scheduled_at = strftime('%Y-%m-%d %H:%M:%f', 'now')
	WHERE queue = $1 AND state = 'scheduled' AND ($2 = '' OR coalesce(nullif(args ->> '$.route', ''), $4) = $2)
		AND ($3 = '' OR args ->> '$.organization_id' = $3)`,
	columnExists: `SELECT count(*) FROM pragma_table_info($1) WHERE name = $2`,
}

// inTx and value let migrate run on the file (schemaDB).
func (d *sqliteDialect) inTx(ctx context.Context, fn func(exec func(string, ...any) error) error) error {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if err := fn(func(q string, args ...any) error { _, err := tx.ExecContext(ctx, q, args...); return err }); err != nil {
		return err
	}
	return tx.Commit()
}

func (d *sqliteDialect) value(ctx context.Context, query string, args ...any) (int64, error) {
	var n int64
	err := d.db.QueryRowContext(ctx, query, args...).Scan(&n)
	return n, err
}

// The file's size: SQLite reuses the pages that deleted rows leave free,
// but never gives them back to the file system by itself, so a burst of
// webhooks would leave the file at its peak size for good. In incremental
// auto-vacuum mode the free pages can be given back a few at a time
// (reclaim, from the engine's periodic prune).
const (
	// autoVacuumIncremental is PRAGMA auto_vacuum's value for it.
	autoVacuumIncremental = 2
	// reclaimReserve is the share of the file (in free pages) kept free
	// for new rows: River deletes finished jobs in batches, and the
	// pages they free are refilled soon after; only what a burst leaves
	// beyond that goes back.
	reclaimReserve = 0.1
	// reclaimMinFree is the fewest free pages worth a reclaim (4 MiB of
	// 4 KiB pages).
	reclaimMinFree = 1024
	// reclaimMaxPages bounds the pages one reclaim gives back (8 MiB),
	// and so the time it holds the file and the WAL it writes.
	reclaimMaxPages = 2048
)

// incrementalVacuum turns incremental auto-vacuum on for a file made
// before it was used: a new file has it from its first page (see the
// DSN); an older one is rewritten once (VACUUM), which takes about as long
// as copying the file and needs as much free disk beside it. It runs
// before the queue opens (webhooks are answered 503 meanwhile), without
// the connect timeout: a large file must not be cut short and tried again.
func (d *sqliteDialect) incrementalVacuum(ctx context.Context, q *Engine) error {
	var mode int
	if err := d.db.QueryRowContext(ctx, `PRAGMA auto_vacuum`).Scan(&mode); err != nil {
		return fmt.Errorf("reading the queue file's auto_vacuum: %w", err)
	}
	if mode == autoVacuumIncremental {
		return nil
	}
	size := fileSize(q.rq.Location)
	q.logger.Info("converting the queue file to incremental auto-vacuum, once: it is rewritten (VACUUM)",
		zap.String("path", q.rq.Location), zap.Int64("bytes", size))
	start := time.Now()
	vctx := context.WithoutCancel(ctx)
	if _, err := d.db.ExecContext(vctx, `PRAGMA auto_vacuum = INCREMENTAL`); err != nil {
		return fmt.Errorf("converting the queue file to incremental auto-vacuum: %w", err)
	}
	if _, err := d.db.ExecContext(vctx, `VACUUM`); err != nil {
		return fmt.Errorf("converting the queue file to incremental auto-vacuum (VACUUM): %w", err)
	}
	// The rewrite went through the WAL, which would otherwise stay as
	// large as the file.
	if _, err := d.db.ExecContext(vctx, `PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		return fmt.Errorf("converting the queue file to incremental auto-vacuum (checkpoint): %w", err)
	}
	q.logger.Info("queue file converted to incremental auto-vacuum", zap.String("path", q.rq.Location),
		zap.Int64("bytes_before", size), zap.Int64("bytes_after", fileSize(q.rq.Location)), zap.Duration("took", time.Since(start)))
	return nil
}

// reclaim gives back the free pages beyond reclaimReserve of the file, at
// most reclaimMaxPages at a time.
func (d *sqliteDialect) reclaim(ctx context.Context) error {
	return d.reclaimAtMost(ctx, reclaimMaxPages)
}

func (d *sqliteDialect) reclaimAtMost(ctx context.Context, maxPages int64) error {
	var free, pages int64
	if err := d.db.QueryRowContext(ctx, `SELECT freelist_count, page_count FROM pragma_freelist_count(), pragma_page_count()`).
		Scan(&free, &pages); err != nil {
		return err
	}
	n := free - int64(reclaimReserve*float64(pages))
	if n < reclaimMinFree {
		return nil
	}
	// Exec steps the pragma to its end: each step frees one page.
	_, err := d.db.ExecContext(ctx, fmt.Sprintf(`PRAGMA incremental_vacuum(%d)`, min(n, maxPages)))
	return err
}

// fileSize is the size of a SQLite file with its WAL, or -1.
func fileSize(path string) int64 {
	var n int64 = -1
	for _, p := range []string{path, path + "-wal"} {
		if fi, err := os.Stat(p); err == nil {
			n = max(n, 0) + fi.Size()
		}
	}
	return n
}

func (d *sqliteDialect) close() {
	_ = d.db.Close()
	unlockFile(d.lock)
}

// sqlRows adapts *sql.Rows to rowsIter.
type sqlRows struct{ *sql.Rows }

func (r sqlRows) Close() { _ = r.Rows.Close() }

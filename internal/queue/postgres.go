package queue

// PostgreSQL: a queue shared by every instance that points at the same
// database; migrations under an advisory lock, booking rows locked FOR
// UPDATE, a stable River client ID per instance.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/rivermigrate"
)

// migrationLockID is the advisory lock that serialises migrations when
// several instances start at once (River's migrator takes none).
const migrationLockID = 0x72625f6d6967 // "rb_mig"

// pgDialect runs the queue on PostgreSQL, shared by every instance that
// points at the same database. Booking rows are locked with FOR UPDATE.
type pgDialect struct {
	pool *pgxpool.Pool
	// outcomes hears the outcomes of syncs run by every instance (see
	// notify.go).
	outcomes *outcomeListener
}

func openPostgres(ctx context.Context, rq *Config, q *Engine) (backend, error) {
	cfg, err := parseDSN(rq.Location)
	if err != nil {
		return nil, fmt.Errorf("queue postgres: %w", err)
	}
	// Workers, batchers, the admin API and River's own services; a reload
	// may raise workers without reopening the pool.
	cfg.MaxConns = int32(max(rq.Workers, 32) + 8)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("queue postgres: %w", err)
	}
	d := &pgDialect{pool: pool}
	b, err := newPostgresBackend(ctx, d, q)
	if err == nil {
		d.outcomes, err = listenOutcomes(ctx, pool, q)
	}
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("queue postgres: %w", err)
	}
	return b, nil
}

func newPostgresBackend(ctx context.Context, d *pgDialect, q *Engine) (backend, error) {
	driver := riverpgxv5.New(d.pool)
	if err := migratePostgres(ctx, d, driver); err != nil {
		return nil, err
	}
	id := instanceID(q.rq.DataDir, q.key)
	if err := recoverOwnJobs(ctx, d, id, q.rq.WorkerTimeout); err != nil {
		return nil, err
	}
	return &riverBackend[*riverpgxv5.Driver, pgx.Tx]{driver: driver, db: d, q: q, clientID: id}, nil
}

// migratePostgres brings River's tables and ours up to date under an
// advisory lock, so that instances starting together take turns. River's
// migrations cannot share one transaction (a new enum value must be
// committed before use), so the lock is a session lock on one connection.
func migratePostgres(ctx context.Context, d *pgDialect, driver *riverpgxv5.Driver) error {
	migrator, err := rivermigrate.New(driver, nil)
	if err != nil {
		return fmt.Errorf("preparing migrations: %w", err)
	}
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connecting: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1)`, migrationLockID); err != nil {
		return fmt.Errorf("locking migrations: %w", err)
	}
	defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock($1)`, migrationLockID) }()
	if _, err := migrator.Migrate(ctx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("migrating queue: %w", err)
	}
	err = migrateOurs(Postgres, func(ddl string) error {
		_, err := conn.Exec(ctx, strings.Replace(ddl, "ADD COLUMN ", "ADD COLUMN IF NOT EXISTS ", 1))
		return err
	})
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, createClaimSeq); err != nil {
		return fmt.Errorf("migrating queue: %w", err)
	}
	return nil
}

// instanceID names this Caddy instance to River, the same across restarts:
// the host, plus a hash of Caddy's data directory and the queue, so that
// two instances on one host (each with its own data directory) differ.
func instanceID(dataDir, queueKey string) string {
	host, _ := os.Hostname()
	sum := sha256.Sum256([]byte(dataDir + "\x00" + queueKey))
	return fmt.Sprintf("rb-%s-%s", host, hex.EncodeToString(sum[:6]))
}

// recoverOwnJobs makes available again the syncs this instance was running
// when it last stopped without finishing them (a crash, a kill -9): it has
// just started, so none of them can still be running here. Without this
// they would wait for River's rescuer (worker_timeout + 45 s, checked every
// 30 s). Each runs once its call could have ended (attempted_at +
// worker_timeout): import-bookings goes on after its caller dies. Jobs of
// other instances are theirs to finish, or the rescuer's.
func recoverOwnJobs(ctx context.Context, d *pgDialect, id string, workerTimeout time.Duration) error {
	_, err := d.pool.Exec(ctx, `UPDATE river_job SET state = 'available',
		scheduled_at = greatest(now(), attempted_at + make_interval(secs => $3))
		WHERE state = 'running' AND queue = $1 AND attempted_by[array_length(attempted_by, 1)] = $2`,
		riverQueueName, id, workerTimeout.Seconds())
	if err != nil {
		return fmt.Errorf("recovering interrupted jobs: %w", err)
	}
	return nil
}

func (d *pgDialect) begin(ctx context.Context) (pgx.Tx, error) { return d.pool.Begin(ctx) }

func (d *pgDialect) commit(ctx context.Context, tx pgx.Tx) error { return tx.Commit(ctx) }

func (d *pgDialect) rollback(ctx context.Context, tx pgx.Tx) { _ = tx.Rollback(ctx) }

func (d *pgDialect) exec(ctx context.Context, tx pgx.Tx, query string, args ...any) error {
	_, err := tx.Exec(ctx, query, args...)
	return err
}

func (d *pgDialect) queryRow(ctx context.Context, tx pgx.Tx, query string, args ...any) scanner {
	return tx.QueryRow(ctx, query, args...)
}

func (d *pgDialect) queryRows(ctx context.Context, query string, args ...any) (rowsIter, error) {
	rows, err := d.pool.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return pgRows{rows}, nil
}

func (d *pgDialect) queryTx(ctx context.Context, tx pgx.Tx, query string, args ...any) (rowsIter, error) {
	rows, err := tx.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return pgRows{rows}, nil
}

func (d *pgDialect) lockSuffix() string { return " FOR UPDATE" }

// reclaim leaves free space to PostgreSQL's autovacuum.
func (d *pgDialect) reclaim(context.Context) error { return nil }

func (d *pgDialect) close() {
	if d.outcomes != nil {
		d.outcomes.stop() // its connection is out of the pool
	}
	d.pool.Close()
}

// pgRows adapts pgx.Rows to rowsIter.
type pgRows struct{ pgx.Rows }

func (r pgRows) Close() { r.Rows.Close() }

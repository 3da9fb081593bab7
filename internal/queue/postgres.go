package queue

// PostgreSQL: a queue shared by every instance that points at the same
// database; migrations under an advisory lock, booking rows locked FOR
// UPDATE, a stable River client ID per instance.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
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
	// outcomes hears the outcomes of syncs run by every instance, and
	// their released slots (see notify.go).
	outcomes *outcomeListener
	// slots are this instance's syncs waiting for a free slot.
	slots slotWaits
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
		d.outcomes, err = listenOutcomes(ctx, pool, q, d.slots.signal)
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
	b := &riverBackend[*riverpgxv5.Driver, pgx.Tx]{driver: driver, db: d, q: q, clientID: instanceID(q.rq.DataDir, q.key)}
	if err := b.recoverInterrupted(ctx); err != nil {
		return nil, err
	}
	return b, nil
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
	return migrate(ctx, Postgres, &postgresSQL, pgConn{conn}, time.Now().UnixNano())
}

// instanceID names this Caddy instance to River, the same across restarts:
// the host, plus a hash of Caddy's data directory and the queue, so that
// two instances on one host (each with its own data directory) differ.
func instanceID(dataDir, queueKey string) string {
	host, _ := os.Hostname()
	sum := sha256.Sum256([]byte(dataDir + "\x00" + queueKey))
	return fmt.Sprintf("rb-%s-%s", host, hex.EncodeToString(sum[:6]))
}

func (d *pgDialect) begin(ctx context.Context) (pgx.Tx, error) { return d.pool.Begin(ctx) }

func (d *pgDialect) commit(ctx context.Context, tx pgx.Tx) error { return tx.Commit(ctx) }

func (d *pgDialect) rollback(ctx context.Context, tx pgx.Tx) { _ = tx.Rollback(ctx) }

func (d *pgDialect) exec(ctx context.Context, tx pgx.Tx, query string, args ...any) error {
	_, err := tx.Exec(ctx, query, args...)
	return err
}

func (d *pgDialect) execCount(ctx context.Context, tx pgx.Tx, query string, args ...any) (int64, error) {
	tag, err := tx.Exec(ctx, query, args...)
	return tag.RowsAffected(), err
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

func (d *pgDialect) isNoRows(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

func (d *pgDialect) sql() *queries { return &postgresSQL }

// columns passes each column as an array (unnest in the statement).
func (d *pgDialect) columns(cols ...any) ([]any, error) { return cols, nil }

// takeSlot takes the lowest slot not held by a call that may be running
// (one of this attempt's own, after a claim rolled back, counts as free),
// skipping the slots other claims are taking at this moment.
func (d *pgDialect) takeSlot(ctx context.Context, tx pgx.Tx, s slotClaim, maxInFlight int) (bool, error) {
	if maxInFlight <= 0 {
		return true, nil
	}
	var slot int
	err := tx.QueryRow(ctx, `SELECT slot FROM receive_booking_slot
		WHERE slot <= $1 AND (job_id IS NULL OR until < $2 OR (job_id = $3 AND attempt = $4))
		ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED`, maxInFlight, time.Now().UnixNano(), s.jobID, s.attempt).Scan(&slot)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("taking a sync slot: %w", err)
	}
	_, err = tx.Exec(ctx, `UPDATE receive_booking_slot SET job_id = $1, attempt = $2, until = $3 WHERE slot = $4`,
		s.jobID, s.attempt, s.until, slot)
	return true, err
}

// releaseSlot frees the attempt's slot, and tells every instance that one
// is free (a sync waiting for one tries again at once; see slotWaits).
func (d *pgDialect) releaseSlot(ctx context.Context, tx pgx.Tx, jobID int64, attempt int) error {
	tag, err := tx.Exec(ctx, `UPDATE receive_booking_slot SET job_id = NULL, attempt = NULL, until = NULL
		WHERE job_id = $1 AND attempt = $2`, jobID, attempt)
	if err != nil {
		return fmt.Errorf("releasing sync slot: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, slotChannel); err != nil {
		return fmt.Errorf("announcing a free sync slot: %w", err)
	}
	return nil
}

// waitSlot waits until a slot is released (on any instance: every release
// is announced on slotChannel), wait has passed, or ctx is done.
func (d *pgDialect) waitSlot(ctx context.Context, wait time.Duration, priority int, since time.Time) {
	d.slots.wait(ctx, wait, priority, since)
}

// slotWaits hands each announced free slot to one waiting sync of this
// instance: every instance's first waiter tries to claim it, not every
// waiter. Waiters are in River's fetch order: by priority, then by when
// they began to wait (a waiter that lost the slot to another instance
// keeps its place), so a new webhook of another organization is not held
// behind a backlog's syncs waiting in the workers.
type slotWaits struct {
	mu    sync.Mutex
	queue []*slotWaiter
}

// slotWaiter is one sync waiting for a slot.
type slotWaiter struct {
	ch       chan struct{}
	priority int
	since    time.Time
}

func (s *slotWaits) wait(ctx context.Context, d time.Duration, priority int, since time.Time) {
	w := &slotWaiter{ch: make(chan struct{}, 1), priority: priority, since: since}
	s.mu.Lock()
	i, _ := slices.BinarySearchFunc(s.queue, w, func(a, b *slotWaiter) int {
		return cmp.Or(cmp.Compare(a.priority, b.priority), a.since.Compare(b.since), 1)
	})
	s.queue = slices.Insert(s.queue, i, w)
	s.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-w.ch:
		return
	case <-t.C:
	case <-ctx.Done():
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.Index(s.queue, w); i >= 0 {
		s.queue = slices.Delete(s.queue, i, i+1)
		return
	}
	// Signalled as the wait ended: pass the slot on.
	s.signalLocked()
}

func (s *slotWaits) signal() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.signalLocked()
}

func (s *slotWaits) signalLocked() {
	if len(s.queue) > 0 {
		s.queue[0].ch <- struct{}{}
		s.queue = s.queue[1:]
	}
}

func (d *pgDialect) ensureSlots(ctx context.Context, n int) error {
	if n <= 0 {
		return nil
	}
	_, err := d.pool.Exec(ctx, `INSERT INTO receive_booking_slot (slot) SELECT generate_series(1, $1::int) ON CONFLICT (slot) DO NOTHING`, n)
	return err
}

// claim numbers the claim in the same statement (one round trip; a row
// that is not there fails it).
func (d *pgDialect) claim(ctx context.Context, tx pgx.Tx, args ...any) (int64, error) {
	var n int64
	err := tx.QueryRow(ctx, claimBooking+` RETURNING nextval('receive_booking_claim_seq')`, args...).Scan(&n)
	return n, err
}

// claimMark reads the highest claim number taken so far (0 before the
// first); is_called is false until the sequence's first nextval.
func (d *pgDialect) claimMark(ctx context.Context, tx pgx.Tx) (int64, error) {
	var mark int64
	err := tx.QueryRow(ctx, `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM receive_booking_claim_seq`).Scan(&mark)
	return mark, err
}

// publish sends note on the outcome channel when tx commits, and stores
// the answer's body beside it when it is too long to be carried (answers
// stored earlier than any sender waits are dropped on the way).
func (d *pgDialect) publish(ctx context.Context, tx pgx.Tx, note *publication) error {
	if note == nil {
		return nil
	}
	if note.body != nil {
		now := time.Now()
		if _, err := tx.Exec(ctx, `WITH gone AS (DELETE FROM receive_booking_answer WHERE at < $4)
			INSERT INTO receive_booking_answer (job_id, claim, body, at) VALUES ($1, $2, $3, $5)
			ON CONFLICT (job_id, claim) DO UPDATE SET body = excluded.body, at = excluded.at`,
			note.jobID, note.claim, string(note.body), now.Add(-storedAnswerKeep).UnixNano(), now.UnixNano()); err != nil {
			return fmt.Errorf("storing sync answer: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, outcomeChannel, string(note.payload)); err != nil {
		return fmt.Errorf("publishing sync outcome: %w", err)
	}
	return nil
}

// workers is Workers: max_in_flight caps every instance's syncs together,
// through the slots.
func (d *pgDialect) workers(s Settings) int { return s.Workers }

// fetchCooldown spaces River's fetches: each is a round trip and a write.
// A fetch takes at most the idle workers, so the cooldown bounds an
// instance's rate of fast syncs (at 20 ms, 10 workers stayed near 500/s).
func (d *pgDialect) fetchCooldown() time.Duration { return 2 * time.Millisecond }

// postgresSQL is the SQL that PostgreSQL says differently from SQLite.
var postgresSQL = queries{
	lockRow: " FOR UPDATE",
	upsertBookings: `INSERT INTO receive_booking_booking (target_id, org, booking, event_type, urgency)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int[])` + upsertBookingsReturning,
	setWaitingMany: `UPDATE receive_booking_booking AS b SET waiting_job_id = v.id
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS v(target_id, org, booking, id)
WHERE b.target_id = v.target_id AND b.org = v.org AND b.booking = v.booking`,
	renewAttempts: `UPDATE river_job SET max_attempts = GREATEST(max_attempts, attempt + $2) WHERE id = ANY($1::bigint[])`,
	// A job row another transaction holds (River fetching it) is skipped,
	// not waited for: the priority only orders fetches, and waiting on
	// River's rows while holding booking rows could deadlock.
	promoteWaiting: `UPDATE river_job SET priority = $2 WHERE id IN (SELECT j.id FROM river_job j
	JOIN receive_booking_booking w ON w.waiting_job_id = j.id
	WHERE w.org = $1 AND j.priority > $2 AND w.urgency >= $3 AND w.urgency < $4 FOR UPDATE OF j SKIP LOCKED)`,
	raiseWaiting: `UPDATE river_job SET priority = LEAST(priority, $2),
	state = CASE WHEN $3 = 1 AND state = 'retryable' AND to_timestamp($4::float8) <= now() THEN 'available'::river_job_state ELSE state END,
	scheduled_at = CASE WHEN $3 = 1 AND state IN ('retryable', 'available') AND scheduled_at > to_timestamp($4::float8)
		THEN to_timestamp($4::float8) ELSE scheduled_at END
	WHERE id IN (SELECT id FROM river_job WHERE id = $1
		AND (priority > $2 OR ($3 = 1 AND state IN ('retryable', 'available') AND scheduled_at > to_timestamp($4::float8))) FOR UPDATE SKIP LOCKED)`,
	insertEvents: `INSERT INTO receive_booking_event (target_id, org, booking, kind, data, at, job_id)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])`,
	// PostgreSQL counts without blocking writers.
	countByState: `SELECT state::text, count(*) FROM river_job WHERE queue = $1 GROUP BY state`,
	oldestPending: `SELECT greatest(extract(epoch FROM now() - created_at), 0)::float8 FROM river_job
WHERE state IN (` + pendingStatesSQL + `) AND queue = $1 ORDER BY id LIMIT 1`,
	argField: "args ->> '", argFieldEnd: "'",
	// Only this instance's own ($2): jobs of other instances are theirs to
	// finish, or River's rescuer's.
	recoverJobs: `UPDATE river_job SET state = 'available',
	scheduled_at = CASE WHEN ` + claimedByJob + ` THEN greatest(now(), attempted_at + make_interval(secs => $3)) ELSE now() END
	WHERE state = 'running' AND queue = $1 AND attempted_by[array_length(attempted_by, 1)] = $2`,
	resumeJobs: `UPDATE river_job SET state = 'available', scheduled_at = now()
	WHERE queue = $1 AND state = 'scheduled' AND ($2::text = '' OR coalesce(nullif(args ->> 'route', ''), $4::text) = $2::text)
		AND ($3::text = '' OR args ->> 'organization_id' = $3::text)`,
	columnExists: `SELECT count(*) FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1 AND column_name = $2`,
}

// pgConn lets migrate run on the connection that holds the migration
// lock (schemaDB).
type pgConn struct{ conn *pgxpool.Conn }

func (c pgConn) inTx(ctx context.Context, fn func(exec func(string, ...any) error) error) error {
	return pgx.BeginFunc(ctx, c.conn, func(tx pgx.Tx) error {
		return fn(func(q string, args ...any) error { _, err := tx.Exec(ctx, q, args...); return err })
	})
}

func (c pgConn) value(ctx context.Context, query string, args ...any) (int64, error) {
	var n int64
	err := c.conn.QueryRow(ctx, query, args...).Scan(&n)
	return n, err
}

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

package queue

// The queue on River: recording batches, the booking rows that decide
// coalescing and the one running sync per booking, job listing and
// replays, and River's log lines passed through the scrubber.

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
	"github.com/jackc/pgx/v5"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"
)

// riverQueueName keeps our jobs apart from any other River user of the
// same database (the Supabase project's own database, say).
const riverQueueName = "receive_booking"

// Args is one queued booking sync. Webhooks for the same booking that
// arrive before it starts merge into it.
type Args struct {
	// Route names the handler route whose target the sync calls (jobs
	// recorded before routes existed have none: the default route).
	Route          string          `json:"route,omitempty"`
	BookingID      json.RawMessage `json:"booking_id"`
	BookingKey     string          `json:"booking_key"`
	OrganizationID string          `json:"organization_id,omitempty"`
	// OrganizationIDJSON is organization_id as received, forwarded as is.
	OrganizationIDJSON json.RawMessage `json:"organization_id_json,omitempty"`
	EventType          string          `json:"event_type,omitempty"`
	// AcceptedAt is when the first webhook this job carries was accepted.
	AcceptedAt time.Time `json:"accepted_at"`
	// NotBefore is the end of the coalescing window.
	NotBefore time.Time `json:"not_before,omitzero"`
	// Trace is the W3C trace context of the webhook that made the job:
	// every attempt continues it, on whichever instance, however late.
	Trace tracing.Context `json:"trace,omitzero"`
}

// route is the job's route, the default one for older jobs.
func (a *Args) route() string {
	if a.Route == "" {
		return DefaultRoute
	}
	return a.Route
}

// Kind is the River job kind.
func (Args) Kind() string { return "receive_booking_sync" }

// InsertOpts puts every sync on our own River queue.
func (Args) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: riverQueueName} }

// intake is the queue as the engine feeds and watches it.
type intake interface {
	insertBatch(ctx context.Context, batch []*Entry) error
	stats(ctx context.Context) (*Stats, error)
	// probe commits a small write: it fails when no webhook could be
	// recorded (the database is away, the disk is full).
	probe(ctx context.Context) error
	// restartWorkers (re)starts River's workers with these settings; jobs
	// running under the old ones finish first.
	restartWorkers(s Settings) error
	// workerSettings are the settings the workers run with.
	workerSettings() Settings
	// dashboard is a read-only River UI served under prefix.
	dashboard(prefix string) (http.Handler, error)
	// recordAnswers writes answers to booking timelines.
	recordAnswers(ctx context.Context, rows []eventRow) error
	// pruneEvents drops timeline events whose job is gone, among those
	// written before horizon.
	pruneEvents(ctx context.Context, horizon time.Time) error
	// reclaim gives free space back to the file system (SQLite).
	reclaim(ctx context.Context) error
	close(ctx context.Context) error
}

// JobStore is the queue as the admin API sees it.
type JobStore interface {
	ListJobs(ctx context.Context, states []rivertype.JobState, limit int, after int64, bookingKey string) ([]*rivertype.JobRow, error)
	GetJob(ctx context.Context, id int64) (*rivertype.JobRow, error)
	ReplayJob(ctx context.Context, id int64) (*ReplayResult, error)
	DeleteJob(ctx context.Context, id int64) (*rivertype.JobRow, error)
	// BookingEvents, BookingOrganizations and JobsByID read booking
	// timelines (timeline.go).
	BookingEvents(ctx context.Context, org, booking string, limit int) ([]Event, error)
	BookingOrganizations(ctx context.Context, booking string) ([]string, error)
	JobsByID(ctx context.Context, ids []int64) ([]*rivertype.JobRow, error)
}

// ReplayMemory is the webhook-id store of signed webhooks, shared by the
// instances on one database.
type ReplayMemory interface {
	// replaySeen records a webhook-id (hashed) until expires, and reports
	// whether it was already recorded and unexpired.
	ReplaySeen(ctx context.Context, key string, now, expires time.Time) (bool, error)
	ReplayForget(ctx context.Context, key string) error
	// prune drops expired webhook-ids.
	prune(ctx context.Context, now time.Time) error
}

// backend is one database's queue; riverBackend implements it for SQLite
// and PostgreSQL alike.
type backend interface {
	intake
	JobStore
	ReplayMemory
}

// ReplayResult says what a replay of a failed job came to.
type ReplayResult struct {
	JobID     int64 `json:"job_id"`
	Coalesced bool  `json:"coalesced"`
}

// dialect is what differs between the two databases: transactions, rows,
// placeholders and locking.
type dialect[TTx any] interface {
	begin(ctx context.Context) (TTx, error)
	commit(ctx context.Context, tx TTx) error
	rollback(ctx context.Context, tx TTx)
	exec(ctx context.Context, tx TTx, query string, args ...any) error
	queryRow(ctx context.Context, tx TTx, query string, args ...any) scanner
	queryRows(ctx context.Context, query string, args ...any) (rowsIter, error)
	queryTx(ctx context.Context, tx TTx, query string, args ...any) (rowsIter, error)
	// lockSuffix locks a selected row until the transaction ends; SQLite
	// needs none, its immediate transactions hold the write lock.
	lockSuffix() string
	// reclaim gives free pages back to the file system (SQLite; PostgreSQL's
	// autovacuum does its own).
	reclaim(ctx context.Context) error
	close()
}

type scanner interface{ Scan(dest ...any) error }

type rowsIter interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

// riverBackend is the queue on River, with one row per booking beside
// River's jobs to decide coalescing.
//
// River's unique jobs cannot express the rule we need: the states a unique
// job must cover include "running", so a webhook that meets a running sync
// would merge into it and its change could be missed. Instead the booking
// row names the job that is waiting (not started) for the booking, which
// new webhooks merge into, and the job that is running, which no second
// job for the booking may run beside. Both are read and written in the
// same transaction as River's own rows.
type riverBackend[TDriver riverdriver.Driver[TTx], TTx any] struct {
	driver TDriver
	db     dialect[TTx]
	q      *Engine
	// clientID names this instance to River (PostgreSQL: stable across
	// restarts, see instanceID); "" lets River choose.
	clientID string
	// client runs the workers; a reload that changes their settings swaps
	// in a new one while the old one finishes its jobs.
	client      atomic.Pointer[river.Client[TTx]]
	maxAttempts atomic.Int64
	settings    Settings // of client; the engine serialises restarts
	// dash is the read-only River UI on the current client.
	dash dashboards
	// group, when set, shares transactions between concurrent writes
	// (SQLite, see groupCommit).
	group *groupCommit[TTx]
	// wake, when set, tells this process's River client at once that jobs
	// were committed (SQLite; PostgreSQL has LISTEN/NOTIFY).
	wake func()
	// retiring are clients replaced by a restart, finishing their syncs.
	retiring sync.WaitGroup
	retired  sync.Map // *river.Client[TTx] -> struct{}
	// pruneFrom is where the next pruneEvents goes on.
	pruneMu   sync.Mutex
	pruneFrom int64
}

// workerSettings are the settings of the current client (engine.restartMu
// orders restarts).
func (b *riverBackend[TDriver, TTx]) workerSettings() Settings { return b.settings }

// cl is the current River client.
func (b *riverBackend[TDriver, TTx]) cl() *river.Client[TTx] { return b.client.Load() }

// restartWorkers starts a River client with the settings, then stops the
// previous one in the background: it fetches no new job and lets its
// running syncs run to their end (a sync is never cut short by a reload:
// import-bookings would go on with it while its retry started beside it).
// Every sync claims its booking first, so the two clients never run one
// booking at once.
func (b *riverBackend[TDriver, TTx]) restartWorkers(s Settings) error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	if err := b.ensureSlots(ctx, s.MaxInFlight); err != nil {
		return err
	}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &syncWorker[TDriver, TTx]{b: b, timeout: s.WorkerTimeout, maxInFlight: s.MaxInFlight}); err != nil {
		return err
	}
	cfg := newRiverConfig(s, b.q.rq.Driver, workers, b.q)
	cfg.ID = b.clientID
	c, err := river.NewClient(b.driver, cfg)
	if err != nil {
		return fmt.Errorf("creating queue client: %w", err)
	}
	// The client outlives the context of any one config: it is stopped
	// explicitly.
	if err := c.Start(context.Background()); err != nil {
		return fmt.Errorf("starting queue Workers: %w", err)
	}
	b.maxAttempts.Store(int64(s.MaxAttempts))
	prev := b.settings
	b.settings = s
	if old := b.client.Swap(c); old != nil {
		b.retired.Store(old, struct{}{})
		b.retiring.Go(func() {
			defer b.retired.Delete(old)
			stopClient(old, b.q, prev.WorkerTimeout+5*time.Second)
		})
	}
	return nil
}

// stopClient stops a River client, letting running syncs finish within
// timeout and cancelling the rest (they are retried).
func stopClient[TTx any](c *river.Client[TTx], e *Engine, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	err := c.Stop(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		err = c.StopAndCancel(cctx)
	}
	if err != nil {
		e.logger.Warn("stopping queue workers", zap.Error(e.scrubErr(err)))
	}
}

const createBookingTable = `CREATE TABLE IF NOT EXISTS receive_booking_booking (
	target_id      TEXT   NOT NULL,
	org            TEXT   NOT NULL,
	booking        TEXT   NOT NULL,
	event_type     TEXT   NOT NULL DEFAULT '',
	waiting_job_id BIGINT,
	running_job_id BIGINT,
	PRIMARY KEY (target_id, org, booking)
)`

// bookingColumns are added to a booking table made by an older version:
// the running attempt, and until when its call may still be running.
var bookingColumns = []string{"running_attempt BIGINT", "running_until BIGINT"}

// createWebhookIDTable holds the webhook-ids seen within the signature
// tolerance window, shared by every instance on the database.
const createWebhookIDTable = `CREATE TABLE IF NOT EXISTS receive_booking_webhook_id (
	id_hash    TEXT   NOT NULL PRIMARY KEY,
	expires_at BIGINT NOT NULL
)`

// createHealthTable holds the row health checks write, to prove that a
// write still commits.
const createHealthTable = `CREATE TABLE IF NOT EXISTS receive_booking_health (
	id         INTEGER NOT NULL PRIMARY KEY,
	checked_at BIGINT  NOT NULL
)`

// errNoSlot says every max_in_flight slot is taken.
var errNoSlot = errors.New("no free sync slot")

// claimMargin is added to worker_timeout in a claim's until, for clocks.
const claimMargin = 2 * time.Second

// createSlotTable holds the max_in_flight slots: a sync holds one while
// its call may be running (until), across every instance.
const createSlotTable = `CREATE TABLE IF NOT EXISTS receive_booking_slot (
	slot    INTEGER NOT NULL PRIMARY KEY,
	job_id  BIGINT,
	attempt BIGINT,
	until   BIGINT
)`

// createWaitingIndex counts an organization's waiting syncs (fairness).
const createWaitingIndex = `CREATE INDEX IF NOT EXISTS receive_booking_booking_waiting
	ON receive_booking_booking (org) WHERE waiting_job_id IS NOT NULL`

// ourTables are created after River's migrations.
var ourTables = []string{createBookingTable, createWebhookIDTable, createHealthTable, createSlotTable}

// migrateOurs creates our tables and adds the columns a newer version
// needs. exec runs one statement; a column that exists already is fine
// (SQLite has no ADD COLUMN IF NOT EXISTS).
func migrateOurs(driver string, exec func(string) error) error {
	for _, ddl := range append(ourTables, createEventTable[driver], createEventIndex) {
		if err := exec(ddl); err != nil {
			return fmt.Errorf("migrating queue: %w", err)
		}
	}
	for _, col := range bookingColumns {
		err := exec("ALTER TABLE receive_booking_booking ADD COLUMN " + col)
		if err != nil && !strings.Contains(strings.ToLower(err.Error()), "duplicate column") &&
			!strings.Contains(err.Error(), "already exists") {
			return fmt.Errorf("migrating queue: %w", err)
		}
	}
	if err := exec(createWaitingIndex); err != nil {
		return fmt.Errorf("migrating queue: %w", err)
	}
	return nil
}

// recordWebhookID inserts an id, or takes over an expired row; it returns
// a row only when the id was not live already.
const recordWebhookID = `INSERT INTO receive_booking_webhook_id (id_hash, expires_at) VALUES ($1, $2)
ON CONFLICT (id_hash) DO UPDATE SET expires_at = excluded.expires_at
	WHERE receive_booking_webhook_id.expires_at <= $3
RETURNING 1`

// Queries that ask whether a job is in a set of states.
const (
	jobIsMergeable = `SELECT count(*) FROM river_job WHERE id = $1 AND ` + mergeable
	jobIsRunning   = `SELECT count(*) FROM river_job WHERE id = $1 AND state = 'running'`
)

// mergeable says, of a river_job row, that a webhook may merge into it:
// it has not started, or it failed and will run again. A job leaves the
// booking's waiting slot before its sync starts, so "running" here is a
// job that River has fetched but not yet claimed the booking for, or one
// that has just failed and declared it will retry. A running job on its
// last attempt is not mergeable: River decides from the row it fetched
// that it will not run again if it fails, so a change merged into it could
// get no attempt of its own (the webhook makes a new job instead).
const mergeable = `(river_job.state IN ('available','scheduled','retryable','pending')
	OR (river_job.state = 'running' AND river_job.attempt < river_job.max_attempts))`

// renewAttempts gives the jobs a webhook merged into a fresh budget:
// maxAttempts attempts after their current one, so that every accepted
// change gets max_attempts attempts that start after it (a change merged
// into a job that had used all but one would otherwise get one). River
// reads max_attempts when it fetches a job, and never writes it back.
var renewAttempts = map[string]string{
	Postgres: `UPDATE river_job SET max_attempts = GREATEST(max_attempts, attempt + $2) WHERE id = ANY($1::bigint[])`,
	SQLite:   `UPDATE river_job SET max_attempts = max(max_attempts, attempt + $2) WHERE id IN (SELECT value FROM json_each($1))`,
}

// localWorkers is River's MaxWorkers: Workers, capped by MaxInFlight on
// SQLite (one instance: the cap is simply the number of workers).
func localWorkers(s Settings, driver string) int {
	if driver == SQLite && s.MaxInFlight > 0 {
		return min(s.Workers, s.MaxInFlight)
	}
	return s.Workers
}

func newRiverConfig(s Settings, driver string, workers *river.Workers, e *Engine) *river.Config {
	cfg := &river.Config{
		// River's own lines go through the engine's scrubber, under the
		// module's logger.
		Logger:     e.slogger("river"),
		Queues:     map[string]river.QueueConfig{riverQueueName: {MaxWorkers: localWorkers(s, driver)}},
		Workers:    workers,
		Middleware: []rivertype.Middleware{&windowStart{}},
		// New jobs are announced (PostgreSQL: LISTEN/NOTIFY; SQLite: in
		// this process, see wakeDriver), so a sender in auto mode does not
		// wait for a poll. Polling still finds jobs whose snooze (the
		// coalescing window, a busy booking) or retry time has come.
		// A fetch is a write transaction: at most one per cooldown.
		FetchCooldown:     time.Millisecond,
		FetchPollInterval: 100 * time.Millisecond,
		JobTimeout:        s.WorkerTimeout,
		// A sync that was running when a process died is run again once
		// it has been running longer than any sync may.
		RescueStuckJobsAfter: s.WorkerTimeout + finishAllowance + 15*time.Second,
		MaxAttempts:          s.MaxAttempts,
		RetryPolicy:          retryPolicy{},
		// Finished jobs are the operator's history, kept with their
		// bookings' timelines as the config says (see Settings).
		CompletedJobRetentionPeriod: s.retention().completed,
		CancelledJobRetentionPeriod: s.retention().cancelled,
		DiscardedJobRetentionPeriod: s.retention().discarded,
	}
	if driver == Postgres {
		cfg.FetchCooldown = 20 * time.Millisecond
	}
	return cfg
}

// insertBatch records a batch of webhooks in one transaction. Webhooks are
// grouped by booking: a group merges into the booking's waiting sync if it
// has one, or else becomes one new job; all new jobs are inserted with one
// statement.
func (b *riverBackend[TDriver, TTx]) insertBatch(ctx context.Context, batch []*Entry) error {
	var fresh [][]*Entry
	err := b.write(ctx, func(ctx context.Context, tx TTx) error {
		groups := groupByBooking(batch)
		// Lock booking rows in one global order, so that two batches committing
		// at once (PostgreSQL) never wait on each other in a cycle.
		slices.SortFunc(groups, func(x, y []*Entry) int {
			a, b := x[0], y[0]
			return cmp.Or(strings.Compare(a.Route, b.Route), strings.Compare(a.Webhook.OrganizationID, b.Webhook.OrganizationID),
				strings.Compare(a.Webhook.BookingKey, b.Webhook.BookingKey))
		})
		var err error
		if fresh, err = b.mergeGroups(ctx, tx, groups); err != nil {
			return err
		}
		if err := b.insertJobs(ctx, tx, fresh); err != nil {
			return err
		}
		return b.writeEvents(ctx, tx, webhookEvents(batch))
	})
	if err != nil {
		return err
	}
	now := time.Now()
	for _, g := range fresh {
		if !g[0].NotBefore.After(now) {
			b.announce() // a job to run now; those in a window are polled for
			break
		}
	}
	return nil
}

// windowStart makes a job inside its coalescing window available from the
// window's end, as River keeps a short snooze: fetched then, rather than
// at once only to be snoozed (a fetch and a state change per job, a third
// of the workers' database work in async mode).
type windowStart struct {
	river.MiddlewareDefaults
}

func (*windowStart) InsertMany(ctx context.Context, params []*rivertype.JobInsertParams,
	doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	now := time.Now()
	for _, p := range params {
		if a, ok := p.Args.(Args); ok && p.State == rivertype.JobStateAvailable && a.NotBefore.After(now) {
			at := a.NotBefore
			p.ScheduledAt = &at
		}
	}
	return doInner(ctx)
}

// write runs fn in a transaction: a shared one on SQLite (group commit),
// its own on PostgreSQL, where connections write side by side and one
// transaction holding several bookings' row locks could deadlock with
// another instance's.
func (b *riverBackend[TDriver, TTx]) write(ctx context.Context, fn func(context.Context, TTx) error) error {
	return b.writeOpts(ctx, false, fn)
}

// writeOpts is write; relaxed allows a commit that is not synced to disk
// at once (SQLite; see groupCommit).
func (b *riverBackend[TDriver, TTx]) writeOpts(ctx context.Context, relaxed bool, fn func(context.Context, TTx) error) error {
	if b.group != nil {
		return b.group.do(ctx, relaxed, fn)
	}
	tx, err := b.db.begin(ctx)
	if err != nil {
		return err
	}
	defer b.db.rollback(ctx, tx)
	if err := fn(ctx, tx); err != nil {
		return err
	}
	return b.db.commit(ctx, tx)
}

// announce wakes the workers for jobs just committed.
func (b *riverBackend[TDriver, TTx]) announce() {
	if b.wake != nil {
		b.wake()
	}
}

// groupByBooking groups webhooks by booking, in order of first arrival.
func groupByBooking(batch []*Entry) [][]*Entry {
	type key struct {
		route   string
		booking payload.Key
	}
	index := make(map[key]int, len(batch))
	var groups [][]*Entry
	for _, r := range batch {
		k := key{r.Route, r.Webhook.Key()}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	return groups
}

// insertJobs inserts one job for each group and makes it the booking's
// waiting sync; later webhooks of a group merge into it.
func (b *riverBackend[TDriver, TTx]) insertJobs(ctx context.Context, tx TTx, groups [][]*Entry) error {
	if len(groups) == 0 {
		return nil
	}
	params := make([]river.InsertManyParams, len(groups))
	waiting, err := b.waitingByOrg(ctx, tx, groups)
	if err != nil {
		return err
	}
	maxAttempts := int(b.maxAttempts.Load())
	for i, g := range groups {
		r, last := g[0], g[len(g)-1]
		org := r.Webhook.OrganizationID
		opts := &river.InsertOpts{MaxAttempts: maxAttempts, Priority: fairPriority(waiting[org])}
		waiting[org]++
		params[i] = river.InsertManyParams{InsertOpts: opts, Args: Args{
			Route: r.Route, BookingID: last.Webhook.BookingID, BookingKey: r.Webhook.BookingKey,
			OrganizationID: r.Webhook.OrganizationID, OrganizationIDJSON: r.Webhook.OrganizationIDJSON, EventType: last.Webhook.EventType,
			AcceptedAt: r.AcceptedAt.UTC(), NotBefore: r.NotBefore.UTC(), Trace: r.Trace,
		}}
	}
	res, err := b.cl().InsertManyTx(ctx, tx, params)
	if err != nil {
		return fmt.Errorf("inserting jobs: %w", err)
	}
	for i, g := range groups {
		id := res[i].Job.ID
		for j, r := range g {
			r.JobID, r.Coalesced = id, j > 0
			b.addWaiter(r)
		}
	}
	return b.setWaitingGroups(ctx, tx, groups)
}

// fairPriority is a new sync's River priority (1 runs first) from how many
// syncs its organization already has waiting: an organization's first few
// run at once, and a backlog (a bulk change in EventFlow) sinks below
// every other organization's new webhooks. River fetches by priority,
// then by time, so one organization's thousands of queued syncs hold back
// another's webhook by at most a few syncs.
func fairPriority(waiting int) int {
	// fairPriorityCap must stay the last threshold below.
	switch {
	case waiting < 3:
		return 1
	case waiting < 30:
		return 2
	case waiting < fairPriorityCap:
		return 3
	}
	return 4
}

// fairPriorityCap is where fairPriority reaches its lowest priority.
const fairPriorityCap = 300

// waitingByOrg counts, for each organization of the groups, its bookings
// with a sync waiting (an index covers it), up to fairPriority's last
// step: beyond it the priority no longer changes, and a bulk change's
// backlog of thousands need not be counted for every batch.
func (b *riverBackend[TDriver, TTx]) waitingByOrg(ctx context.Context, tx TTx, groups [][]*Entry) (map[string]int, error) {
	out := make(map[string]int)
	for _, g := range groups {
		org := g[0].Webhook.OrganizationID
		if _, done := out[org]; done {
			continue
		}
		var n int
		if err := b.db.queryRow(ctx, tx, `SELECT count(*) FROM (SELECT 1 FROM receive_booking_booking
			WHERE org = $1 AND waiting_job_id IS NOT NULL LIMIT $2) AS w`, org, fairPriorityCap).Scan(&n); err != nil {
			return nil, fmt.Errorf("counting waiting syncs: %w", err)
		}
		out[org] = n
	}
	return out, nil
}

// addWaiter registers a waiting sender for its job's next attempt. It runs
// inside the recording transaction: the job cannot be claimed before the
// commit, so the attempt that answers the sender starts after its webhook
// was recorded. A failed commit withdraws the waiter (commitBatch).
func (b *riverBackend[TDriver, TTx]) addWaiter(r *Entry) {
	if r.Wait != nil {
		b.q.waiters.add(r.JobID, r.Wait, r.mark)
	}
}

func (b *riverBackend[TDriver, TTx]) setWaiting(ctx context.Context, tx TTx, target, org, booking string, id int64) error {
	return b.db.exec(ctx, tx, `UPDATE receive_booking_booking SET waiting_job_id = $1
		WHERE target_id = $2 AND org = $3 AND booking = $4`, id, target, org, booking)
}

func (b *riverBackend[TDriver, TTx]) jobInStates(ctx context.Context, tx TTx, id int64, query string) (bool, error) {
	var n int
	if err := b.db.queryRow(ctx, tx, query, id).Scan(&n); err != nil {
		return false, fmt.Errorf("reading job state: %w", err)
	}
	return n > 0, nil
}

// bookingRow is a booking's coalescing state.
type bookingRow struct {
	eventType string
	waiting   sql.NullInt64
	running   sql.NullInt64
	// attempt is the running job's attempt; until is when its call may
	// have run at the latest (unix nanoseconds).
	attempt sql.NullInt64
	until   sql.NullInt64
}

// holds reports whether the row's running claim belongs to this attempt.
func (r *bookingRow) holds(job *river.Job[Args]) bool {
	return r.running.Valid && r.running.Int64 == job.ID && r.attempt.Valid && r.attempt.Int64 == int64(job.Attempt)
}

func (b *riverBackend[TDriver, TTx]) lockBooking(ctx context.Context, tx TTx, a *Args) (*bookingRow, error) {
	// The row may be gone (a job replayed by an operator after its row
	// was cleaned up): recreate it.
	if err := b.db.exec(ctx, tx, `INSERT INTO receive_booking_booking (target_id, org, booking, event_type)
		VALUES ($1, $2, $3, $4) ON CONFLICT (target_id, org, booking) DO NOTHING`,
		a.route(), a.OrganizationID, a.BookingKey, a.EventType); err != nil {
		return nil, fmt.Errorf("recording booking: %w", err)
	}
	return b.readBooking(ctx, tx, a)
}

// readBooking reads and locks a booking's row; a row that is gone reads
// as one that nothing waits for or runs.
func (b *riverBackend[TDriver, TTx]) readBooking(ctx context.Context, tx TTx, a *Args) (*bookingRow, error) {
	row := &bookingRow{}
	err := b.db.queryRow(ctx, tx, `SELECT event_type, waiting_job_id, running_job_id, running_attempt, running_until
		FROM receive_booking_booking WHERE target_id = $1 AND org = $2 AND booking = $3`+b.db.lockSuffix(),
		a.route(), a.OrganizationID, a.BookingKey).Scan(&row.eventType, &row.waiting, &row.running, &row.attempt, &row.until)
	if errors.Is(err, sql.ErrNoRows) || errors.Is(err, pgx.ErrNoRows) {
		return row, nil
	}
	if err != nil {
		return nil, fmt.Errorf("locking booking: %w", err)
	}
	return row, nil
}

// claim makes job the booking's running sync, unless another sync of the
// booking is running (then it must wait). It takes the job out of the
// waiting slot, so that webhooks from now on cause a new sync after it.
// It returns the latest event type seen for the booking, and on
// PostgreSQL the claim's number (see waiters), taken under the booking's
// row lock.
func (b *riverBackend[TDriver, TTx]) claim(ctx context.Context, job *river.Job[Args], workerTimeout time.Duration, maxInFlight int) (c claimed, ok bool, err error) {
	err = b.write(ctx, func(ctx context.Context, tx TTx) error {
		row, err := b.lockBooking(ctx, tx, &job.Args)
		if err != nil {
			return err
		}
		if row.running.Valid && !row.holds(job) {
			// Another sync holds the booking: busy while its call may still be
			// running (until its worker_timeout and the time to record it have
			// passed, even if its process died or River rescued it: import-
			// bookings goes on without its caller), or while River says it
			// runs (rows from before running_until was kept).
			if row.until.Valid && time.Now().UnixNano() < row.until.Int64 {
				return errBusy
			}
			if !row.until.Valid && row.running.Int64 != job.ID {
				busy, err := b.jobInStates(ctx, tx, row.running.Int64, jobIsRunning)
				if err != nil {
					return err
				}
				if busy {
					return errBusy
				}
			}
		}
		// The call is bounded by the job's timeout (River cancels it then);
		// recording its outcome may take longer, but a newer claim makes that
		// recording stale, which finish handles.
		until := time.Now().Add(workerTimeout + claimMargin).UnixNano()
		got, err := b.takeSlot(ctx, tx, job, until, maxInFlight)
		if err != nil {
			return err
		}
		if !got {
			return errNoSlot
		}
		args := []any{job.ID, job.Args.route(), job.Args.OrganizationID, job.Args.BookingKey, job.Attempt, until}
		if b.q.rq.Driver == Postgres {
			err = b.db.queryRow(ctx, tx, claimBooking+` RETURNING nextval('receive_booking_claim_seq')`, args...).Scan(&c.number)
		} else {
			err = b.db.exec(ctx, tx, claimBooking, args...)
		}
		if err != nil {
			return fmt.Errorf("claiming booking: %w", err)
		}
		c.eventType = row.eventType
		return nil
	})
	if errors.Is(err, errBusy) {
		return claimed{}, false, nil
	}
	if err != nil {
		return claimed{}, false, err
	}
	return c, true, nil
}

// claimed is what a claim tells its attempt: the booking's latest event
// type, and the claim's number (PostgreSQL; 0 on SQLite).
type claimed struct {
	eventType string
	number    int64
}

// claimBooking makes a job the booking's running sync and takes it out of
// the waiting slot.
const claimBooking = `UPDATE receive_booking_booking SET running_job_id = $1, running_attempt = $5, running_until = $6,
	waiting_job_id = CASE WHEN waiting_job_id = $1 THEN NULL ELSE waiting_job_id END
	WHERE target_id = $2 AND org = $3 AND booking = $4`

// errBusy undoes a claim whose booking another sync holds.
var errBusy = errors.New("booking busy")

// takeSlot takes one of the maxInFlight slots shared by every instance
// (PostgreSQL), or reports that all are held by calls that may be running.
// SQLite needs none: one instance, whose workers are capped instead.
func (b *riverBackend[TDriver, TTx]) takeSlot(ctx context.Context, tx TTx, job *river.Job[Args], until int64, maxInFlight int) (bool, error) {
	if maxInFlight <= 0 || b.q.rq.Driver != Postgres {
		return true, nil
	}
	var slot int
	err := b.db.queryRow(ctx, tx, `SELECT slot FROM receive_booking_slot
		WHERE slot <= $1 AND (job_id IS NULL OR until < $2 OR (job_id = $3 AND attempt = $4))
		ORDER BY slot LIMIT 1 FOR UPDATE SKIP LOCKED`, maxInFlight, time.Now().UnixNano(), job.ID, job.Attempt).Scan(&slot)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("taking a sync slot: %w", err)
	}
	return true, b.db.exec(ctx, tx, `UPDATE receive_booking_slot SET job_id = $1, attempt = $2, until = $3 WHERE slot = $4`,
		job.ID, job.Attempt, until, slot)
}

// ensureSlots creates the slots 1..n (PostgreSQL).
func (b *riverBackend[TDriver, TTx]) ensureSlots(ctx context.Context, n int) error {
	if n <= 0 || b.q.rq.Driver != Postgres {
		return nil
	}
	return b.execPool(ctx, `INSERT INTO receive_booking_slot (slot) SELECT generate_series(1, $1::int) ON CONFLICT (slot) DO NOTHING`, n)
}

// slogger is a log/slog logger for River's code (the client, River UI):
// its lines go through the engine's scrubber to the module's logger, under
// the sub-logger name.
func (e *Engine) slogger(name string) *slog.Logger {
	return slog.New(scrubHandler{zapslog.NewHandler(e.logger.Core(), zapslog.WithName(e.logger.Name()+"."+name)), &e.scrub})
}

// scrubHandler passes River's log records through the engine's scrubber:
// an error River logs may quote an upstream answer or a connection string.
type scrubHandler struct {
	slog.Handler
	s *scrub.Scrubber
}

func (h scrubHandler) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, h.s.String(r.Message), r.PC)
	r.Attrs(func(a slog.Attr) bool {
		out.AddAttrs(h.scrubAttr(a))
		return true
	})
	return h.Handler.Handle(ctx, out)
}

func (h scrubHandler) scrubAttr(a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindString:
		return slog.String(a.Key, h.s.String(v.String()))
	case slog.KindGroup:
		attrs := v.Group()
		out := make([]any, len(attrs))
		for i, g := range attrs {
			out[i] = h.scrubAttr(g)
		}
		return slog.Group(a.Key, out...)
	case slog.KindAny:
		if err, ok := v.Any().(error); ok {
			return slog.String(a.Key, h.s.String(err.Error()))
		}
		return slog.String(a.Key, h.s.String(v.String()))
	}
	return a
}

func (h scrubHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	out := make([]slog.Attr, len(attrs))
	for i, a := range attrs {
		out[i] = h.scrubAttr(a)
	}
	return scrubHandler{h.Handler.WithAttrs(out), h.s}
}

func (h scrubHandler) WithGroup(name string) slog.Handler {
	return scrubHandler{h.Handler.WithGroup(name), h.s}
}

// finish releases the booking after a job's attempt: on a retriable
// failure the job goes back to the waiting slot (webhooks merge into its
// retry), unless a newer job already waits for the booking, which then
// carries the sync and this one completes as superseded. It returns the
// error River should record (River's completer then records the job's
// state, in batches), or the database's error. If the process dies
// between the two, the job is still running to River and runs again once
// its call can no longer be running: a sync repeated, none lost. The
// attempt's event joins the booking's timeline in the same transaction.
// note, if set, is the attempt's outcome for senders waiting on other
// instances (PostgreSQL): published in the same transaction, so it is sent
// once, when the outcome is recorded.
func (b *riverBackend[TDriver, TTx]) finish(ctx context.Context, job *river.Job[Args], at *attempt, note []byte) (record, err error) {
	// A finish need not reach the disk before the next durable commit: if
	// power fails first, the job is still running in River's (durable)
	// fetch and the booking still claimed, so it runs again once its call
	// can no longer be running; a sync repeated, none lost or overlapped.
	err = b.writeOpts(ctx, true, func(ctx context.Context, tx TTx) error {
		var err error
		var fate string
		if record, fate, err = b.finishTx(ctx, tx, job, at.jobErr); err != nil {
			return err
		}
		if err := b.writeEvents(ctx, tx, []eventRow{attemptEvent(job, at, fate)}); err != nil {
			return err
		}
		return b.publish(ctx, tx, note)
	})
	if err != nil {
		return nil, err
	}
	return record, nil
}

// finishTx releases the booking; fate is ResultStale or ResultSuperseded
// when the attempt's own outcome did not decide the job's.
func (b *riverBackend[TDriver, TTx]) finishTx(ctx context.Context, tx TTx, job *river.Job[Args], jobErr error) (record error, fate string, err error) {
	// The claim made the row, and nothing removes a row while a sync
	// runs: read it (a missing row reads as a claim passed on).
	row, err := b.readBooking(ctx, tx, &job.Args)
	if err != nil {
		return nil, "", err
	}
	a := &job.Args
	if !row.holds(job) {
		// A stale attempt (River rescued it, and a newer attempt holds
		// the booking now): leave the row to the newer one, and let the
		// job be retried rather than reported done.
		b.q.logger.Warn("sync finished after its claim passed to a newer attempt", zap.Int64("job_id", job.ID), zap.Int("attempt", job.Attempt))
		if jobErr == nil || isCancel(jobErr) {
			return errors.New("stale attempt: the booking is claimed by a newer one"), ResultStale, nil
		}
		return jobErr, ResultStale, nil
	}
	retriable := jobErr != nil && !isCancel(jobErr)
	superseded := retriable && row.waiting.Valid && row.waiting.Int64 != job.ID
	if superseded {
		if superseded, err = b.jobInStates(ctx, tx, row.waiting.Int64, jobIsMergeable); err != nil {
			return nil, "", err
		}
	}
	// A job that will retry takes the waiting slot back; on its last
	// attempt it will be discarded, so it does not.
	backToWaiting := 0
	if retriable && !superseded && job.Attempt < job.MaxAttempts {
		backToWaiting = 1
	}
	if backToWaiting == 0 && !row.waiting.Valid {
		// Released, nothing waits: the row goes (the next webhook makes
		// it again).
		if err := b.db.exec(ctx, tx, `DELETE FROM receive_booking_booking WHERE target_id = $1 AND org = $2 AND booking = $3`,
			a.route(), a.OrganizationID, a.BookingKey); err != nil {
			return nil, "", fmt.Errorf("releasing booking: %w", err)
		}
	} else {
		err = b.db.exec(ctx, tx, `UPDATE receive_booking_booking SET
			waiting_job_id = CASE WHEN $5 = 1 THEN $1 ELSE waiting_job_id END,
			running_job_id = NULL, running_attempt = NULL, running_until = NULL
			WHERE target_id = $2 AND org = $3 AND booking = $4`, job.ID, a.route(), a.OrganizationID, a.BookingKey, backToWaiting)
		if err != nil {
			return nil, "", fmt.Errorf("releasing booking: %w", err)
		}
	}
	// Slots exist on PostgreSQL only (takeSlot).
	if b.q.rq.Driver == Postgres {
		if err := b.db.exec(ctx, tx, `UPDATE receive_booking_slot SET job_id = NULL, attempt = NULL, until = NULL
			WHERE job_id = $1 AND attempt = $2`, job.ID, job.Attempt); err != nil {
			return nil, "", fmt.Errorf("releasing sync slot: %w", err)
		}
	}
	if superseded {
		return nil, ResultSuperseded, nil // the newer job carries the sync; logged by the worker
	}
	return jobErr, "", nil
}

func isCancel(err error) bool {
	var c *rivertype.JobCancelError
	return errors.As(err, &c)
}

func (b *riverBackend[TDriver, TTx]) stats(ctx context.Context) (*Stats, error) {
	counts, err := b.countByState(ctx)
	if err != nil {
		return nil, fmt.Errorf("counting jobs: %w", err)
	}
	s := &Stats{Counts: counts}
	if b.q.rq.Driver == SQLite {
		// Jobs are created in id order: the first pending one by id is
		// the oldest. River's list sorts every pending job for it (half a
		// second with a million queued, on the only connection).
		rows, err := b.db.queryRows(ctx, oldestPendingSQLite, riverQueueName)
		if err != nil {
			return nil, fmt.Errorf("finding oldest job: %w", err)
		}
		var created sql.NullFloat64
		if rows.Next() {
			err = rows.Scan(&created)
		}
		rows.Close()
		if err = cmp.Or(err, rows.Err()); err != nil {
			return nil, fmt.Errorf("finding oldest job: %w", err)
		}
		if created.Valid {
			s.OldestPendingSeconds = max(float64(time.Now().UnixMicro())/1e6-created.Float64, 0)
		}
		return s, b.lastSync(ctx, s)
	}
	// The rows are closed by now: on SQLite the one connection is free.
	oldest, err := b.cl().JobList(ctx, river.NewJobListParams().Queues(riverQueueName).
		States(rivertype.JobStateAvailable, rivertype.JobStateRetryable, rivertype.JobStateScheduled, rivertype.JobStateRunning).
		OrderBy(river.JobListOrderByID, river.SortOrderAsc).First(1))
	if err != nil {
		return nil, fmt.Errorf("finding oldest job: %w", err)
	}
	if len(oldest.Jobs) > 0 {
		s.OldestPendingSeconds = time.Since(oldest.Jobs[0].CreatedAt).Seconds()
	}
	return s, b.lastSync(ctx, s)
}

// lastSync sets the last successful sync of any instance sharing the
// queue (an index on state and finalized_at covers it).
func (b *riverBackend[TDriver, TTx]) lastSync(ctx context.Context, s *Stats) error {
	last, err := b.cl().JobList(ctx, river.NewJobListParams().Queues(riverQueueName).
		States(rivertype.JobStateCompleted).OrderBy(river.JobListOrderByFinalizedAt, river.SortOrderDesc).First(1))
	if err != nil {
		return fmt.Errorf("finding last sync: %w", err)
	}
	if len(last.Jobs) > 0 && last.Jobs[0].FinalizedAt != nil {
		t := last.Jobs[0].FinalizedAt.UTC()
		s.LastSyncAt = &t
	}
	return nil
}

func (b *riverBackend[TDriver, TTx]) countByState(ctx context.Context) (map[string]int64, error) {
	rows, err := b.db.queryRows(ctx, countQuery(b.q.rq.Driver), riverQueueName)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := make(map[string]int64, len(StatsStates))
	for _, st := range StatsStates {
		counts[st] = 0
	}
	for rows.Next() {
		var state string
		var n int64
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		counts[state] = n
	}
	return counts, rows.Err()
}

func (b *riverBackend[TDriver, TTx]) ListJobs(ctx context.Context, states []rivertype.JobState, limit int, after int64, bookingKey string) ([]*rivertype.JobRow, error) {
	p := river.NewJobListParams().Queues(riverQueueName).States(states...).
		OrderBy(river.JobListOrderByID, river.SortOrderAsc).First(limit)
	if after > 0 {
		p = p.Where("id > @after", river.NamedArgs{"after": after})
	}
	if bookingKey != "" {
		p = p.Where(jsonArgExpr(b.q.rq.Driver, "booking_key")+" = @booking", river.NamedArgs{"booking": bookingKey})
	}
	res, err := b.cl().JobList(ctx, p)
	if err != nil {
		return nil, err
	}
	return res.Jobs, nil
}

// jsonArgExpr reads a field of a job's args in SQL.
func jsonArgExpr(driver, field string) string {
	if driver == SQLite {
		return "args ->> '$." + field + "'"
	}
	return "args ->> '" + field + "'"
}

func (b *riverBackend[TDriver, TTx]) GetJob(ctx context.Context, id int64) (*rivertype.JobRow, error) {
	return b.cl().JobGet(ctx, id)
}

// DeleteJob drops a job and the timeline events it keeps.
func (b *riverBackend[TDriver, TTx]) DeleteJob(ctx context.Context, id int64) (*rivertype.JobRow, error) {
	var job *rivertype.JobRow
	err := b.write(ctx, func(ctx context.Context, tx TTx) error {
		var err error
		if job, err = b.cl().JobDeleteTx(ctx, tx, id); err != nil {
			return err
		}
		return b.dropEvents(ctx, tx, job)
	})
	if err != nil {
		return nil, err
	}
	return job, nil
}

// replayJob runs a finished job again, by the coalescing rule: when the
// booking already has a waiting sync, the replay merges into it (and the
// old job is deleted, its work being done by that sync); otherwise the job
// itself becomes available again, keeping its history.
func (b *riverBackend[TDriver, TTx]) ReplayJob(ctx context.Context, id int64) (*ReplayResult, error) {
	job, err := b.cl().JobGet(ctx, id)
	if err != nil {
		return nil, err
	}
	var args Args
	if err := json.Unmarshal(job.EncodedArgs, &args); err != nil {
		return nil, fmt.Errorf("reading job args: %w", err)
	}
	res := &ReplayResult{JobID: id}
	err = b.write(ctx, func(ctx context.Context, tx TTx) error {
		// Check the state inside the transaction: River's retry leaves a
		// running job as it is, and a running job must never take the
		// booking's waiting slot (a webhook would merge into a sync that
		// has already read the booking).
		var state string
		if err := b.db.queryRow(ctx, tx, `SELECT state FROM river_job WHERE id = $1`+b.db.lockSuffix(), id).Scan(&state); err != nil {
			return fmt.Errorf("reading job state: %w", err)
		}
		if !ReplayableStates[rivertype.JobState(state)] {
			return ErrNotReplayable
		}
		row, err := b.lockBooking(ctx, tx, &args)
		if err != nil {
			return err
		}
		if row.waiting.Valid && row.waiting.Int64 != id {
			merge, err := b.jobInStates(ctx, tx, row.waiting.Int64, jobIsMergeable)
			if err != nil {
				return err
			}
			if merge {
				if _, err := b.cl().JobDeleteTx(ctx, tx, id); err != nil {
					return err
				}
				res.JobID, res.Coalesced = row.waiting.Int64, true
				if err := b.handOverEvents(ctx, tx, &args, id, res.JobID); err != nil {
					return err
				}
				if err := b.writeEvents(ctx, tx, []eventRow{replayEvent(&args, id, res)}); err != nil {
					return err
				}
				// The replayed change gets a full budget in the job it
				// joins, as a webhook's does.
				return b.renewAttempts(ctx, tx, []int64{row.waiting.Int64})
			}
		}
		if _, err := b.cl().JobRetryTx(ctx, tx, id); err != nil {
			return err
		}
		// A replay gets a fresh budget: max_attempts more attempts from
		// now, whatever the job used before.
		if err := b.db.exec(ctx, tx, `UPDATE river_job SET max_attempts = attempt + $2 WHERE id = $1`,
			id, b.maxAttempts.Load()); err != nil {
			return fmt.Errorf("renewing attempts: %w", err)
		}
		if err := b.writeEvents(ctx, tx, []eventRow{replayEvent(&args, id, res)}); err != nil {
			return err
		}
		return b.setWaiting(ctx, tx, args.route(), args.OrganizationID, args.BookingKey, id)
	})
	if err != nil {
		return nil, err
	}
	if !res.Coalesced {
		b.announce()
	}
	return res, nil
}

// close stops the workers (in-flight syncs that take too long are
// cancelled, and run again at the next start) and closes the database.
func (b *riverBackend[TDriver, TTx]) close(context.Context) error {
	var wg sync.WaitGroup
	if c := b.client.Swap(nil); c != nil {
		wg.Go(func() { stopClient(c, b.q, stopTimeout) })
	}
	// Clients still finishing after a restart are cut short too: the
	// database goes away now. Their syncs run again at the next start.
	b.retired.Range(func(k, _ any) bool {
		old := k.(*river.Client[TTx])
		wg.Go(func() { stopClient(old, b.q, time.Second) })
		return true
	})
	wg.Wait()
	b.retiring.Wait()
	if b.group != nil {
		b.group.close()
	}
	b.closeDashboard()
	b.db.close()
	return nil
}

// probe commits a one-row write, as recording a webhook would.
func (b *riverBackend[TDriver, TTx]) probe(ctx context.Context) error {
	return b.write(ctx, func(ctx context.Context, tx TTx) error {
		return b.db.exec(ctx, tx, `INSERT INTO receive_booking_health (id, checked_at) VALUES (1, $1)
			ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at`, time.Now().UnixNano())
	})
}

func (b *riverBackend[TDriver, TTx]) ReplaySeen(ctx context.Context, key string, now, expires time.Time) (bool, error) {
	rows, err := b.db.queryRows(ctx, recordWebhookID, key, expires.UnixNano(), now.UnixNano())
	if err != nil {
		return false, err
	}
	defer rows.Close()
	inserted := rows.Next()
	return !inserted, rows.Err()
}

func (b *riverBackend[TDriver, TTx]) ReplayForget(ctx context.Context, key string) error {
	return b.execPool(ctx, `DELETE FROM receive_booking_webhook_id WHERE id_hash = $1`, key)
}

func (b *riverBackend[TDriver, TTx]) prune(ctx context.Context, now time.Time) error {
	return b.execPool(ctx, `DELETE FROM receive_booking_webhook_id WHERE expires_at <= $1`, now.UnixNano())
}

func (b *riverBackend[TDriver, TTx]) reclaim(ctx context.Context) error { return b.db.reclaim(ctx) }

// execPool runs a statement outside any transaction.
func (b *riverBackend[TDriver, TTx]) execPool(ctx context.Context, query string, args ...any) error {
	rows, err := b.db.queryRows(ctx, query, args...)
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}

// rebindSQLite turns PostgreSQL's $1 placeholders into SQLite's ?1.
func rebindSQLite(q string) string {
	return strings.ReplaceAll(q, "$", "?")
}

// ReplayableStates are the states of jobs that may be replayed: failed,
// or waiting for their next attempt (a replay runs it now).
var ReplayableStates = map[rivertype.JobState]bool{
	rivertype.JobStateDiscarded: true, rivertype.JobStateCancelled: true, rivertype.JobStateRetryable: true,
}

// ErrNotReplayable says a job left the replayable states.
var ErrNotReplayable = errors.New("job not in a replayable state")

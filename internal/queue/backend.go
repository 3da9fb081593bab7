package queue

// The queue on one database: what the engine asks of it (intake, JobStore,
// ReplayMemory), and riverBackend, which does it on River for SQLite and
// PostgreSQL alike through their dialect (dialect.go): transactions
// (shared ones on SQLite, group.go), the health probe.

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
)

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
	dashboard(prefix string, hideArgs bool) (http.Handler, error)
	// recordAnswers writes answers to booking timelines.
	recordAnswers(ctx context.Context, rows []eventRow) error
	// pruneEvents drops timeline events whose job is gone, among those
	// written before horizon.
	pruneEvents(ctx context.Context, horizon time.Time) error
	// reclaim gives free space back to the file system (SQLite).
	reclaim(ctx context.Context) error
	// pause, resume and pauses keep operators' pauses (pause.go).
	pause(ctx context.Context, p Pause) (bool, error)
	resume(ctx context.Context, route, org string) (int64, error)
	pauses(ctx context.Context) ([]Pause, error)
	close(ctx context.Context) error
}

// JobStore is the queue as the admin API sees it.
type JobStore interface {
	ListJobs(ctx context.Context, p ListParams) ([]*Job, error)
	GetJob(ctx context.Context, id int64) (*Job, error)
	ReplayJob(ctx context.Context, id int64) (*ReplayResult, error)
	DeleteJob(ctx context.Context, id int64) (*Job, error)
	// BookingEvents, BookingOrganizations and JobsByID read booking
	// timelines (timeline.go).
	BookingEvents(ctx context.Context, org, booking string, limit int) ([]Event, error)
	BookingOrganizations(ctx context.Context, booking string) ([]string, error)
	JobsByID(ctx context.Context, ids []int64) ([]*Job, error)
}

// ReplayMemory is the webhook-id store of signed webhooks, shared by the
// instances on one database.
type ReplayMemory interface {
	// ReplaySeen records a webhook-id (hashed) until expires, and reports
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

// riverBackend is the queue on River, with one row per booking beside
// River's jobs that decides coalescing and keeps one sync per booking
// (gate.go). What differs between the databases is its dialect's.
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

// probe commits a one-row write, as recording a webhook would.
func (b *riverBackend[TDriver, TTx]) probe(ctx context.Context) error {
	return b.write(ctx, func(ctx context.Context, tx TTx) error {
		return b.db.exec(ctx, tx, `INSERT INTO receive_booking_health (id, checked_at) VALUES (1, $1)
			ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at`, time.Now().UnixNano())
	})
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

package queue

// A queue's configuration: the database it runs on (Config, the drivers
// the engine knows), the settings a reload may change, the defaults.

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
)

const (
	// SQLite and Postgres are the drivers.
	SQLite   = "sqlite"
	Postgres = "postgres"

	// DefaultWorkers is how many syncs an instance runs at once.
	DefaultWorkers = 10
	// DefaultMaxAttempts is how many times a sync is tried.
	DefaultMaxAttempts = 10
	// DefaultWorkerTimeout bounds one queued sync. It exceeds the longest
	// an Edge Function may run (150 s, 400 s on paid plans), so a sync
	// given up on locally has stopped upstream too.
	DefaultWorkerTimeout = 420 * time.Second
	// DefaultMaxInFlight caps the syncs running at once across the
	// instances sharing a PostgreSQL queue: the Edge Function this module
	// replaces made at most 3 calls at once, and a bulk change in EventFlow
	// must not become instances × workers concurrent import-bookings runs.
	DefaultMaxInFlight = 3
	// DefaultHoldBudget is how long a sync is held, while import-bookings
	// answers that it has paused mutating syncs, before its answers spend
	// attempts again: a day, long enough for an operator's pause upstream
	// to outlast a weekend's night, short enough that a forgotten switch
	// ends in the dead letter, where it shows.
	DefaultHoldBudget = 24 * time.Hour
	// DefaultRoute is the route of handlers that name none.
	DefaultRoute = "default"

	// How long finished jobs, and with them their bookings' timelines,
	// are kept by default: completed ones a day, cancelled ones (a final
	// answer) a week, discarded ones (out of attempts: the dead letter) a
	// month.
	DefaultRetentionCompleted = 24 * time.Hour
	DefaultRetentionCancelled = 7 * 24 * time.Hour
	DefaultRetentionDiscarded = 30 * 24 * time.Hour

	// maxBatch bounds how many webhooks share one commit.
	maxBatch = 256
	// statsInterval is how often expired webhook-ids are pruned.
	statsInterval = 10 * time.Second
	// stopTimeout bounds how long in-flight syncs may run on shutdown
	// before they are cancelled (and run again at the next start).
	stopTimeout = 10 * time.Second
	// connectTimeout bounds one attempt to open the database; reconnects
	// back off from reconnectMin to reconnectMax.
	connectTimeout = 15 * time.Second
	reconnectMin   = 500 * time.Millisecond
	reconnectMax   = 15 * time.Second
)

// Config names one queue's database and its worker settings.
type Config struct {
	Driver   string // SQLite or Postgres
	Location string // the file's path, or the DSN
	// DataDir is this instance's own data directory (Caddy's): with the
	// host name it names the instance to River on a shared database, the
	// same across restarts, so that it can take back its own interrupted
	// syncs at once.
	DataDir string
	Settings
}

// Settings are what a reload may change on a running engine.
type Settings struct {
	Workers       int
	MaxAttempts   int
	WorkerTimeout time.Duration
	// MaxInFlight caps the syncs running at once across every instance
	// sharing the database; 0: no cap beyond each instance's Workers. On
	// SQLite (one instance) it caps Workers.
	MaxInFlight int
	// HoldBudget is how long a booking's sync is held (tried again
	// without spending attempts) while import-bookings answers
	// mutating_sync_paused; 0: DefaultHoldBudget.
	HoldBudget time.Duration
	// RetentionCompleted, RetentionCancelled and RetentionDiscarded are
	// how long River keeps finished jobs in each state before it deletes
	// them; a booking's timeline events go with the last job that keeps
	// them. 0: the default (DefaultRetention*).
	RetentionCompleted, RetentionCancelled, RetentionDiscarded time.Duration
}

// retentions are the retention periods in effect.
type retentions struct{ completed, cancelled, discarded time.Duration }

func (s Settings) retention() retentions {
	return retentions{
		completed: cmp.Or(s.RetentionCompleted, DefaultRetentionCompleted),
		cancelled: cmp.Or(s.RetentionCancelled, DefaultRetentionCancelled),
		discarded: cmp.Or(s.RetentionDiscarded, DefaultRetentionDiscarded),
	}
}

// shortest is the shortest retention period: no job River removed can
// have finished, or had an event, more recently than that.
func (r retentions) shortest() time.Duration { return min(r.completed, r.cancelled, r.discarded) }

// Key names the queue (in a usage pool, the admin API, metrics): one
// queue, and one set of workers, per database. It does not reveal the DSN.
func (q *Config) Key() string {
	sum := sha256.Sum256([]byte(q.Location))
	return "receive_booking:" + q.Driver + ":" + hex.EncodeToString(sum[:8])
}

// Describe names the queue in errors without its DSN.
func (q *Config) Describe() string {
	if drivers[q.Driver].secretLocation {
		return q.Driver + " (" + q.Key() + ")"
	}
	return q.Driver + " " + q.Location
}

// engineDriver is what the engine knows of a database before it opens it.
type engineDriver struct {
	open func(ctx context.Context, rq *Config, e *Engine) (backend, error)
	// batchers commit webhooks side by side (1 where one writer is all).
	batchers int
	// secretLocation: the location (a DSN) may hold a password.
	secretLocation bool
	// maxInFlight is the cap on syncs running at once, for the metrics.
	maxInFlight func(s Settings) int
}

// drivers are the databases a queue runs on.
var drivers = map[string]engineDriver{
	SQLite: {open: openSQLite, batchers: 1, maxInFlight: (*sqliteDialect)(nil).workers},
	// max_in_flight across every instance (0: none).
	Postgres: {open: openPostgres, batchers: 4, secretLocation: true, maxInFlight: func(s Settings) int { return s.MaxInFlight }},
}

// SettingsDiff names the worker settings in which o differs, or "".
func (q *Config) SettingsDiff(o *Config) string {
	var d []string
	if q.Workers != o.Workers {
		d = append(d, fmt.Sprintf("workers (%d, %d)", q.Workers, o.Workers))
	}
	if q.MaxAttempts != o.MaxAttempts {
		d = append(d, fmt.Sprintf("max_attempts (%d, %d)", q.MaxAttempts, o.MaxAttempts))
	}
	if q.WorkerTimeout != o.WorkerTimeout {
		d = append(d, fmt.Sprintf("worker_timeout (%s, %s)", q.WorkerTimeout, o.WorkerTimeout))
	}
	if q.MaxInFlight != o.MaxInFlight {
		d = append(d, fmt.Sprintf("max_in_flight (%d, %d)", q.MaxInFlight, o.MaxInFlight))
	}
	if hq, ho := cmp.Or(q.HoldBudget, DefaultHoldBudget), cmp.Or(o.HoldBudget, DefaultHoldBudget); hq != ho {
		d = append(d, fmt.Sprintf("hold_budget (%s, %s)", hq, ho))
	}
	a, b := q.retention(), o.retention()
	for _, r := range []struct {
		state string
		a, b  time.Duration
	}{{"completed", a.completed, b.completed}, {"cancelled", a.cancelled, b.cancelled}, {"discarded", a.discarded, b.discarded}} {
		if r.a != r.b {
			d = append(d, fmt.Sprintf("retention %s (%s, %s)", r.state, r.a, r.b))
		}
	}
	return strings.Join(d, ", ")
}

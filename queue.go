package receivebooking

// The queue as configured in the Caddyfile or JSON, resolved at
// provisioning and declared to the receive_booking app, which runs it.

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
)

const (
	defaultAsyncWindow    = time.Second
	defaultSQLiteFileName = "receive_booking.sqlite3"
)

// QueueConfig configures the durable queue.
type QueueConfig struct {
	// Driver is "sqlite" (embedded, the default) or "postgres" (shared by
	// several Caddy instances).
	Driver string `json:"driver,omitempty"`

	// Path is the SQLite file. Default: receive_booking.sqlite3 in Caddy's
	// data directory.
	Path string `json:"path,omitempty"`

	// DSN is the PostgreSQL connection string, e.g. {env.DATABASE_URL}.
	// Its password never appears in logs or errors.
	DSN string `json:"dsn,omitempty"`

	// Workers is how many syncs this instance runs at once. Handlers that
	// share a database must agree on it. A reload that changes it takes
	// effect at once. Default: 10.
	Workers int `json:"workers,omitempty"`

	// MaxAttempts is how many times a sync is tried before it is kept as
	// discarded (the dead letter). Default: 10.
	MaxAttempts int `json:"max_attempts,omitempty"`

	// WorkerTimeout bounds one queued sync (import-bookings may take far
	// longer than a sender waits). It should exceed import-bookings' own
	// limit (an Edge Function runs up to 150 s, 400 s on paid plans), so
	// that a sync given up on here has stopped there too. Default: 420s.
	WorkerTimeout string `json:"worker_timeout,omitempty"`

	// MaxInFlight caps the syncs running at once across every instance
	// sharing a PostgreSQL queue, on top of each instance's Workers. On
	// SQLite it caps Workers. Default: 3 on PostgreSQL (as many as the
	// Edge Function this module replaces made), none on SQLite.
	MaxInFlight int `json:"max_in_flight,omitempty"`

	// HoldBudget is how long a booking's sync is held while
	// import-bookings answers mutating_sync_paused (its kill switch): held
	// syncs are tried again, from every 5 s up to every 5 minutes, without
	// spending attempts; after the budget their answers spend attempts
	// again. Handlers that share a database must agree on it. Default: 24h.
	HoldBudget string `json:"hold_budget,omitempty"`

	// Retention is how long finished jobs, and the booking timelines they
	// keep, are kept, by state. Handlers that share a database must agree
	// on it. Default: completed 24h, cancelled 7 days, discarded 30 days.
	Retention *QueueRetention `json:"retention,omitempty"`
}

func (h *Handler) provisionQueue(ctx caddy.Context, repl *caddy.Replacer) error {
	mode, err := resolveChecked(repl, "mode", h.Mode)
	if err != nil {
		return err
	}
	h.mode = mode
	if h.mode == "" {
		h.mode = modeSync
		if h.Queue != nil {
			h.mode = modeAuto
		}
	}
	window := time.Duration(0)
	if h.mode == modeAsync {
		window = defaultAsyncWindow
	}
	if h.coalesceWindow, err = resolveDuration(repl, "coalesce_window", h.CoalesceWindow, window); err != nil {
		return err
	}
	if h.Queue == nil {
		h.coalescer = newCoalescer()
		return nil
	}
	if h.route, err = resolve(repl, "route", h.Route); err != nil {
		return err
	}
	if h.route == "" {
		h.route = queue.DefaultRoute
	}
	rq, err := resolveQueueConfig(repl, h.Queue)
	if err != nil {
		return err
	}
	app, err := loadApp(ctx)
	if err != nil {
		return err
	}
	h.queueDriver, h.queueSettings = rq.Driver, rq.Settings
	if rq.Driver == queue.Postgres {
		h.secretValues = append(h.secretValues, rq.Location)
		h.secretValues = append(h.secretValues, queue.DSNSecrets(rq.Location)...)
	}
	h.queue, err = app.use(placeOf(ctx), rq, h.route, h.upstream, h.secretValues, h.metrics)
	return err
}

func resolveQueueConfig(repl *caddy.Replacer, c *QueueConfig) (*queue.Config, error) {
	rq := &queue.Config{Driver: c.Driver, DataDir: caddy.AppDataDir(),
		Settings: queue.Settings{Workers: c.Workers, MaxAttempts: c.MaxAttempts, MaxInFlight: c.MaxInFlight}}
	if rq.Driver == "" {
		rq.Driver = queue.SQLite
	}
	var err error
	switch rq.Driver {
	case queue.SQLite:
		if rq.Location, err = resolve(repl, "queue path", c.Path); err != nil {
			return nil, err
		}
		if rq.Location == "" {
			rq.Location = filepath.Join(caddy.AppDataDir(), defaultSQLiteFileName)
		}
		if rq.Location, err = filepath.Abs(rq.Location); err != nil {
			return nil, fmt.Errorf("queue path: %w", err)
		}
	case queue.Postgres:
		if rq.Location, err = resolve(repl, "queue dsn", c.DSN); err != nil {
			return nil, err
		}
		if unset := unsetPlaceholders(repl, c.DSN); rq.Location == "" && len(unset) > 0 {
			return nil, emptyError(unset, "queue postgres DSN")
		}
		if rq.Location == "" {
			return nil, errors.New("queue postgres: the DSN is empty")
		}
		// Parsed now, so that `caddy validate` refuses a DSN the queue
		// could never open (without connecting: an env-provided DSN too).
		if err := queue.CheckDSN(rq.Location); err != nil {
			return nil, fmt.Errorf("queue postgres: %w", err)
		}
	default:
		return nil, checkField("queue", rq.Driver)
	}
	if rq.WorkerTimeout, err = resolveDuration(repl, "worker_timeout", c.WorkerTimeout, queue.DefaultWorkerTimeout); err != nil {
		return nil, err
	}
	if rq.HoldBudget, err = resolveDuration(repl, "hold_budget", c.HoldBudget, queue.DefaultHoldBudget); err != nil {
		return nil, err
	}
	if err := resolveRetention(repl, c.Retention, &rq.Settings); err != nil {
		return nil, err
	}
	// JSON holds these to their rule as it decodes (QueueConfig.UnmarshalJSON);
	// a QueueConfig built in Go is held to it here.
	for _, f := range []struct {
		name string
		n    int
	}{{"workers", c.Workers}, {"max_attempts", c.MaxAttempts}, {"max_in_flight", c.MaxInFlight}} {
		if f.n != 0 {
			if err := checkField(f.name, strconv.Itoa(f.n)); err != nil {
				return nil, err
			}
		}
	}
	if rq.Workers <= 0 {
		rq.Workers = queue.DefaultWorkers
	}
	if rq.MaxAttempts <= 0 {
		rq.MaxAttempts = queue.DefaultMaxAttempts
	}
	if rq.MaxInFlight <= 0 && rq.Driver == queue.Postgres {
		rq.MaxInFlight = queue.DefaultMaxInFlight
	}
	return rq, nil
}

// queuePool holds the running engines. Caddy starts a new config before it
// stops the old one, so an engine outlives any one config: its workers keep
// running across a reload, and stop when the last config using it goes.
var queuePool = caddy.NewUsagePool()

// engineRef is a handler's link to its engine, made in Provision and bound
// when the app starts (a request may arrive in between: it waits).
type engineRef struct {
	bound chan struct{}
	once  sync.Once
	e     atomic.Pointer[queue.Engine]
}

func newEngineRef() *engineRef { return &engineRef{bound: make(chan struct{})} }

func (r *engineRef) bind(e *queue.Engine) {
	r.e.Store(e)
	r.once.Do(func() { close(r.bound) })
}

func (r *engineRef) get() *queue.Engine { return r.e.Load() }

// wait returns the engine once the app has started it.
func (r *engineRef) wait(ctx context.Context) (*queue.Engine, error) {
	select {
	case <-r.bound:
		return r.e.Load(), nil
	case <-ctx.Done():
		return nil, errors.New("queue not started yet")
	}
}

// Package queue is the sync engine: a durable queue of booking syncs on
// River, over an embedded SQLite file or a PostgreSQL database shared by
// several instances. One Engine runs per database. It records webhooks in
// batches (one commit for all that arrive together) and merges those of a
// booking into its sync that has not started; its workers run at most one
// sync per booking at a time on every instance (each claims the booking's
// row first); it tells waiting senders how their sync's first attempt
// ended; it keeps trying when its database is away; and every string that
// leaves it passes one scrubber that knows every configured secret.
//
// It needs no Caddy: the receive_booking app creates, shares and stops
// engines; handlers record webhooks; the admin API lists and replays jobs.
package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"go.uber.org/zap"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"
)

// Engine is one durable queue and its workers.
type Engine struct {
	key    string
	rq     *Config // driver and location; settings below
	logger *zap.Logger
	// scrub knows every secret of every handler using the engine, and the
	// database's own; every string that leaves the engine passes it.
	scrub scrub.Scrubber

	// mu guards users' updates; readers (workers looking up a route) use
	// the snapshot without a lock. restartMu orders worker restarts and
	// the first start, which may wait on the database, apart from both.
	mu        sync.Mutex
	users     atomic.Pointer[[]*engineUser]
	restartMu sync.Mutex

	backend atomic.Pointer[backendBox] // nil while the database is away
	down    atomic.Pointer[string]     // why the database is away
	ready   chan struct{}              // closed after the first connection attempt

	waiters  waiters
	reqs     chan *Entry
	stop     chan struct{}
	wg       sync.WaitGroup
	observer atomic.Pointer[Observer]
	// availability is the intake's last known state (avail*).
	availability atomic.Int32
	// answers wait to be written to booking timelines (Answered).
	answers        chan eventRow
	answersDropped atomic.Int64
	// pauseCopy is the handlers' copy of the operators' pauses (pause.go).
	pauseCopy atomic.Pointer[[]Pause]
}

// Observer is told what the metrics need; every method must be cheap.
type Observer interface {
	// Synced is called when a queued sync succeeded, with the time its
	// first webhook was accepted.
	Synced(acceptedAt time.Time)
	// Failed is called when a job ends without a sync: f.Kind is
	// FailureFinal (the answer was final: the job is cancelled) or
	// FailureExhausted (out of attempts: the job is discarded, the dead
	// letter). Its texts are scrubbed.
	Failed(f Failure)
	// Held is called when an attempt's sync is held: import-bookings
	// answered that it paused syncing (no attempt spent).
	Held(queue string)
	// Availability is called when the queue stops or starts being able to
	// record webhooks; reason says why not (scrubbed).
	Availability(queue string, available bool, reason string)
}

// Failure describes a job that ended without a sync.
type Failure struct {
	Kind, Queue, BookingID, OrganizationID, Outcome, Reason string
	JobID                                                   int64
	Attempt                                                 int
}

// Kinds of failed jobs, for Observer.Failed.
const (
	FailureFinal     = "final"
	FailureExhausted = "exhausted"
)

// SetObserver sets who is told of syncs and samples (the newest config's
// metrics).
func (e *Engine) SetObserver(o Observer) {
	if o != nil {
		e.observer.Store(&o)
	}
}

func (e *Engine) observe() Observer {
	if o := e.observer.Load(); o != nil {
		return *o
	}
	return nil
}

// ID is the engine's key (see Config.Key).
func (e *Engine) ID() string { return e.key }

// Scrub returns s with every secret the engine knows replaced.
func (e *Engine) Scrub(s string) string { return e.scrub.String(s) }

// backendBox lets an interface live in an atomic.Pointer.
type backendBox struct{ backend }

// engineUser is one config's routes on the engine.
type engineUser struct {
	owner    any
	routes   map[string]*upstream.Client
	settings Settings
}

// New returns the engine of a queue; it connects in the background (and
// keeps trying), so it returns at once. Destruct stops it.
func New(rq *Config, logger *zap.Logger) *Engine {
	e := &Engine{
		key:     rq.Key(),
		rq:      rq,
		logger:  logger,
		ready:   make(chan struct{}),
		reqs:    make(chan *Entry, maxBatch),
		answers: make(chan eventRow, answerQueue),
		stop:    make(chan struct{}),
	}
	e.waiters.init()
	if drivers[rq.Driver].secretLocation {
		e.scrub.Set(e, append([]string{rq.Location}, DSNSecrets(rq.Location)...)...)
	}
	reason := "connecting"
	e.down.Store(&reason)
	e.wg.Go(e.connectLoop)
	for range max(drivers[rq.Driver].batchers, 1) {
		e.wg.Go(e.batchLoop)
	}
	e.wg.Go(e.statsLoop)
	e.wg.Go(e.pauseLoop)
	e.wg.Go(e.answerLoop)
	return e
}

// Attach adds an owner's (a config's) routes and secrets and applies its
// settings: the newest owner's settings win, so a reload may change them,
// and its routes are used first. Changed settings restart the workers
// (running syncs finish under the old ones).
func (e *Engine) Attach(owner any, routes map[string]*upstream.Client, secrets []string, s Settings) {
	e.scrub.Set(owner, secrets...)
	e.mu.Lock()
	users := append(slices.Clone(e.snapshot()), &engineUser{owner: owner, routes: routes, settings: s})
	e.users.Store(&users)
	e.mu.Unlock()
	e.applySettings()
}

// Detach removes an owner's routes and secrets; if it was the newest, the
// settings of the newest remaining owner apply again (a config that failed
// to start must not leave its settings behind).
func (e *Engine) Detach(owner any) {
	e.mu.Lock()
	users := slices.DeleteFunc(slices.Clone(e.snapshot()), func(u *engineUser) bool { return u.owner == owner })
	e.users.Store(&users)
	e.mu.Unlock()
	e.scrub.Remove(owner)
	e.applySettings()
}

func (e *Engine) snapshot() []*engineUser {
	if p := e.users.Load(); p != nil {
		return *p
	}
	return nil
}

// settings are the newest owner's, or the config's the engine began with.
func (e *Engine) settings() Settings {
	if users := e.snapshot(); len(users) > 0 {
		return users[len(users)-1].settings
	}
	return e.rq.Settings
}

// applySettings restarts the workers if the settings they run with are
// not the current ones.
func (e *Engine) applySettings() {
	e.restartMu.Lock()
	defer e.restartMu.Unlock()
	b := e.backend.Load()
	s := e.settings()
	if b == nil || b.workerSettings() == s {
		return
	}
	if err := b.restartWorkers(s); err != nil {
		e.logger.Error("applying new worker settings", zap.Error(e.scrubErr(err)))
		return
	}
	e.logger.Info("worker settings changed", zap.Int("workers", s.Workers),
		zap.Int("max_attempts", s.MaxAttempts), zap.Duration("worker_timeout", s.WorkerTimeout))
}

// upstreamFor is the route's upstream in the newest config that has it:
// jobs name a route, not a URL, so a changed target takes effect for every
// pending job.
func (e *Engine) upstreamFor(route string) *upstream.Client {
	if route == "" {
		route = DefaultRoute
	}
	users := e.snapshot()
	for i := len(users) - 1; i >= 0; i-- {
		if up := users[i].routes[route]; up != nil {
			return up
		}
	}
	return nil
}

// connectLoop opens the database, retrying with backoff until it succeeds
// or the engine stops. Caddy does not wait for it: until it succeeds the
// engine's handlers answer 503 and health reports why.
func (e *Engine) connectLoop() {
	wait := reconnectMin
	readyOnce := sync.OnceFunc(func() { close(e.ready) })
	defer readyOnce()
	for {
		err := e.connect()
		if err == nil {
			readyOnce()
			return
		}
		reason := e.scrubErr(err).Error()
		if prev := e.down.Swap(&reason); prev == nil || *prev != reason {
			e.setAvailable(false, reason)
			e.logger.Error("queue unavailable; retrying", zap.String("queue", e.key), zap.String("reason", reason),
				zap.Duration("retry_in", wait))
		}
		readyOnce()
		select {
		case <-time.After(wait):
		case <-e.stop:
			return
		}
		wait = min(2*wait, reconnectMax)
	}
}

func (e *Engine) connect() error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	d, ok := drivers[e.rq.Driver]
	if !ok {
		return fmt.Errorf("queue: unknown driver %q", e.rq.Driver)
	}
	b, err := d.open(ctx, e.rq, e)
	if err != nil {
		return err
	}
	e.restartMu.Lock()
	defer e.restartMu.Unlock()
	select {
	case <-e.stop:
		_ = b.close(ctx)
		return errors.New("queue stopped")
	default:
	}
	s := e.settings()
	if err := b.restartWorkers(s); err != nil {
		_ = b.close(ctx)
		return err
	}
	e.backend.Store(&backendBox{b})
	e.down.Store(nil)
	e.setAvailable(true, "")
	e.logger.Info("queue started", zap.String("queue", e.key), zap.String("driver", e.rq.Driver),
		zap.Int("workers", s.Workers))
	return nil
}

// current returns the backend, or an error saying why there is none.
func (e *Engine) current() (backend, error) {
	if b := e.backend.Load(); b != nil {
		return b.backend, nil
	}
	reason := "not started"
	if r := e.down.Load(); r != nil {
		reason = *r
	}
	return nil, errQueueDown{reason}
}

// errQueueDown says that the queue's database has not been reached.
type errQueueDown struct{ reason string }

func (e errQueueDown) Error() string { return "queue unavailable: " + e.reason }

// setAvailable tells the observer when the queue's ability to record
// webhooks changes (the first connection, an outage of the intake).
func (e *Engine) setAvailable(up bool, reason string) {
	state := int32(availDown)
	if up {
		state = availUp
	}
	was := e.availability.Swap(state)
	if was == state || (was == availUnknown && up) {
		return // no change, or the normal start
	}
	if o := e.observe(); o != nil {
		o.Availability(e.key, up, reason)
	}
}

// Availability states of the intake.
const (
	availUnknown = iota
	availDown
	availUp
)

// StopWaiting withdraws a sender's Wait channel (it stopped waiting).
func (e *Engine) StopWaiting(jobID int64, ch chan *Outcome) { e.waiters.remove(jobID, ch) }

// Jobs is the queue's job store, for the admin API, or an error saying why
// the database is away.
func (e *Engine) Jobs() (JobStore, error) { return e.current() }

// Replays is the webhook-id store shared by the instances on the
// database, or an error saying why the database is away.
func (e *Engine) Replays() (ReplayMemory, error) { return e.current() }

// scrubErr returns err's text with every known secret removed.
func (e *Engine) scrubErr(err error) error {
	if err == nil {
		return nil
	}
	for _, known := range []error{ErrNotPaused, ErrJobNotFound, ErrJobRunning} {
		if errors.Is(err, known) {
			return known // says no more than its own words
		}
	}
	return errors.New(e.scrub.String(err.Error()))
}

// Destruct stops the workers (letting in-flight syncs finish within a
// bound) and closes the database. Called by the pool when no config uses
// the engine any more.
func (e *Engine) Destruct() error {
	close(e.stop)
	e.wg.Wait()
	b := e.backend.Swap(nil)
	if b == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout+5*time.Second)
	defer cancel()
	return e.scrubErr(b.close(ctx))
}

// Stats is a snapshot of the queue, for the gauges and the admin API.
type Stats struct {
	Counts map[string]int64 `json:"counts"`
	// Held counts the bookings whose sync import-bookings' pause holds.
	Held int64 `json:"held"`
	// Paused are the operators' pauses in effect.
	Paused               []Pause    `json:"paused"`
	OldestPendingSeconds float64    `json:"oldest_pending_seconds"`
	LastSyncAt           *time.Time `json:"last_sync_at,omitempty"`
}

// statsLoop prunes now and then: expired webhook-ids, the timeline
// events of jobs River has removed, and (SQLite) the free pages they
// leave. (The gauges are read at scrape time: see Stats.)
func (e *Engine) statsLoop() {
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-e.stop:
			return
		}
		e.prune()
	}
}

func (e *Engine) prune() {
	b, err := e.current()
	if err != nil {
		return
	}
	now := time.Now()
	for _, p := range []struct {
		what string
		fn   func(context.Context) error
	}{
		{"pruning webhook ids", func(ctx context.Context) error { return b.prune(ctx, now) }},
		{"pruning booking timelines", func(ctx context.Context) error {
			return b.pruneEvents(ctx, now.Add(-e.settings().retention().shortest()))
		}},
		{"reclaiming free space", b.reclaim},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := p.fn(ctx)
		cancel()
		if err != nil {
			e.logger.Warn(p.what, zap.Error(e.scrubErr(err)))
		}
	}
}

// Up reports whether the queue can record webhooks, as far as the engine
// knows without a write: its database is connected and its last write did
// not fail.
func (e *Engine) Up() bool {
	_, err := e.current()
	return err == nil && e.availability.Load() != availDown
}

// MaxInFlight is the cap on syncs running at once: on PostgreSQL
// max_in_flight across every instance (0: none), on SQLite the workers
// (capped by max_in_flight).
func (e *Engine) MaxInFlight() int {
	if d, ok := drivers[e.rq.Driver]; ok {
		return d.maxInFlight(e.settings())
	}
	return 0
}

// Stats is a snapshot of the queue.
func (e *Engine) Stats(ctx context.Context) (*Stats, error) {
	b, err := e.current()
	if err != nil {
		return nil, err
	}
	s, err := b.stats(ctx)
	return s, e.scrubErr(err)
}

// Health says whether webhooks can be recorded now: the database is
// reached and a write commits (a full disk fails it).
func (e *Engine) Health(ctx context.Context) error {
	b, err := e.current()
	if err != nil {
		return err
	}
	if err := b.probe(ctx); err != nil {
		return fmt.Errorf("queue cannot record webhooks: %w", e.scrubErr(err))
	}
	return nil
}

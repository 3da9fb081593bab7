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
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"go.uber.org/zap"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"
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

// Entry is one webhook to record.
type Entry struct {
	Webhook *payload.Webhook
	// Route names the handler route whose target syncs it.
	Route string
	// NotBefore is the end of its coalescing window; AcceptedAt when it
	// was accepted.
	NotBefore, AcceptedAt time.Time
	// Wait, when set, receives the outcome of the first attempt of the
	// job the webhook is recorded in that starts after the record (see
	// StopWaiting).
	Wait chan *Outcome
	// Trace is the webhook's trace context; a new job continues it.
	Trace tracing.Context
	// Credential names the credential that authenticated the webhook, for
	// the booking's timeline ("organization org-a key #1"): a name, never
	// the secret.
	Credential string
	// AnswerOnRecord is the HTTP status its sender is given once it is
	// recorded, when the sender does not wait for the sync (async); 0 when
	// the answer comes later (see Answered).
	AnswerOnRecord int

	// JobID is the job that carries the webhook, once recorded;
	// Coalesced says it merged into a job that was already waiting.
	JobID     int64
	Coalesced bool

	done chan error
	ctx  context.Context // the recorder's: once it has gone, so has the waiter
	// mark is the highest claim number when it was recorded (PostgreSQL,
	// see waiters).
	mark int64
}

// Record records a webhook durably. It returns only once the record is
// committed (or has failed); concurrent webhooks share one commit.
func (e *Engine) Record(ctx context.Context, req *Entry) error {
	if _, err := e.current(); err != nil {
		// While the first connection attempt runs (Caddy has just
		// started), wait for it; after it, the answer is known.
		select {
		case <-e.ready:
		case <-ctx.Done():
			return err
		}
		if _, err := e.current(); err != nil {
			return err
		}
	}
	req.done, req.ctx = make(chan error, 1), ctx
	select {
	case e.reqs <- req:
	case <-e.stop:
		return errors.New("queue stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// batchLoop commits waiting webhooks in batches: one transaction (and one
// fsync) for every webhook that arrived while the previous one committed.
func (e *Engine) batchLoop() {
	for {
		var first *Entry
		select {
		case first = <-e.reqs:
		case <-e.stop:
			e.failPending()
			return
		}
		batch := gather(first, e.reqs, maxBatch)
		err := e.commitBatch(batch)
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (e *Engine) commitBatch(batch []*Entry) error {
	b, err := e.current()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.insertBatch(ctx, batch); err != nil {
		e.setAvailable(false, e.scrubErr(err).Error())
		for _, r := range batch {
			if r.Wait != nil {
				e.waiters.remove(r.JobID, r.Wait)
			}
		}
		return fmt.Errorf("recording webhooks: %w", e.scrubErr(err))
	}
	e.setAvailable(true, "")
	for _, r := range batch {
		if r.Wait != nil && r.ctx.Err() != nil {
			e.waiters.remove(r.JobID, r.Wait) // it gave up before the commit
		}
	}
	return nil
}

func (e *Engine) failPending() {
	for {
		select {
		case r := <-e.reqs:
			r.done <- errors.New("queue stopped")
		default:
			return
		}
	}
}

// Stats is a snapshot of the queue, for the gauges and the admin API.
type Stats struct {
	Counts               map[string]int64 `json:"counts"`
	OldestPendingSeconds float64          `json:"oldest_pending_seconds"`
	LastSyncAt           *time.Time       `json:"last_sync_at,omitempty"`
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

package receivebooking

// The sync engine: one per database, shared by every handler and config
// that names it. It records webhooks in batches (one commit for all that
// arrive together), runs River's workers, tells waiting senders how their
// sync's attempt ended, and keeps trying when its database is away.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"
)

const (
	queueSQLite   = "sqlite"
	queuePostgres = "postgres"

	defaultWorkers        = 10
	defaultMaxAttempts    = 10
	defaultWorkerTimeout  = 60 * time.Second
	defaultAsyncWindow    = time.Second
	defaultSQLiteFileName = "receive_booking.sqlite3"
	defaultRoute          = "default"

	// maxBatch bounds how many webhooks share one commit.
	maxBatch = 256
	// statsInterval is how often the queue gauges are sampled.
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
	// longer than a sender waits). Default: 60s.
	WorkerTimeout string `json:"worker_timeout,omitempty"`
}

// resolvedQueue is a QueueConfig after placeholders and defaults.
type resolvedQueue struct {
	driver   string
	location string // file path or DSN
	workerSettings
}

// workerSettings are what a reload may change on a running engine.
type workerSettings struct {
	workers       int
	maxAttempts   int
	workerTimeout time.Duration
}

// poolKey names the queue in the usage pool: one queue, and one set of
// workers, per database, however many configs and handlers use it.
func (q *resolvedQueue) poolKey() string {
	sum := sha256.Sum256([]byte(q.location))
	return "receive_booking:" + q.driver + ":" + hex.EncodeToString(sum[:8])
}

// describe names the queue in errors without its DSN.
func (q *resolvedQueue) describe() string {
	if q.driver == queueSQLite {
		return "sqlite " + q.location
	}
	return "postgres (" + q.poolKey() + ")"
}

// settingsDiff names the worker settings in which o differs, or "".
func (q *resolvedQueue) settingsDiff(o *resolvedQueue) string {
	var d []string
	if q.workers != o.workers {
		d = append(d, fmt.Sprintf("workers (%d, %d)", q.workers, o.workers))
	}
	if q.maxAttempts != o.maxAttempts {
		d = append(d, fmt.Sprintf("max_attempts (%d, %d)", q.maxAttempts, o.maxAttempts))
	}
	if q.workerTimeout != o.workerTimeout {
		d = append(d, fmt.Sprintf("worker_timeout (%s, %s)", q.workerTimeout, o.workerTimeout))
	}
	return strings.Join(d, ", ")
}

func (h *Handler) provisionQueue(ctx caddy.Context, repl *caddy.Replacer) error {
	mode, err := resolve(repl, "mode", h.Mode)
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
		h.route = defaultRoute
	}
	rq, err := resolveQueueConfig(repl, h.Queue)
	if err != nil {
		return err
	}
	app, err := loadApp(ctx)
	if err != nil {
		return err
	}
	h.queueDriver = rq.driver
	if rq.driver == queuePostgres {
		h.secretValues = append(h.secretValues, rq.location)
		h.secretValues = append(h.secretValues, dsnSecrets(rq.location)...)
	}
	h.queue, err = app.use(fmt.Sprintf("the handler of route %q", h.route), rq, h.route, h.upstream, h.secretValues)
	return err
}

func resolveQueueConfig(repl *caddy.Replacer, c *QueueConfig) (*resolvedQueue, error) {
	rq := &resolvedQueue{driver: c.Driver, workerSettings: workerSettings{workers: c.Workers, maxAttempts: c.MaxAttempts}}
	if rq.driver == "" {
		rq.driver = queueSQLite
	}
	var err error
	switch rq.driver {
	case queueSQLite:
		if rq.location, err = resolve(repl, "queue path", c.Path); err != nil {
			return nil, err
		}
		if rq.location == "" {
			rq.location = filepath.Join(caddy.AppDataDir(), defaultSQLiteFileName)
		}
		if rq.location, err = filepath.Abs(rq.location); err != nil {
			return nil, fmt.Errorf("queue path: %w", err)
		}
	case queuePostgres:
		if rq.location, err = resolve(repl, "queue dsn", c.DSN); err != nil {
			return nil, err
		}
		if rq.location == "" {
			return nil, errors.New("queue postgres: the DSN is empty")
		}
	default:
		return nil, fmt.Errorf("queue: unknown driver %q", rq.driver)
	}
	if rq.workerTimeout, err = resolveDuration(repl, "worker_timeout", c.WorkerTimeout, defaultWorkerTimeout); err != nil {
		return nil, err
	}
	if rq.workers <= 0 {
		rq.workers = defaultWorkers
	}
	if rq.maxAttempts <= 0 {
		rq.maxAttempts = defaultMaxAttempts
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
	e     atomic.Pointer[engine]
}

func newEngineRef() *engineRef { return &engineRef{bound: make(chan struct{})} }

func (r *engineRef) bind(e *engine) {
	r.e.Store(e)
	r.once.Do(func() { close(r.bound) })
}

func (r *engineRef) get() *engine { return r.e.Load() }

// wait returns the engine once the app has started it.
func (r *engineRef) wait(ctx context.Context) (*engine, error) {
	select {
	case <-r.bound:
		return r.e.Load(), nil
	case <-ctx.Done():
		return nil, errors.New("queue not started yet")
	}
}

// engine is one durable queue and its workers.
type engine struct {
	key    string
	rq     *resolvedQueue // driver and location; settings below
	logger *zap.Logger
	// scrub knows every secret of every handler using the engine, and the
	// database's own; every string that leaves the engine passes it.
	scrub scrub.Scrubber

	mu       sync.Mutex // guards settings and users, and orders restarts
	settings workerSettings
	users    []*engineUser

	backend atomic.Pointer[backendBox] // nil while the database is away
	down    atomic.Pointer[string]     // why the database is away
	ready   chan struct{}              // closed after the first connection attempt

	waiters waiters
	reqs    chan *enqueueReq
	stop    chan struct{}
	wg      sync.WaitGroup
	metrics atomic.Pointer[metrics]
}

// backendBox lets an interface live in an atomic.Pointer.
type backendBox struct{ backend }

// engineUser is one config's routes on the engine.
type engineUser struct {
	app    *App
	routes map[string]*upstream.Client
}

// newEngine starts connecting in the background and returns at once.
func newEngine(key string, rq *resolvedQueue, logger *zap.Logger) *engine {
	e := &engine{
		key:      key,
		rq:       rq,
		logger:   logger,
		settings: rq.workerSettings,
		ready:    make(chan struct{}),
		reqs:     make(chan *enqueueReq, maxBatch),
		stop:     make(chan struct{}),
	}
	e.waiters.init()
	if rq.driver == queuePostgres {
		e.scrub.Set(e, append([]string{rq.location}, dsnSecrets(rq.location)...)...)
	}
	reason := "connecting"
	e.down.Store(&reason)
	e.wg.Go(e.connectLoop)
	batchers := 1
	if rq.driver == queuePostgres {
		batchers = 4 // PostgreSQL commits concurrently; SQLite has one writer
	}
	for range batchers {
		e.wg.Go(e.batchLoop)
	}
	e.wg.Go(e.statsLoop)
	return e
}

// attach adds a config's routes and secrets and applies its settings (the
// newest config's settings win: a reload may change them).
func (e *engine) attach(a *App, u *engineUse) {
	e.scrub.Set(a, u.secrets...)
	e.mu.Lock()
	defer e.mu.Unlock()
	e.users = append(e.users, &engineUser{app: a, routes: u.routes})
	if e.settings != u.rq.workerSettings {
		e.settings = u.rq.workerSettings
		if b := e.backend.Load(); b != nil {
			if err := b.restartWorkers(e.settings); err != nil {
				e.logger.Error("applying new worker settings", zap.Error(e.scrubErr(err)))
			} else {
				e.logger.Info("worker settings changed", zap.Int("workers", e.settings.workers),
					zap.Int("max_attempts", e.settings.maxAttempts), zap.Duration("worker_timeout", e.settings.workerTimeout))
			}
		}
	}
}

// detach removes a config's routes (its secrets stay scrubbed while any
// job may still carry them; they go with the engine).
func (e *engine) detach(a *App, _ *engineUse) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, u := range e.users {
		if u.app == a {
			e.users = append(e.users[:i:i], e.users[i+1:]...)
			break
		}
	}
}

// upstreamFor is the route's upstream in the newest config that has it:
// jobs name a route, not a URL, so a changed target takes effect for every
// pending job.
func (e *engine) upstreamFor(route string) *upstream.Client {
	if route == "" {
		route = defaultRoute
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := len(e.users) - 1; i >= 0; i-- {
		if up := e.users[i].routes[route]; up != nil {
			return up
		}
	}
	return nil
}

// connectLoop opens the database, retrying with backoff until it succeeds
// or the engine stops. Caddy does not wait for it: until it succeeds the
// engine's handlers answer 503 and health reports why.
func (e *engine) connectLoop() {
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

func (e *engine) connect() error {
	ctx, cancel := context.WithTimeout(context.Background(), connectTimeout)
	defer cancel()
	var b backend
	var err error
	switch e.rq.driver {
	case queueSQLite:
		b, err = openSQLite(ctx, e.rq, e)
	case queuePostgres:
		b, err = openPostgres(ctx, e.rq, e)
	}
	if err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	select {
	case <-e.stop:
		_ = b.close(ctx)
		return errors.New("queue stopped")
	default:
	}
	if err := b.restartWorkers(e.settings); err != nil {
		_ = b.close(ctx)
		return err
	}
	e.backend.Store(&backendBox{b})
	e.down.Store(nil)
	e.logger.Info("queue started", zap.String("queue", e.key), zap.String("driver", e.rq.driver),
		zap.Int("workers", e.settings.workers))
	return nil
}

// current returns the backend, or an error saying why there is none.
func (e *engine) current() (backend, error) {
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

// scrubErr returns err's text with every known secret removed.
func (e *engine) scrubErr(err error) error {
	if err == nil {
		return nil
	}
	return errors.New(e.scrub.String(err.Error()))
}

// Destruct stops the workers (letting in-flight syncs finish within a
// bound) and closes the database. Called by the pool when no config uses
// the engine any more.
func (e *engine) Destruct() error {
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

// enqueueReq is one webhook waiting to be recorded.
type enqueueReq struct {
	wh         *payload.Webhook
	route      string
	notBefore  time.Time
	acceptedAt time.Time
	jobID      int64
	coalesced  bool
	// wait, when set, receives the outcome of the first attempt of the
	// job the webhook is recorded in that starts after the record.
	wait chan *attemptOutcome
	done chan error
}

// enqueue records a webhook durably. It returns only once the record is
// committed (or has failed); concurrent webhooks share one commit.
func (e *engine) enqueue(ctx context.Context, req *enqueueReq) error {
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
	req.done = make(chan error, 1)
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
func (e *engine) batchLoop() {
	for {
		var first *enqueueReq
		select {
		case first = <-e.reqs:
		case <-e.stop:
			e.failPending()
			return
		}
		batch := append(make([]*enqueueReq, 0, 16), first)
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-e.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		err := e.commitBatch(batch)
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (e *engine) commitBatch(batch []*enqueueReq) error {
	b, err := e.current()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.insertBatch(ctx, batch); err != nil {
		for _, r := range batch {
			if r.wait != nil {
				e.waiters.remove(r.jobID, r.wait)
			}
		}
		return fmt.Errorf("recording webhooks: %w", e.scrubErr(err))
	}
	return nil
}

func (e *engine) failPending() {
	for {
		select {
		case r := <-e.reqs:
			r.done <- errors.New("queue stopped")
		default:
			return
		}
	}
}

// queueStats is a snapshot of the queue, for the gauges and the admin API.
type queueStats struct {
	Counts               map[string]int64 `json:"counts"`
	OldestPendingSeconds float64          `json:"oldest_pending_seconds"`
	LastSyncAt           *time.Time       `json:"last_sync_at,omitempty"`
}

// statsStates are the job states reported.
var statsStates = []string{"available", "running", "retryable", "scheduled", "discarded", "cancelled", "completed"}

func (e *engine) statsLoop() {
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-e.stop:
			return
		}
		e.sampleStats()
	}
}

func (e *engine) sampleStats() {
	b, err := e.current()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := e.stats(ctx)
	if err != nil {
		e.logger.Warn("sampling queue stats", zap.Error(err))
		return
	}
	e.metrics.Load().setQueueStats(s)
	if err := b.prune(ctx, time.Now()); err != nil {
		e.logger.Warn("pruning webhook ids", zap.Error(e.scrubErr(err)))
	}
}

func (e *engine) stats(ctx context.Context) (*queueStats, error) {
	b, err := e.current()
	if err != nil {
		return nil, err
	}
	s, err := b.stats(ctx)
	return s, e.scrubErr(err)
}

// health says whether webhooks can be recorded now: the database is
// reached and a write commits (a full disk fails it).
func (e *engine) health(ctx context.Context) error {
	b, err := e.current()
	if err != nil {
		return err
	}
	if err := b.probe(ctx); err != nil {
		return fmt.Errorf("queue cannot record webhooks: %w", e.scrubErr(err))
	}
	return nil
}

package receivebooking

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
)

const (
	queueSQLite   = "sqlite"
	queuePostgres = "postgres"

	defaultWorkers        = 10
	defaultMaxAttempts    = 10
	defaultWorkerTimeout  = 60 * time.Second
	defaultAsyncWindow    = time.Second
	defaultSQLiteFileName = "receive_booking.sqlite3"

	// maxBatch bounds how many webhooks share one commit.
	maxBatch = 256
	// statsInterval is how often the queue gauges are sampled.
	statsInterval = 10 * time.Second
	// stopTimeout bounds how long in-flight syncs may run on shutdown
	// before they are cancelled (and run again at the next start).
	stopTimeout = 10 * time.Second
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

	// Workers is how many syncs this instance runs at once. Default: 10.
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
	driver        string
	location      string // file path or DSN
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
		return nil
	}
	rq, err := resolveQueueConfig(repl, h.Queue)
	if err != nil {
		return err
	}
	h.queue, err = acquireQueue(ctx, rq, h.upstream, h.metrics, h.logger)
	return err
}

func resolveQueueConfig(repl *caddy.Replacer, c *QueueConfig) (*resolvedQueue, error) {
	rq := &resolvedQueue{driver: c.Driver, workers: c.Workers, maxAttempts: c.MaxAttempts}
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

// queuePool holds the running queues. Caddy provisions a new config before
// it cleans up the old one, so a queue outlives any one config: its workers
// keep running across a reload, and stop when the last config using it goes.
var queuePool = caddy.NewUsagePool()

// liveQueues are the queues running in this process, by pool key, for the
// admin API.
var liveQueues sync.Map

// runningQueues returns the live queues, ordered by key.
func runningQueues() []*sharedQueue {
	var qs []*sharedQueue
	liveQueues.Range(func(_, v any) bool {
		qs = append(qs, v.(*sharedQueue))
		return true
	})
	slices.SortFunc(qs, func(a, b *sharedQueue) int { return strings.Compare(a.key, b.key) })
	return qs
}

// sharedQueue is one durable queue and its workers.
type sharedQueue struct {
	key     string
	backend backend
	logger  *zap.Logger
	config  *resolvedQueue

	// targets maps a target ID to the upstream the workers call for it.
	// Each live handler registers its own; the newest config wins.
	mu      sync.RWMutex
	targets map[string][]*upstream

	reqs    chan *enqueueReq
	stop    chan struct{}
	wg      sync.WaitGroup
	metrics atomic.Pointer[metrics]
}

// Destruct stops the workers (letting in-flight syncs finish within a
// bound) and closes the database. Called by the pool when no config uses
// the queue any more.
func (q *sharedQueue) Destruct() error {
	liveQueues.Delete(q.key)
	close(q.stop)
	q.wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
	defer cancel()
	return q.backend.close(ctx)
}

// queueHandle is one handler's hold on a shared queue.
type queueHandle struct {
	q        *sharedQueue
	key      string
	targetID string
	upstream *upstream
	window   time.Duration
}

func acquireQueue(ctx caddy.Context, rq *resolvedQueue, up *upstream, m *metrics, logger *zap.Logger) (*queueHandle, error) {
	key := rq.poolKey()
	val, _, err := queuePool.LoadOrNew(key, func() (caddy.Destructor, error) {
		return openQueue(key, rq, logger.Named("queue"))
	})
	if err != nil {
		return nil, err
	}
	q := val.(*sharedQueue)
	if m != nil {
		q.metrics.Store(m)
	}
	h := &queueHandle{q: q, key: key, targetID: targetID(up.target), upstream: up}
	q.register(h.targetID, up)
	return h, nil
}

// targetID names a target in job args without storing its URL, which may
// carry a key.
func targetID(target string) string {
	sum := sha256.Sum256([]byte(target))
	return hex.EncodeToString(sum[:8])
}

func (h *queueHandle) release() error {
	h.q.unregister(h.targetID, h.upstream)
	_, err := queuePool.Delete(h.key)
	return err
}

func (q *sharedQueue) register(id string, up *upstream) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.targets[id] = append(q.targets[id], up)
}

func (q *sharedQueue) unregister(id string, up *upstream) {
	q.mu.Lock()
	defer q.mu.Unlock()
	ups := q.targets[id]
	for i, u := range ups {
		if u == up {
			q.targets[id] = append(ups[:i:i], ups[i+1:]...)
			break
		}
	}
	if len(q.targets[id]) == 0 {
		delete(q.targets, id)
	}
}

// upstreamFor is the newest live handler's upstream for a target.
func (q *sharedQueue) upstreamFor(id string) *upstream {
	q.mu.RLock()
	defer q.mu.RUnlock()
	ups := q.targets[id]
	if len(ups) == 0 {
		return nil
	}
	return ups[len(ups)-1]
}

func openQueue(key string, rq *resolvedQueue, logger *zap.Logger) (*sharedQueue, error) {
	q := &sharedQueue{
		key:     key,
		logger:  logger,
		config:  rq,
		targets: make(map[string][]*upstream),
		reqs:    make(chan *enqueueReq, maxBatch),
		stop:    make(chan struct{}),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var err error
	switch rq.driver {
	case queueSQLite:
		q.backend, err = openSQLite(ctx, rq, q)
	case queuePostgres:
		q.backend, err = openPostgres(ctx, rq, q)
	}
	if err != nil {
		return nil, err
	}
	batchers := 1
	if rq.driver == queuePostgres {
		batchers = 4 // PostgreSQL commits concurrently; SQLite has one writer
	}
	for range batchers {
		q.wg.Go(q.batchLoop)
	}
	q.wg.Go(q.statsLoop)
	liveQueues.Store(key, q)
	logger.Info("queue started", zap.String("driver", rq.driver), zap.Int("workers", rq.workers))
	return q, nil
}

// enqueueReq is one webhook waiting to be recorded.
type enqueueReq struct {
	wh         *webhook
	targetID   string
	notBefore  time.Time
	acceptedAt time.Time
	jobID      int64
	coalesced  bool
	done       chan error
}

// enqueue records a webhook durably. It returns only once the record is
// committed (or has failed); concurrent webhooks share one commit.
func (h *queueHandle) enqueue(ctx context.Context, wh *webhook, window time.Duration) (int64, bool, error) {
	now := time.Now()
	req := &enqueueReq{wh: wh, targetID: h.targetID, acceptedAt: now, notBefore: now.Add(window), done: make(chan error, 1)}
	select {
	case h.q.reqs <- req:
	case <-h.q.stop:
		return 0, false, errors.New("queue stopped")
	case <-ctx.Done():
		return 0, false, ctx.Err()
	}
	select {
	case err := <-req.done:
		return req.jobID, req.coalesced, err
	case <-ctx.Done():
		return 0, false, ctx.Err()
	}
}

// batchLoop commits waiting webhooks in batches: one transaction (and one
// fsync) for every webhook that arrived while the previous one committed.
func (q *sharedQueue) batchLoop() {
	for {
		var first *enqueueReq
		select {
		case first = <-q.reqs:
		case <-q.stop:
			q.failPending()
			return
		}
		batch := append(make([]*enqueueReq, 0, 16), first)
	drain:
		for len(batch) < maxBatch {
			select {
			case r := <-q.reqs:
				batch = append(batch, r)
			default:
				break drain
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		err := q.backend.insertBatch(ctx, batch)
		cancel()
		if err != nil {
			err = fmt.Errorf("recording webhooks: %s", scrubDSN(err.Error(), q.config))
		}
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (q *sharedQueue) failPending() {
	for {
		select {
		case r := <-q.reqs:
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

func (q *sharedQueue) statsLoop() {
	t := time.NewTicker(statsInterval)
	defer t.Stop()
	for {
		q.sampleStats()
		select {
		case <-t.C:
		case <-q.stop:
			return
		}
	}
}

func (q *sharedQueue) sampleStats() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := q.stats(ctx)
	if err != nil {
		q.logger.Warn("sampling queue stats", zap.Error(err))
		return
	}
	q.metrics.Load().setQueueStats(s)
	if err := q.backend.prune(ctx, time.Now()); err != nil {
		q.logger.Warn("pruning webhook ids", zap.Error(errors.New(scrubDSN(err.Error(), q.config))))
	}
}

func (q *sharedQueue) stats(ctx context.Context) (*queueStats, error) {
	s, err := q.backend.stats(ctx)
	if err != nil {
		return nil, errors.New(scrubDSN(err.Error(), q.config))
	}
	return s, nil
}

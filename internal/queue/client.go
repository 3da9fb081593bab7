package queue

// River's client: its configuration from the engine's settings, a restart
// when a reload changes them (the old client finishes its running syncs),
// and the stop at shutdown.

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"
)

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
	if err := b.db.ensureSlots(ctx, s.MaxInFlight); err != nil {
		return err
	}
	workers := river.NewWorkers()
	if err := river.AddWorkerSafely(workers, &syncWorker[TDriver, TTx]{b: b, timeout: s.WorkerTimeout, maxInFlight: s.MaxInFlight,
		holdBudget: cmp.Or(s.HoldBudget, DefaultHoldBudget)}); err != nil {
		return err
	}
	cfg := newRiverConfig(s, b.db.workers(s), b.db.fetchCooldown(), workers, b.q)
	cfg.ID = b.clientID
	c, err := river.NewClient(b.driver, cfg)
	if err != nil {
		return fmt.Errorf("creating queue client: %w", err)
	}
	// The client outlives the context of any one config: it is stopped
	// explicitly.
	if err := c.Start(context.Background()); err != nil {
		return fmt.Errorf("starting queue workers: %w", err)
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
// timeout and cancelling the rest (they are retried). River's own
// SoftStopTimeout does this with one bound fixed when the client is made;
// a client needs two: worker_timeout + 5 s when a reload retires it (its
// syncs run to their end), stopTimeout when Caddy stops (and 1 s for one
// still retiring then).
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

// newRiverConfig is River's configuration: maxWorkers and fetchCooldown
// are the dialect's.
func newRiverConfig(s Settings, maxWorkers int, fetchCooldown time.Duration, workers *river.Workers, e *Engine) *river.Config {
	cfg := &river.Config{
		// River's own lines go through the engine's scrubber, under the
		// module's logger.
		Logger:     e.slogger("river"),
		Queues:     map[string]river.QueueConfig{riverQueueName: {MaxWorkers: maxWorkers}},
		Workers:    workers,
		Middleware: []rivertype.Middleware{&windowStart{}},
		// New jobs are announced (PostgreSQL: LISTEN/NOTIFY; SQLite: in
		// this process, see wakeDriver), so a sender in auto mode does not
		// wait for a poll. Polling still finds jobs whose time has come: the
		// end of a coalescing window, a retry, a busy booking's snooze.
		// A fetch is a write transaction: at most one per cooldown.
		FetchCooldown:     fetchCooldown,
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
	return cfg
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

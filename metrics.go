package receivebooking

// Prometheus metrics through Caddy's registry: webhooks by outcome,
// rejections, upstream calls, sync lag and queue gauges.

import (
	"cmp"
	"context"
	"errors"
	"strconv"
	"sync"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

const metricsNamespace = "caddy"
const metricsSubsystem = "receive_booking"

// metrics are the handler's Prometheus collectors. They are created once
// per process and registered again with each config's registry: Caddy makes
// a new registry on every reload, and counters must survive it.
type metrics struct {
	webhooks        *prometheus.CounterVec
	rejections      *prometheus.CounterVec
	upstreamReqs    *prometheus.CounterVec
	upstreamLatency prometheus.Histogram
	syncLag         prometheus.Histogram
	syncFailures    *prometheus.CounterVec
	held            prometheus.Counter
}

var (
	metricsOnce     sync.Once
	sharedCollector *metrics
)

func newMetrics() *metrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: name, Help: help}
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts(opts(name, help)), labels)
	}
	return &metrics{
		webhooks:     counter("webhooks_total", "Webhooks answered, by normalised event type and outcome.", "event_type", "outcome"),
		rejections:   counter("rejections_total", "Webhooks rejected, by reason.", "reason"),
		upstreamReqs: counter("upstream_requests_total", "Calls to import-bookings, by HTTP status (0: no answer).", "code"),
		upstreamLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "upstream_duration_seconds",
			Help:    "Duration of calls to import-bookings.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 20, 40, 80, 160},
		}),
		syncFailures: counter("sync_failures_total", "Queued syncs that ended without syncing: kind final (a final answer: cancelled at once) or exhausted (out of attempts: discarded, the dead letter), by import-bookings' outcome (none: no envelope; other: an outcome this module does not know).", "kind", "outcome"),
		held: prometheus.NewCounter(prometheus.CounterOpts(opts("held_attempts_total",
			"Queued sync attempts that import-bookings answered mutating_sync_paused: the sync is held, tried again without spending an attempt, for hold_budget."))),
		syncLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "sync_lag_seconds",
			Help:    "Time from a webhook being accepted to its booking being synced: one sample per sync, from the first webhook it covers (merged webhooks and senders sharing a call add none).",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600},
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.webhooks, m.rejections, m.upstreamReqs, m.upstreamLatency, m.syncLag, m.syncFailures, m.held}
}

// provisionMetrics registers the shared collectors with this config's
// registry, or returns nil when metrics are off (every method is nil-safe).
func provisionMetrics(ctx caddy.Context, disabled bool, logger *zap.Logger) *metrics {
	if disabled {
		return nil
	}
	metricsOnce.Do(func() {
		sharedCollector = newMetrics()
		// The failure counters exist from the start, at 0, so that an
		// alert on their increase sees the first failure.
		for _, kind := range []string{queue.FailureFinal, queue.FailureExhausted} {
			for _, outcome := range failureOutcomes() {
				sharedCollector.syncFailures.WithLabelValues(kind, outcome)
			}
		}
	})
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return sharedCollector
	}
	for _, c := range sharedCollector.collectors() {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				logger.Warn("registering metric", zap.Error(err))
			}
		}
	}
	return sharedCollector
}

func (m *metrics) observeAnswer(a *answer) {
	if m == nil {
		return
	}
	event := "other"
	if a.wh != nil {
		event = payload.MetricEventType(a.wh.EventType)
	}
	m.webhooks.WithLabelValues(event, a.outcome).Inc()
	if a.outcome == outcomeRejected || a.reason == "queue_unavailable" {
		m.rejections.WithLabelValues(a.reason).Inc()
	}
}

func (m *metrics) observeUpstream(res *upstream.Result) {
	if m == nil {
		return
	}
	m.upstreamReqs.WithLabelValues(strconv.Itoa(res.Status)).Inc()
	m.upstreamLatency.Observe(res.Duration.Seconds())
}

func (m *metrics) observeSyncLag(acceptedAt time.Time) {
	if m == nil || acceptedAt.IsZero() {
		return
	}
	m.syncLag.Observe(time.Since(acceptedAt).Seconds())
}

// Failed counts a queued sync that ended without syncing.
func (m *metrics) Failed(kind, outcome string) {
	if m != nil {
		m.syncFailures.WithLabelValues(kind, failureOutcome(outcome)).Inc()
	}
}

// failureOutcomes are the values of sync_failures_total's outcome label:
// import-bookings' known outcomes, "none" (no envelope: an HTTP status, a
// network error) and "other" (an outcome this module does not know), so
// that an upstream cannot blow up the label's cardinality.
func failureOutcomes() []string {
	out := []string{"none", "other"}
	for name := range upstream.DefaultOutcomes {
		out = append(out, name)
	}
	return out
}

func failureOutcome(outcome string) string {
	switch _, known := upstream.DefaultOutcomes[outcome]; {
	case outcome == "":
		return "none"
	case known:
		return outcome
	}
	return "other"
}

// queueCollector reads the queue gauges when Prometheus scrapes, from the
// engines of the config it was registered for, labelled by queue: true at
// the first scrape after start, and two queues never overwrite each other.
// Their counts are kept by triggers (SQLite) or indexed (PostgreSQL): a
// scrape costs milliseconds.
type queueCollector struct{ app *App }

var (
	descQueueJobs = prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_queue_jobs",
		"Sync jobs in the queue, by state (shared by every instance on a PostgreSQL queue).", []string{"queue", "state"}, nil)
	descQueueOldest = prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_queue_oldest_pending_seconds",
		"Age of the oldest sync job not yet done (available, retryable, scheduled or running).", []string{"queue"}, nil)
	descQueueUp = prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_queue_up",
		"1 when the queue can record webhooks (its database is reached and its last write committed), else 0.", []string{"queue"}, nil)
	descQueueHeld = prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_queue_held",
		"Bookings whose sync import-bookings' pause (mutating_sync_paused) holds: tried again without spending attempts.", []string{"queue"}, nil)
	descQueuePaused = prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_queue_paused",
		"1 for each operator's pause in effect, by route and organization (\"*\": every one); webhooks are recorded, not synced.", []string{"queue", "route", "organization"}, nil)
	descQueueMaxInFlight = prometheus.NewDesc(metricsNamespace+"_"+metricsSubsystem+"_queue_max_in_flight",
		"The cap on syncs running at once: max_in_flight across every instance on PostgreSQL (0: none), the workers on SQLite.", []string{"queue"}, nil)
)

// scrapeTimeout bounds reading one queue's counts during a scrape.
const scrapeTimeout = 3 * time.Second

func (c queueCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueueJobs, descQueueOldest, descQueueUp, descQueueMaxInFlight, descQueueHeld, descQueuePaused} {
		ch <- d
	}
}

func (c queueCollector) Collect(ch chan<- prometheus.Metric) {
	for _, e := range c.app.engines() {
		id := e.ID()
		ch <- prometheus.MustNewConstMetric(descQueueMaxInFlight, prometheus.GaugeValue, float64(e.MaxInFlight()), id)
		ctx, cancel := context.WithTimeout(context.Background(), scrapeTimeout)
		s, err := e.Stats(ctx)
		cancel()
		up := e.Up() && err == nil
		ch <- prometheus.MustNewConstMetric(descQueueUp, prometheus.GaugeValue, boolFloat(up), id)
		if err != nil {
			continue // the counts are unknown: absent rather than 0
		}
		for _, state := range queue.States {
			ch <- prometheus.MustNewConstMetric(descQueueJobs, prometheus.GaugeValue, float64(s.Counts[state]), id, state)
		}
		ch <- prometheus.MustNewConstMetric(descQueueOldest, prometheus.GaugeValue, s.OldestPendingSeconds, id)
		ch <- prometheus.MustNewConstMetric(descQueueHeld, prometheus.GaugeValue, float64(s.Held), id)
		for _, p := range s.Paused {
			ch <- prometheus.MustNewConstMetric(descQueuePaused, prometheus.GaugeValue, 1, id, cmp.Or(p.Route, "*"), cmp.Or(p.OrganizationID, "*"))
		}
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// registerQueueCollector registers the app's queue gauges with the
// config's registry (a new one on each reload; the app is new too).
func registerQueueCollector(ctx caddy.Context, a *App) {
	reg := ctx.GetMetricsRegistry()
	if reg == nil {
		return
	}
	if err := reg.Register(queueCollector{a}); err != nil {
		var already prometheus.AlreadyRegisteredError
		if !errors.As(err, &already) {
			a.logger.Warn("registering queue metrics", zap.Error(err))
		}
	}
}

package receivebooking

// Prometheus metrics through Caddy's registry: webhooks by outcome,
// rejections, upstream calls, sync lag and queue gauges.

import (
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
	queueJobs       *prometheus.GaugeVec
	queueOldest     prometheus.Gauge
	syncLag         prometheus.Histogram
	syncFailures    *prometheus.CounterVec
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
		syncFailures: counter("sync_failures_total", "Queued syncs that ended without syncing: kind final (a final answer: cancelled at once) or exhausted (out of attempts: discarded, the dead letter).", "kind"),
		queueJobs:    prometheus.NewGaugeVec(prometheus.GaugeOpts(opts("queue_jobs", "Sync jobs in the queue, by state.")), []string{"state"}),
		queueOldest: prometheus.NewGauge(prometheus.GaugeOpts(opts("queue_oldest_pending_seconds",
			"Age of the oldest sync job not yet done (available, retryable, scheduled or running)."))),
		syncLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: metricsNamespace, Subsystem: metricsSubsystem, Name: "sync_lag_seconds",
			Help:    "Time from a webhook being accepted to its booking being synced.",
			Buckets: []float64{.05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600},
		}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.webhooks, m.rejections, m.upstreamReqs, m.upstreamLatency, m.queueJobs, m.queueOldest, m.syncLag, m.syncFailures}
}

// provisionMetrics registers the shared collectors with this config's
// registry, or returns nil when metrics are off (every method is nil-safe).
func provisionMetrics(ctx caddy.Context, disabled bool, logger *zap.Logger) *metrics {
	if disabled {
		return nil
	}
	metricsOnce.Do(func() { sharedCollector = newMetrics() })
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
func (m *metrics) Failed(kind string) {
	if m != nil {
		m.syncFailures.WithLabelValues(kind).Inc()
	}
}

func (m *metrics) setQueueStats(s *queue.Stats) {
	if m == nil || s == nil {
		return
	}
	for _, state := range queue.StatsStates {
		m.queueJobs.WithLabelValues(state).Set(float64(s.Counts[state]))
	}
	m.queueOldest.Set(s.OldestPendingSeconds)
}

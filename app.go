package receivebooking

// The receive_booking app owns the durable queues (the sync engines) the
// way Caddy's tls app owns certificates: handlers declare in their
// Provision what they need (a queue, a route to their import-bookings
// target, the secrets to scrub), the app opens and starts the engines in
// Start and releases them in Stop. Provision does no I/O, so `caddy
// validate` can run beside a live server.

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyevents"
	"go.uber.org/zap"
)

const appName = "receive_booking"

func init() {
	caddy.RegisterModule(new(App))
}

// App runs the sync engines of every receive_booking handler in the
// config. It needs no configuration: handlers load it with ctx.App and
// declare their queues, routes and secrets.
type App struct {
	mu     sync.Mutex
	uses   map[string]*engineUse // by pool key
	logger *zap.Logger
	ctx    caddy.Context
	events *caddyevents.App

	// Events wait until the config is running: Caddy starts its apps in
	// no fixed order, and the events app must not be used before its own
	// Start. pending holds those emitted before (a bounded few).
	evMu    sync.Mutex
	live    bool
	pending []pendingEvent
}

type pendingEvent struct {
	name string
	data map[string]any
}

// engineUse is what this config's handlers need from one database's engine.
type engineUse struct {
	rq     *queue.Config
	routes map[string]*upstream.Client
	// users[route] is the first handler that declared the route, and
	// first the first that declared the queue, for conflict errors.
	users    map[string]place
	first    place
	secrets  []string
	ref      *engineRef
	metrics  *metrics // nil when off
	acquired bool     // Start took the engine from the pool
}

// CaddyModule returns the Caddy module information.
func (*App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  appName,
		New: func() caddy.Module { return new(App) },
	}
}

// Provision prepares an empty app; handlers fill it during their own
// Provision.
func (a *App) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	a.uses = make(map[string]*engineUse)
	a.ctx = ctx
	ev, err := ctx.App("events")
	if err != nil {
		return fmt.Errorf("loading the events app: %w", err)
	}
	a.events = ev.(*caddyevents.App)
	registerQueueCollector(ctx, a)
	return nil
}

// Events this app emits through Caddy's events app, for Caddy's own event
// handlers (the origin module is receive_booking). Their data never holds
// a secret.
const (
	// EventSyncFailed: a queued sync ended with a final answer (the job is
	// cancelled). Data: queue, booking_id, organization_id, outcome,
	// reason, job_id, attempt.
	EventSyncFailed = "sync_failed"
	// EventSyncExhausted: a queued sync ran out of attempts (the job is
	// discarded, the dead letter). Data as EventSyncFailed.
	EventSyncExhausted = "sync_exhausted"
	// EventQueueUnavailable: webhooks cannot be recorded. Data: queue,
	// reason.
	EventQueueUnavailable = "queue_unavailable"
	// EventQueueAvailable: webhooks can be recorded again. Data: queue.
	EventQueueAvailable = "queue_available"
)

// engineObserver feeds an engine's news to the metrics and to Caddy's events.
type engineObserver struct {
	a *App
	m *metrics
}

func (o engineObserver) Synced(acceptedAt time.Time) { o.m.observeSyncLag(acceptedAt) }

func (o engineObserver) Held(string) { o.m.held.Inc() }

func (o engineObserver) Failed(f queue.Failure) {
	o.m.Failed(f.Kind, f.Outcome)
	name := EventSyncFailed
	if f.Kind == queue.FailureExhausted {
		name = EventSyncExhausted
	}
	o.a.emit(name, map[string]any{"queue": f.Queue, "booking_id": f.BookingID, "organization_id": f.OrganizationID,
		"outcome": f.Outcome, "reason": f.Reason, "job_id": f.JobID, "attempt": f.Attempt})
}

func (o engineObserver) Availability(queueKey string, available bool, reason string) {
	if available {
		o.a.emit(EventQueueAvailable, map[string]any{"queue": queueKey})
		return
	}
	o.a.emit(EventQueueUnavailable, map[string]any{"queue": queueKey, "reason": reason})
}

func (a *App) emit(name string, data map[string]any) {
	if a.events == nil {
		return
	}
	a.evMu.Lock()
	if !a.live {
		if len(a.pending) < 64 {
			a.pending = append(a.pending, pendingEvent{name, data})
		}
		a.evMu.Unlock()
		return
	}
	a.evMu.Unlock()
	a.events.Emit(a.ctx, name, data)
}

// goLive lets events through once this app's config is the running one
// (every app, the events app included, has started), and sends those that
// came before.
func (a *App) goLive() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-a.ctx.Done():
			return
		case <-t.C:
		}
		if activeApp() != a {
			continue
		}
		a.evMu.Lock()
		a.live = true
		pending := a.pending
		a.pending = nil
		a.evMu.Unlock()
		for _, e := range pending {
			a.events.Emit(a.ctx, e.name, e.data)
		}
		return
	}
}

// loadApp returns the config's receive_booking app, loading it if needed.
func loadApp(ctx caddy.Context) (*App, error) {
	v, err := ctx.App(appName)
	if err != nil {
		return nil, err
	}
	return v.(*App), nil
}

// use declares that a handler (at who, named in errors) syncs through
// the queue rq under route name, calling up, and that secrets must never
// leave the engine. Handlers sharing a database must agree on its worker
// settings, and a route name means one target and key.
func (a *App) use(who place, rq *queue.Config, route string, up *upstream.Client, secrets []string, m *metrics) (*engineRef, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := rq.Key()
	u := a.uses[key]
	if u == nil {
		u = &engineUse{rq: rq, routes: map[string]*upstream.Client{}, users: map[string]place{}, ref: newEngineRef(), first: who}
		a.uses[key] = u
	}
	if diff := u.rq.SettingsDiff(rq); diff != "" {
		first, second := namePair(u.first, who)
		return nil, fmt.Errorf("queue %s: %s and %s share it but set different %s; give them the same settings",
			rq.Describe(), first, second, diff)
	}
	if other, ok := u.routes[route]; ok && !other.SameTarget(up) {
		first, second := namePair(u.users[route], who)
		return nil, fmt.Errorf("route %q: %s and %s use it on queue %s with different targets or keys; give each target its own route name",
			route, first, second, rq.Describe())
	}
	if _, ok := u.routes[route]; !ok {
		u.users[route] = who
	}
	u.routes[route] = up
	u.secrets = append(u.secrets, secrets...)
	if m != nil {
		u.metrics = m
	}
	return u.ref, nil
}

// Start opens (or takes over, on a reload) every engine this config uses.
// A database that cannot be reached does not stop Caddy: its engine keeps
// trying, and its handlers answer 503 meanwhile.
func (a *App) Start() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	go a.goLive()
	for _, key := range a.keys() {
		u := a.uses[key]
		val, _, err := queuePool.LoadOrNew(key, func() (caddy.Destructor, error) {
			return queue.New(u.rq, a.logger.Named("queue")), nil
		})
		if err != nil {
			return err
		}
		u.acquired = true
		e := val.(*queue.Engine)
		e.Attach(a, u.routes, u.secrets, u.rq.Settings)
		e.SetObserver(engineObserver{a: a, m: u.metrics})
		u.ref.bind(e)
	}
	return nil
}

// Stop does nothing: the engines are released in Cleanup, after the HTTP
// servers have drained.
func (a *App) Stop() error { return nil }

// Cleanup releases this config's hold on its engines once every app of the
// config has stopped (an engine stops when no config uses it any more):
// Caddy stops its apps in no fixed order, and the http app's Stop is what
// drains the requests in flight (its grace period). Released in Stop, an
// engine could go while those requests still record webhooks (503s) or
// wait for their sync. Caddy calls Cleanup after every app's Stop, and on
// a reload only after the new config has started (which took the engine
// from the pool too, so it stays open).
func (a *App) Cleanup() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []string
	for _, key := range a.keys() {
		u := a.uses[key]
		if !u.acquired {
			continue // never started: the pool's engine is another config's
		}
		u.acquired = false
		if e := u.ref.get(); e != nil {
			e.Detach(a)
		}
		if _, err := queuePool.Delete(key); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("stopping queues: %s", strings.Join(errs, "; "))
	}
	return nil
}

func (a *App) keys() []string {
	keys := make([]string, 0, len(a.uses))
	for k := range a.uses {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// engines returns the engines this config runs, ordered by key.
func (a *App) engines() []*queue.Engine {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []*queue.Engine
	for _, key := range a.keys() {
		if e := a.uses[key].ref.get(); e != nil {
			out = append(out, e)
		}
	}
	return out
}

// activeApp is the running config's app, for the admin API; nil when the
// running config has no receive_booking handler with a queue.
func activeApp() *App {
	v, err := caddy.ActiveContext().AppIfConfigured(appName)
	if err != nil {
		return nil
	}
	a, _ := v.(*App)
	return a
}

// Interface guards
var (
	_ caddy.App          = (*App)(nil)
	_ caddy.Provisioner  = (*App)(nil)
	_ caddy.CleanerUpper = (*App)(nil)
)

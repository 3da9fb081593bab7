package queue

// The queue in a browser: River UI (riverqueue.com/riverui, its web assets
// built in) on the engine's River client, read-only, its log lines through
// the engine's scrubber. Its own write buttons (retry, cancel, delete,
// pause) would bypass the booking rows that keep one sync per booking: they
// are refused, and the admin API and the `caddy receive-booking` commands
// do those things through the engine. Who may see it is decided in front
// (the receive_booking_dashboard handler).

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"

	"riverqueue.com/riverui"
)

// dashboard serves River UI for one River client.
type dashboard struct {
	client  any // the *river.Client it was built for
	handler http.Handler
	stop    context.CancelFunc
}

// dashboards are the River UIs of a backend, by path prefix.
type dashboards struct {
	mu       sync.Mutex
	byPrefix map[string]*dashboard
}

// Dashboard returns a read-only River UI for the queue, served under
// prefix (the path it is mounted at), or an error saying why the queue is
// away. hideArgs hides each job's args (booking and organization ids) in
// the list until the viewer asks for them.
func (e *Engine) Dashboard(prefix string, hideArgs bool) (http.Handler, error) {
	b, err := e.current()
	if err != nil {
		return nil, err
	}
	return b.dashboard(prefix, hideArgs)
}

func (b *riverBackend[TDriver, TTx]) dashboard(prefix string, hideArgs bool) (http.Handler, error) {
	c := b.cl()
	b.dash.mu.Lock()
	defer b.dash.mu.Unlock()
	key := fmt.Sprintf("%t %s", hideArgs, prefix)
	if d := b.dash.byPrefix[key]; d != nil && d.client == any(c) {
		return d.handler, nil
	}
	h, err := riverui.NewHandler(&riverui.HandlerOpts{
		Endpoints:                riverui.NewEndpoints[TTx](c, nil),
		JobListHideArgsByDefault: hideArgs,
		// River UI logs its API errors (a bad request at info, a failed
		// query at error): to the module's logger, scrubbed.
		Logger: b.q.slogger("riverui"),
		Prefix: prefix,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := h.Start(ctx); err != nil {
		cancel()
		return nil, err
	}
	if d := b.dash.byPrefix[key]; d != nil {
		d.stop() // built for a River client a restart replaced
	}
	if b.dash.byPrefix == nil {
		b.dash.byPrefix = make(map[string]*dashboard)
	}
	d := &dashboard{client: c, handler: readOnly(h), stop: cancel}
	b.dash.byPrefix[key] = d
	return d.handler, nil
}

// closeDashboard stops the dashboard's background services.
func (b *riverBackend[TDriver, TTx]) closeDashboard() {
	b.dash.mu.Lock()
	defer b.dash.mu.Unlock()
	for _, d := range b.dash.byPrefix {
		d.stop()
	}
	b.dash.byPrefix = nil
}

// readOnly refuses every request that is not a read: the dashboard must not
// retry, cancel or delete jobs, nor pause queues.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("Allow", "GET, HEAD")
			w.WriteHeader(http.StatusForbidden)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": "the dashboard is read-only: replay and delete jobs with the admin API or caddy receive-booking"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

package receivebooking

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
)

// Shared by the unit tests of ServeHTTP, the coalescer and the logging.
// Both values are distinctive so that a leak into a log line or an answer
// is found by a plain substring search.
const (
	utSecret    = "s3cr3t-value-XYZ"
	utSecret2   = "second-R0tated-secret"
	utTargetKey = "tk-SECRET-123"
	utPath      = "/functions/v1/import-bookings"
	// utOrg is the organization utSecret belongs to in test handlers.
	utOrg = "org-1"
	// utUpstreamOK is import-bookings' answer to a sync of booking b-1 of
	// utOrg (the stand-in's default answer echoes each call's ids).
	utUpstreamOK = `{"success":true,"queued":false,"completed":true,"sync_mode":"single","booking_id":"b-1","organization_id":"org-1","outcome":"applied"}`
)

// newTestHandler provisions and validates a Handler in front of target,
// with utSecret bound to utOrg, utTargetKey, a 1s timeout and metrics off;
// configure may change any config field before provisioning. The logger
// is a no-op.
func newTestHandler(t testing.TB, target string, configure func(*Handler)) *Handler {
	t.Helper()
	h, err := provisionTestHandler(t, target, configure)
	require.NoError(t, err)
	return h
}

// provisionTestHandler is newTestHandler that returns the Provision or
// Validate error instead of failing.
func provisionTestHandler(t testing.TB, target string, configure func(*Handler)) (*Handler, error) {
	t.Helper()
	h := &Handler{
		Organizations:  []Organization{{ID: utOrg, Secrets: []string{utSecret}}},
		Target:         target,
		TargetKey:      utTargetKey,
		Timeout:        "1s",
		DisableMetrics: true,
	}
	if configure != nil {
		configure(h)
	}
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	if err := h.Provision(ctx); err != nil {
		return nil, err
	}
	if err := h.Validate(); err != nil {
		return nil, err
	}
	h.logger = zap.NewNop()
	return h, nil
}

// sharedKey makes utSecret a shared key, which may act for any
// organization (the body must name one).
func sharedKey(h *Handler) { h.Organizations, h.Secrets = nil, []string{utSecret} }

// webhookRequest builds a POST with the given body and headers (name,
// value pairs).
func webhookRequest(method, body string, headerPairs ...string) *http.Request {
	r := httptest.NewRequest(method, "/webhooks/booking", strings.NewReader(body))
	for i := 0; i+1 < len(headerPairs); i += 2 {
		r.Header.Add(headerPairs[i], headerPairs[i+1])
	}
	return r
}

// serveTest runs ServeHTTP with a next handler that fails the test if the
// terminal handler ever calls it.
func serveTest(t testing.TB, h *Handler, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	w := httptest.NewRecorder()
	next := nextMustNotRun{t}
	require.NoError(t, h.ServeHTTP(w, r, next))
	return w
}

type nextMustNotRun struct{ t testing.TB }

func (n nextMustNotRun) ServeHTTP(http.ResponseWriter, *http.Request) error {
	n.t.Errorf("receive_booking called the next handler: it must be terminal")
	return nil
}

// postAuthed sends body as a webhook carrying utSecret in x-api-key.
func postAuthed(t testing.TB, h *Handler, body string) *httptest.ResponseRecorder {
	t.Helper()
	return serveTest(t, h, webhookRequest(http.MethodPost, body, "X-Api-Key", utSecret, "Content-Type", "application/json"))
}

// decodeObject decodes a JSON object answer.
func decodeObject(t testing.TB, raw string) map[string]any {
	t.Helper()
	var m map[string]any
	require.NoError(t, json.Unmarshal([]byte(raw), &m), "answer is not a JSON object: %q", raw)
	return m
}

// coalescerIdle reports whether the coalescer tracks no booking any more.
func coalescerIdle(c *coalescer) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.bookings) == 0
}

// eventually polls cond every 5ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// goroutinesSettle waits until the number of goroutines is at most limit.
func goroutinesSettle(limit int, d time.Duration) (int, bool) {
	n := runtime.NumGoroutine()
	ok := eventually(d, func() bool {
		n = runtime.NumGoroutine()
		return n <= limit
	})
	return n, ok
}

// openTestQueue starts a real engine on a SQLite file in a temporary
// directory, or on a fresh PostgreSQL database, with routes registered as
// a config's handlers would, and waits until it is connected.
func openTestQueue(t *testing.T, rq *queue.Config, routes map[string]*upstream.Client) *queue.Engine {
	t.Helper()
	if rq.Location == "" {
		if rq.Driver == queue.SQLite {
			rq.Location = filepath.Join(t.TempDir(), "queue.sqlite3")
		} else {
			rq.Location = testkit.FreshPostgresDSN(t)
		}
	}
	e := queue.New(rq, zaptest.NewLogger(t))
	t.Cleanup(func() { assert.NoError(t, e.Destruct()) })
	e.Attach(t, routes, nil, rq.Settings)
	require.Eventually(t, func() bool { return e.Health(t.Context()) == nil }, 15*time.Second, 10*time.Millisecond,
		"the queue connects")
	return e
}

// testQueueHandle records webhooks on an engine under one route, as a
// handler does.
type testQueueHandle struct {
	q     *queue.Engine
	route string
}

func (h *testQueueHandle) enqueue(ctx context.Context, wh *payload.Webhook, window time.Duration) (int64, bool, error) {
	now := time.Now()
	req := &queue.Entry{Webhook: wh, Route: h.route, AcceptedAt: now, NotBefore: now.Add(window)}
	err := h.q.Record(ctx, req)
	return req.JobID, req.Coalesced, err
}

func testWebhook(id string) *payload.Webhook {
	return &payload.Webhook{BookingID: json.RawMessage(`"` + id + `"`), BookingKey: id, OrganizationID: "org", EventType: "updated"}
}

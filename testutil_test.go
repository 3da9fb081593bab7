package receivebooking

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
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
	utSecret     = "s3cr3t-value-XYZ"
	utSecret2    = "second-R0tated-secret"
	utTargetKey  = "tk-SECRET-123"
	utPath       = "/functions/v1/import-bookings"
	utUpstreamOK = `{"success":true,"booking":{"id":"b-1"}}`
)

// upstreamCall is one request import-bookings received.
type upstreamCall struct {
	method     string
	path       string
	remoteAddr string
	rawQuery   string
	header     http.Header
	body       string
}

// importStandIn is a real loopback HTTP server that stands in for
// import-bookings: it records every request (method, path, headers, body)
// and then answers with respond. arrived receives one value per request,
// when it has been recorded; cancelled one value per request whose context
// ended while respond was still running (the handler's call was cancelled).
type importStandIn struct {
	*httptest.Server
	mu        sync.Mutex
	got       []upstreamCall
	arrived   chan struct{}
	cancelled chan struct{}
}

// newImportStandIn starts the stand-in; respond nil answers 200 utUpstreamOK.
func newImportStandIn(t testing.TB, respond func(w http.ResponseWriter, r *http.Request)) *importStandIn {
	t.Helper()
	if respond == nil {
		respond = answerJSON(http.StatusOK, utUpstreamOK)
	}
	s := &importStandIn{arrived: make(chan struct{}, 1024), cancelled: make(chan struct{}, 1024)}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.got = append(s.got, upstreamCall{
			method: r.Method, path: r.URL.Path, rawQuery: r.URL.RawQuery, remoteAddr: r.RemoteAddr,
			header: r.Header.Clone(), body: string(body),
		})
		s.mu.Unlock()
		s.arrived <- struct{}{}
		respond(w, r)
		if r.Context().Err() != nil {
			s.cancelled <- struct{}{}
		}
	}))
	t.Cleanup(s.Close)
	return s
}

// calls returns a copy of what was received so far.
func (s *importStandIn) calls() []upstreamCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]upstreamCall(nil), s.got...)
}

// target is the stand-in's import-bookings URL.
func (s *importStandIn) target() string { return s.URL + utPath }

// answerJSON answers with a fixed status and body.
func answerJSON(status int, body string) func(http.ResponseWriter, *http.Request) {
	return answerTyped(status, "application/json", body)
}

func answerTyped(status int, contentType, body string) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", contentType)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// blockUntil answers utUpstreamOK once release is closed, or gives up when
// the caller cancels the request (which importStandIn then records) or
// after a safety limit, so that a broken test never hangs.
func blockUntil(release <-chan struct{}) func(http.ResponseWriter, *http.Request) {
	return func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
			answerJSON(http.StatusOK, utUpstreamOK)(w, r)
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// waitFor receives one value from ch or fails the test after d.
func waitFor(t *testing.T, ch <-chan struct{}, d time.Duration, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
	}
}

// newTestHandler provisions and validates a Handler in front of target,
// with utSecret, utTargetKey, a 1s timeout and metrics off; configure may
// change any config field before provisioning. The logger is a no-op.
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
		Secrets:        []string{utSecret},
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

// closedPortURL is an http URL on loopback where nothing listens.
func closedPortURL(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return "http://" + addr
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

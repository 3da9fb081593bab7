package receivebooking

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"slices"
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
)

const (
	adminTargetKey = "tk-secret"
	adminPGPass    = "rb-test-secret-pw"
	adminPoll      = 25 * time.Millisecond
	adminWait      = 10 * time.Second
)

// adminEnv is a real queue (SQLite file or PostgreSQL database) with a real
// upstream, and the admin routes mounted on an HTTP server that renders
// their errors as Caddy's admin endpoint does. It keeps every answer, to
// look for secrets in them.
type adminEnv struct {
	t      *testing.T
	q      *queue.Engine
	dsn    string
	qh     *testQueueHandle
	up     *testkit.StandIn
	gate   chan struct{} // while set, syncs are held until it closes
	srv    *httptest.Server
	mu     sync.Mutex
	bodies strings.Builder
}

func openAdminQueue(t *testing.T, driver string, routes map[string]*upstream.Client) (*queue.Engine, *queue.Config) {
	t.Helper()
	rq := &queue.Config{Driver: driver, Settings: queue.Settings{Workers: 2, MaxAttempts: 1, WorkerTimeout: 5 * time.Second}}
	return openTestQueue(t, rq, routes), rq
}

func newAdminEnv(t *testing.T, driver string) *adminEnv {
	t.Helper()
	up := testkit.NewStandIn(t) // answers import-bookings' envelope: a sync
	u, err := url.Parse(up.URL)
	require.NoError(t, err)
	up0 := upstream.New(u, adminTargetKey, userAgent, nil)
	q, rq := openAdminQueue(t, driver, map[string]*upstream.Client{queue.DefaultRoute: up0})
	q.Attach("secrets", nil, []string{adminTargetKey}, rq.Settings)
	e := &adminEnv{t: t, q: q, dsn: rq.Location, up: up, qh: &testQueueHandle{q: q, route: queue.DefaultRoute}}
	t.Cleanup(e.release) // before the queue stops: no sync stays held
	e.srv = newAdminServer(t, q)
	return e
}

// hold keeps every later sync open until release (then it is synced).
func (e *adminEnv) hold() {
	e.gate = make(chan struct{})
	e.up.Respond(testkit.BlockUntil(e.gate))
}

func (e *adminEnv) release() {
	if e.gate != nil {
		close(e.gate)
		e.gate = nil
	}
}

// newAdminServer mounts AdminAPI's routes as Caddy's admin endpoint does,
// and writes their errors as it does: only an unwrapped caddy.APIError
// keeps its status; its message is written as {"error": "..."}.
func newAdminServer(t *testing.T, engines ...*queue.Engine) *httptest.Server {
	mux := http.NewServeMux()
	api := new(AdminAPI) // as Caddy instantiates it, but serving these queues
	api.engines = func() []*queue.Engine {
		slices.SortFunc(engines, func(a, b *queue.Engine) int { return strings.Compare(a.ID(), b.ID()) })
		return engines
	}
	var mod caddy.Module = api
	for _, route := range mod.(caddy.AdminRouter).Routes() {
		h := route.Handler
		mux.HandleFunc(route.Pattern, func(w http.ResponseWriter, r *http.Request) {
			err := h.ServeHTTP(w, r)
			if err == nil {
				return
			}
			apiErr, ok := err.(caddy.APIError)
			if !ok {
				t.Errorf("%s %s: not a caddy.APIError: %v", r.Method, r.URL, err)
				apiErr = caddy.APIError{HTTPStatus: http.StatusInternalServerError, Err: err}
			}
			if apiErr.Message == "" && apiErr.Err != nil {
				apiErr.Message = apiErr.Err.Error()
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(apiErr.HTTPStatus)
			_ = json.NewEncoder(w).Encode(apiErr)
		})
	}
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// doAdmin sends one request and decodes its JSON answer; every answer,
// error or not, must be JSON.
func doAdmin(t *testing.T, base, method, path string) (int, map[string]any, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, base+path, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"), "%s %s", method, path)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out), "%s %s: %s", method, path, raw)
	return resp.StatusCode, out, resp.Header, string(raw)
}

// call sends a request to this env's queue (named with ?queue=).
func (e *adminEnv) call(method, path string) (int, map[string]any, http.Header) {
	e.t.Helper()
	sep := "?"
	if strings.Contains(path, "?") {
		sep = "&"
	}
	status, out, hdr, raw := doAdmin(e.t, e.srv.URL, method, path+sep+"queue="+url.QueryEscape(e.q.ID()))
	e.mu.Lock()
	e.bodies.WriteString(raw)
	e.mu.Unlock()
	return status, out, hdr
}

// expect sends a request and requires its status.
func (e *adminEnv) expect(method, path string, want int) map[string]any {
	e.t.Helper()
	status, out, _ := e.call(method, path)
	require.Equal(e.t, want, status, "%s %s: %v", method, path, out)
	return out
}

// enqueue records a webhook for booking of organization "org", as the
// handler records a parsed one (organization_id and event_type as Parse
// leaves them).
func (e *adminEnv) enqueue(booking string, window time.Duration) int64 {
	e.t.Helper()
	wh := &payload.Webhook{BookingID: json.RawMessage(`"` + booking + `"`), BookingKey: booking,
		OrganizationID: "org", OrganizationIDJSON: json.RawMessage(`"org"`), EventType: "booking.updated"}
	id, _, err := e.qh.enqueue(e.t.Context(), wh, window)
	require.NoError(e.t, err)
	return id
}

func (e *adminEnv) list(query string) []map[string]any {
	e.t.Helper()
	out := e.expect(http.MethodGet, "/receive_booking/jobs?"+query, http.StatusOK)
	raw, ok := out["jobs"].([]any)
	require.True(e.t, ok, "jobs is an array: %v", out)
	jobs := make([]map[string]any, len(raw))
	for i, j := range raw {
		jobs[i] = j.(map[string]any)
	}
	return jobs
}

func (e *adminEnv) waitState(id int64, state string) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		_, out, _ := e.call(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", id))
		return out["state"] == state
	}, adminWait, adminPoll, "job %d becomes %s", id, state)
}

func (e *adminEnv) waitCount(state string, n int) {
	e.t.Helper()
	require.Eventually(e.t, func() bool { return len(e.list("state="+state)) == n },
		adminWait, adminPoll, "%d jobs become %s", n, state)
}

func adminJobID(j map[string]any) int64 { return int64(j["id"].(float64)) }

// TestAdminAPI runs the operator's scenario on a real queue: syncs fail
// permanently (cancelled) and out of attempts (discarded); list them, read
// one, replay one, then all once the upstream recovers; delete; stats;
// health; and every error answer. No answer may carry the upstream key or
// the database password.
func TestAdminAPI(t *testing.T) {
	for _, driver := range []string{queue.SQLite, queue.Postgres} {
		t.Run(driver, func(t *testing.T) { runAdminScenario(t, driver) })
	}
}

func runAdminScenario(t *testing.T, driver string) {
	e := newAdminEnv(t, driver)
	secrets := []string{adminTargetKey}
	leak := adminTargetKey
	if driver == queue.Postgres {
		// The upstream's answer, kept in the job's error, quotes the
		// database password: the admin API must scrub it.
		secrets = append(secrets, adminPGPass, e.dsn)
		leak += " " + adminPGPass
	}

	// Permanent rejections end as cancelled, 503s out of attempts as discarded.
	e.up.Respond(testkit.JSON(http.StatusBadRequest, `{"success":false,"error":"bad request, key `+leak+`"}`))
	for _, b := range []string{"c1", "c2", "c3"} {
		e.enqueue(b, 0)
	}
	e.waitCount("cancelled", 3)
	e.up.Respond(testkit.JSON(http.StatusServiceUnavailable, `{"error":"down, key `+leak+`"}`))
	d1, d2 := e.enqueue("d1", 0), e.enqueue("d2", 0)
	e.waitCount("discarded", 2)

	// List: the default state is discarded; pages by id.
	discarded := e.list("")
	require.Len(t, discarded, 2)
	assert.Equal(t, d1, adminJobID(discarded[0]))
	assert.Equal(t, d2, adminJobID(discarded[1]))
	assert.Contains(t, discarded[0]["last_error"], "upstream status 503")

	page := e.expect(http.MethodGet, "/receive_booking/jobs?state=cancelled&limit=2", 200)
	jobs := page["jobs"].([]any)
	require.Len(t, jobs, 2)
	c1 := jobs[0].(map[string]any)
	assert.Equal(t, adminJobID(jobs[1].(map[string]any)), int64(page["next_after"].(float64)))
	rest := e.expect(http.MethodGet, fmt.Sprintf("/receive_booking/jobs?state=cancelled&limit=2&after=%v", page["next_after"]), 200)
	require.Len(t, rest["jobs"], 1)
	assert.Equal(t, "c3", rest["jobs"].([]any)[0].(map[string]any)["booking_key"])
	assert.NotContains(t, rest, "next_after", "the last page has no next")

	// A listed job: the listed fields, and no other arg.
	assert.Equal(t, "cancelled", c1["state"])
	assert.Equal(t, "c1", c1["booking_id"])
	assert.Equal(t, "c1", c1["booking_key"])
	assert.Equal(t, "org", c1["organization_id"])
	assert.Equal(t, "booking.updated", c1["event_type"])
	assert.Equal(t, float64(1), c1["attempts"])
	assert.Equal(t, float64(1), c1["max_attempts"])
	assert.Contains(t, c1["last_error"], "upstream status 400")
	assert.Contains(t, c1["last_error"], "[redacted]")
	for _, k := range []string{"created_at", "scheduled_at", "attempted_at", "finalized_at"} {
		assert.NotEmpty(t, c1[k], k)
	}
	for _, k := range []string{"target_id", "args", "accepted_at", "errors"} {
		assert.NotContains(t, c1, k)
	}

	// Filter by booking (its id as sent, or as a JSON string).
	for _, q := range []string{"booking_id=c2", `booking_id="c2"`} {
		only := e.list("state=cancelled&" + url.PathEscape(q))
		require.Len(t, only, 1, q)
		assert.Equal(t, "c2", only[0]["booking_key"])
	}
	assert.Empty(t, e.list("state=cancelled&booking_id=nope"))

	// One job with its attempt history (no stack traces).
	one := e.expect(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", d1), 200)
	history := one["errors"].([]any)
	require.Len(t, history, 1)
	attempt := history[0].(map[string]any)
	assert.Equal(t, float64(1), attempt["attempt"])
	assert.NotEmpty(t, attempt["at"])
	assert.Contains(t, attempt["error"], "upstream status 503")
	assert.NotContains(t, attempt, "trace")

	// The upstream recovers (the envelope): replay one.
	e.up.Respond(nil)
	replayed := e.expect(http.MethodPost, fmt.Sprintf("/receive_booking/jobs/%d/retry", d1), 200)
	assert.Equal(t, float64(d1), replayed["job_id"])
	assert.Equal(t, false, replayed["coalesced"])
	e.waitState(d1, "completed")
	assert.Len(t, e.up.CallsFor("d1"), 2, "the failed call and the replay")
	done := e.expect(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", d1), 200)
	assert.Equal(t, float64(2), done["attempts"])
	assert.Equal(t, float64(2), done["max_attempts"], "a replay gets a fresh budget of max_attempts (1) more attempts")
	e.expect(http.MethodPost, fmt.Sprintf("/receive_booking/jobs/%d/retry", d1), http.StatusConflict)

	// A replay for a booking with a waiting sync merges into it.
	c1ID := adminJobID(c1)
	waiting := e.enqueue("c1", 3*time.Second)
	merged := e.expect(http.MethodPost, fmt.Sprintf("/receive_booking/jobs/%d/retry", c1ID), 200)
	assert.Equal(t, float64(waiting), merged["job_id"])
	assert.Equal(t, true, merged["coalesced"])
	e.expect(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", c1ID), http.StatusNotFound)

	// Replay many: of one booking, then the rest of a state.
	assert.Equal(t, map[string]any{"replayed": float64(1), "coalesced": float64(0)},
		e.expect(http.MethodPost, "/receive_booking/retry?state=cancelled&booking_id=c2", 200))
	assert.Equal(t, map[string]any{"replayed": float64(1), "coalesced": float64(0)},
		e.expect(http.MethodPost, "/receive_booking/retry?state=cancelled", 200))
	assert.Equal(t, map[string]any{"replayed": float64(1), "coalesced": float64(0)},
		e.expect(http.MethodPost, "/receive_booking/retry", 200), "discarded by default")
	assert.Equal(t, map[string]any{"replayed": float64(0), "coalesced": float64(0)},
		e.expect(http.MethodPost, "/receive_booking/retry?state=retryable", 200))
	e.waitCount("completed", 5) // d1, c1 (merged), c2, c3, d2
	for _, b := range []string{"c1", "c2", "c3", "d2"} {
		assert.Len(t, e.up.CallsFor(b), 2, "booking %s: the failed call and one sync", b)
	}

	stats := e.expect(http.MethodGet, "/receive_booking/stats", 200)
	assert.Equal(t, e.q.ID(), stats["queue"])
	counts := stats["counts"].(map[string]any)
	for state, n := range map[string]float64{"completed": 5, "cancelled": 0, "discarded": 0, "available": 0, "running": 0} {
		assert.Equal(t, n, counts[state], state)
	}
	assert.Equal(t, float64(0), stats["oldest_pending_seconds"])
	assert.NotEmpty(t, stats["last_sync_at"])
	health := e.expect(http.MethodGet, "/receive_booking/health", 200)
	assert.Equal(t, "ok", health["status"])
	assert.Equal(t, "ok", e.expect(http.MethodGet, "/receive_booking/health?max_age=1ns", 200)["status"], "nothing pending")

	// Delete.
	deleted := e.expect(http.MethodDelete, fmt.Sprintf("/receive_booking/jobs/%d", d2), 200)
	assert.Equal(t, true, deleted["deleted"])
	assert.Equal(t, float64(d2), deleted["job"].(map[string]any)["id"])
	e.expect(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", d2), http.StatusNotFound)
	e.expect(http.MethodDelete, fmt.Sprintf("/receive_booking/jobs/%d", d2), http.StatusNotFound)

	// A running sync: cannot be deleted or replayed, and it is pending.
	e.hold()
	running := e.enqueue("r1", 0)
	e.waitState(running, "running")
	e.expect(http.MethodDelete, fmt.Sprintf("/receive_booking/jobs/%d", running), http.StatusConflict)
	e.expect(http.MethodPost, fmt.Sprintf("/receive_booking/jobs/%d/retry", running), http.StatusConflict)
	assert.Len(t, e.list("state=running"), 1)
	sick := e.expect(http.MethodGet, "/receive_booking/health?max_age=1ns", http.StatusServiceUnavailable)
	assert.Equal(t, "unhealthy", sick["status"])
	assert.Contains(t, sick["reason"], "oldest pending job")
	assert.Equal(t, "ok", e.expect(http.MethodGet, "/receive_booking/health?max_age=1h", 200)["status"])
	e.release()
	e.waitState(running, "completed")

	// Bad requests.
	for _, c := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{http.MethodGet, "/receive_booking/jobs?state=bogus", 400, ""},
		{http.MethodGet, "/receive_booking/jobs?limit=0", 400, ""},
		{http.MethodGet, "/receive_booking/jobs?limit=501", 400, ""},
		{http.MethodGet, "/receive_booking/jobs?limit=abc", 400, ""},
		{http.MethodGet, "/receive_booking/jobs?after=-1", 400, ""},
		{http.MethodGet, "/receive_booking/jobs/abc", 400, ""},
		{http.MethodGet, "/receive_booking/jobs/0", 400, ""},
		{http.MethodGet, "/receive_booking/jobs/-3", 400, ""},
		{http.MethodPost, "/receive_booking/jobs/1x/retry", 400, ""},
		{http.MethodDelete, "/receive_booking/jobs/abc", 400, ""},
		{http.MethodPost, "/receive_booking/retry?state=completed", 400, ""},
		{http.MethodPost, "/receive_booking/retry?state=running", 400, ""},
		{http.MethodPost, "/receive_booking/retry?state=bogus", 400, ""},
		{http.MethodGet, "/receive_booking/health?max_age=soon", 400, ""},
		{http.MethodGet, "/receive_booking/health?max_age=-1s", 400, ""},
		{http.MethodGet, "/receive_booking/jobs/999999999", 404, ""},
		{http.MethodPost, "/receive_booking/jobs/999999999/retry", 404, ""},
		{http.MethodDelete, "/receive_booking/jobs/999999999", 404, ""},
		{http.MethodGet, "/receive_booking/nope", 404, ""},
		{http.MethodGet, "/receive_booking/jobs/1/nope", 404, ""},
		{http.MethodPost, "/receive_booking/jobs", 405, "GET"},
		{http.MethodPut, "/receive_booking/jobs/1", 405, "GET, DELETE"},
		{http.MethodGet, "/receive_booking/jobs/1/retry", 405, "POST"},
		{http.MethodGet, "/receive_booking/retry", 405, "POST"},
		{http.MethodPost, "/receive_booking/stats", 405, "GET"},
		{http.MethodPost, "/receive_booking/health", 405, "GET, HEAD"},
	} {
		status, out, hdr := e.call(c.method, c.path)
		assert.Equal(t, c.status, status, "%s %s: %v", c.method, c.path, out)
		assert.NotEmpty(t, out["error"], "%s %s", c.method, c.path)
		if c.allow != "" {
			assert.Equal(t, c.allow, hdr.Get("Allow"), "%s %s", c.method, c.path)
		}
	}
	status, out, _, raw := doAdmin(t, e.srv.URL, http.MethodGet, "/receive_booking/stats?queue=nope")
	e.bodies.WriteString(raw)
	assert.Equal(t, http.StatusNotFound, status)
	assert.Equal(t, "no such queue", out["error"])

	all := e.bodies.String()
	require.Contains(t, all, "[redacted]", "the scrubbed errors were read")
	for _, s := range secrets {
		assert.NotContains(t, all, s, "no secret in any admin answer")
	}
}

// TestAdminAPINoQueue: without a queue, every call answers 503 (the method
// is still checked first).
func TestAdminAPINoQueue(t *testing.T) {
	srv := newAdminServer(t)
	for _, path := range []string{"/receive_booking/jobs", "/receive_booking/jobs/1", "/receive_booking/stats"} {
		status, out, _, _ := doAdmin(t, srv.URL, http.MethodGet, path)
		assert.Equal(t, http.StatusServiceUnavailable, status, path)
		assert.Equal(t, map[string]any{"error": "no queue is configured"}, out, path)
	}
	status, out, _, _ := doAdmin(t, srv.URL, http.MethodPost, "/receive_booking/retry")
	assert.Equal(t, http.StatusServiceUnavailable, status)
	assert.Equal(t, "no queue is configured", out["error"])
	status, out, _, _ = doAdmin(t, srv.URL, http.MethodGet, "/receive_booking/health")
	assert.Equal(t, http.StatusServiceUnavailable, status)
	assert.Equal(t, map[string]any{"status": "unhealthy", "reason": "no queue is configured"}, out)
	status, _, _, _ = doAdmin(t, srv.URL, http.MethodDelete, "/receive_booking/stats")
	assert.Equal(t, http.StatusMethodNotAllowed, status)
}

// TestAdminAPISeveralQueues: the first queue (by key) by default, another
// one with ?queue=.
func TestAdminAPISeveralQueues(t *testing.T) {
	qa, _ := openAdminQueue(t, queue.SQLite, nil)
	qb, _ := openAdminQueue(t, queue.SQLite, nil)
	first, second := qa, qb
	if second.ID() < first.ID() {
		first, second = second, first
	}
	// A job for a target no handler serves fails, and is discarded.
	h := &testQueueHandle{q: second, route: "no-such-route"}
	id, _, err := h.enqueue(t.Context(), testWebhook("x1"), 0)
	require.NoError(t, err)

	srv := newAdminServer(t, first, second)
	get := func(path string) map[string]any {
		t.Helper()
		status, out, _, _ := doAdmin(t, srv.URL, http.MethodGet, path)
		require.Equal(t, http.StatusOK, status, "%s: %v", path, out)
		return out
	}
	assert.Equal(t, first.ID(), get("/receive_booking/stats")["queue"])
	assert.Equal(t, second.ID(), get("/receive_booking/stats?queue=" + second.ID())["queue"])
	assert.Equal(t, first.ID(), get("/receive_booking/health")["queue"])
	require.Eventually(t, func() bool {
		jobs, _ := get("/receive_booking/jobs?queue=" + second.ID())["jobs"].([]any)
		return len(jobs) == 1 && adminJobID(jobs[0].(map[string]any)) == id
	}, adminWait, adminPoll)
	assert.Empty(t, get("/receive_booking/jobs")["jobs"], "the first queue has none")
	job := get(fmt.Sprintf("/receive_booking/jobs/%d?queue=%s", id, second.ID()))
	assert.Contains(t, job["last_error"], "no receive_booking handler")
}

// TestAdminAPIThroughCaddy: the module is registered, Caddy serves its
// routes on the admin endpoint and writes its errors as JSON.
func TestAdminAPIThroughCaddy(t *testing.T) {
	mod, err := caddy.GetModule("admin.api.receive_booking")
	require.NoError(t, err)
	_, ok := mod.New().(caddy.AdminRouter)
	require.True(t, ok)

	up := testkit.NewStandIn(t)
	up.Respond(testkit.JSON(http.StatusBadRequest, `{"success":false,"error":"key `+e2eTargetKey+`"}`))
	path := filepath.Join(t.TempDir(), "admin.sqlite3")
	tester := initE2E(t, "", fmt.Sprintf(`receive_booking {
		organization org-1 {
			secret %s
		}
		target %s
		target_key %s
		mode async
		coalesce_window 0
		queue sqlite %s
	}`, e2eSecret, up.URL, e2eTargetKey, path))
	key := (&queue.Config{Driver: queue.SQLite, Location: path}).Key()
	const admin = "http://localhost:2999"
	var bodies strings.Builder
	call := func(method, p string, want int) map[string]any {
		t.Helper()
		status, out, _, raw := doAdmin(t, admin, method, p)
		bodies.WriteString(raw)
		require.Equal(t, want, status, "%s %s: %s", method, p, raw)
		return out
	}

	status, _, _ := postWebhook(t, tester, map[string]string{"X-Api-Key": e2eSecret}, `{"booking_id":"k1"}`)
	require.Equal(t, http.StatusAccepted, status)
	var id int64
	var job map[string]any
	require.Eventually(t, func() bool {
		jobs, _ := call(http.MethodGet, "/receive_booking/jobs?state=cancelled&queue="+key, 200)["jobs"].([]any)
		if len(jobs) == 1 {
			job = jobs[0].(map[string]any)
			id = adminJobID(job)
		}
		return id != 0
	}, adminWait, adminPoll, "the permanent failure is cancelled")
	assert.Equal(t, "org-1", job["organization_id"], "the key's organization")

	assert.Equal(t, map[string]any{"error": "job id: expected a positive whole number"},
		call(http.MethodGet, "/receive_booking/jobs/abc", 400))
	assert.NotEmpty(t, call(http.MethodPost, "/receive_booking/stats", 405)["error"])

	up.Respond(nil) // the envelope: a sync
	call(http.MethodPost, fmt.Sprintf("/receive_booking/jobs/%d/retry?queue=%s", id, key), 200)
	require.Eventually(t, func() bool {
		return call(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d?queue=%s", id, key), 200)["state"] == "completed"
	}, adminWait, adminPoll, "the replayed job syncs")
	assert.Equal(t, "ok", call(http.MethodGet, "/receive_booking/health?queue="+key, 200)["status"])
	assert.Equal(t, key, call(http.MethodGet, "/receive_booking/stats?queue="+key, 200)["queue"])
	for _, s := range []string{e2eSecret, e2eTargetKey} {
		assert.NotContains(t, bodies.String(), s)
	}
}

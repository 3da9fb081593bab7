package receivebooking

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
)

// adminCall sends one admin request and decodes its JSON answer.
type adminCall func(method, path string) (int, map[string]any)

// runAdminScenario makes syncs fail permanently, lists them, replays one
// and then all once the upstream recovers, and checks every error answer.
// upstream answers 400 at first; secrets must never appear in an answer.
func runAdminScenario(t *testing.T, call adminCall, up *recordingUpstream, enqueue func(booking string), secrets []string) {
	t.Helper()
	var bodies strings.Builder
	do := func(method, path string, want int) map[string]any {
		t.Helper()
		status, body := call(method, path)
		raw, _ := json.Marshal(body)
		bodies.Write(raw)
		require.Equal(t, want, status, "%s %s: %s", method, path, raw)
		return body
	}
	for _, b := range []string{"d1", "d2", "d3"} {
		enqueue(b)
	}
	require.Eventually(t, func() bool {
		_, body := call(http.MethodGet, "/receive_booking/jobs?state=cancelled")
		jobs, _ := body["jobs"].([]any)
		return len(jobs) == 3
	}, 20*time.Second, 100*time.Millisecond, "permanent failures end as cancelled")

	page := do(http.MethodGet, "/receive_booking/jobs?state=cancelled&limit=2", 200)
	jobs := page["jobs"].([]any)
	require.Len(t, jobs, 2)
	first := jobs[0].(map[string]any)
	assert.Equal(t, "d1", first["booking_key"])
	assert.Contains(t, first["last_error"], "upstream status 400")
	rest := do(http.MethodGet, fmt.Sprintf("/receive_booking/jobs?state=cancelled&after=%v", page["next_after"]), 200)
	assert.Len(t, rest["jobs"], 1, "pagination")

	id := int64(first["id"].(float64))
	one := do(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", id), 200)
	assert.Len(t, one["errors"], 1, "the attempt history")

	up.status.Store(200)
	replayed := do(http.MethodPost, fmt.Sprintf("/receive_booking/jobs/%d/retry", id), 200)
	assert.Equal(t, float64(id), replayed["job_id"])
	require.Eventually(t, func() bool {
		_, body := call(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", id))
		return body["state"] == "completed"
	}, 20*time.Second, 100*time.Millisecond, "the replayed job syncs")

	all := do(http.MethodPost, "/receive_booking/retry?state=cancelled", 200)
	assert.Equal(t, float64(2), all["replayed"])
	require.Eventually(t, func() bool {
		_, body := call(http.MethodGet, "/receive_booking/jobs?state=completed")
		jobs, _ := body["jobs"].([]any)
		return len(jobs) == 3
	}, 20*time.Second, 100*time.Millisecond, "every replayed job syncs")

	stats := do(http.MethodGet, "/receive_booking/stats", 200)
	assert.Equal(t, float64(3), stats["counts"].(map[string]any)["completed"])
	assert.NotEmpty(t, stats["last_sync_at"])
	assert.Equal(t, "ok", do(http.MethodGet, "/receive_booking/health", 200)["status"])

	deleted := do(http.MethodDelete, fmt.Sprintf("/receive_booking/jobs/%d", id), 200)
	assert.Equal(t, true, deleted["deleted"])
	do(http.MethodGet, fmt.Sprintf("/receive_booking/jobs/%d", id), 404)

	// A pending job makes the health check fail against a tiny max_age.
	up.status.Store(503)
	enqueue("d4")
	time.Sleep(50 * time.Millisecond)
	assert.Equal(t, "unhealthy", do(http.MethodGet, "/receive_booking/health?max_age=1ms", 503)["status"])

	for _, bad := range []struct {
		method, path string
		status       int
	}{
		{http.MethodGet, "/receive_booking/jobs?state=bogus", 400},
		{http.MethodGet, "/receive_booking/jobs?limit=0", 400},
		{http.MethodGet, "/receive_booking/jobs?limit=abc", 400},
		{http.MethodGet, "/receive_booking/jobs/abc", 400},
		{http.MethodGet, "/receive_booking/jobs/-1", 400},
		{http.MethodGet, "/receive_booking/jobs/999999", 404},
		{http.MethodPost, "/receive_booking/jobs/999999/retry", 404},
		{http.MethodPost, "/receive_booking/retry?state=completed", 400},
		{http.MethodGet, "/receive_booking/health?max_age=soon", 400},
		{http.MethodPost, "/receive_booking/jobs", 405},
		{http.MethodGet, "/receive_booking/retry", 405},
		{http.MethodGet, "/receive_booking/nope", 404},
	} {
		body := do(bad.method, bad.path, bad.status)
		assert.NotEmpty(t, body["error"], "%s %s", bad.method, bad.path)
	}
	_, body := call(http.MethodGet, "/receive_booking/jobs?state=completed")
	completedID := int64(body["jobs"].([]any)[0].(map[string]any)["id"].(float64))
	do(http.MethodPost, fmt.Sprintf("/receive_booking/jobs/%d/retry", completedID), 409)

	for _, s := range secrets {
		assert.NotContains(t, bodies.String(), s, "no secret in any admin answer")
	}
}

// TestAdminAPIThroughCaddy drives the admin API on Caddy's real admin
// endpoint, with the SQLite queue.
func TestAdminAPIThroughCaddy(t *testing.T) {
	up := newRecordingUpstream(t)
	up.status.Store(400)
	tester := initE2E(t, "", fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		target_key %s
		mode async
		coalesce_window 0
		queue sqlite %s/admin.sqlite3
	}`, e2eSecret, up.URL, e2eTargetKey, t.TempDir()))
	call := func(method, path string) (int, map[string]any) {
		req, err := http.NewRequest(method, "http://localhost:2999"+path, nil)
		require.NoError(t, err)
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var out map[string]any
		raw, _ := io.ReadAll(resp.Body)
		require.NoError(t, json.Unmarshal(raw, &out), "%s %s: %s", method, path, raw)
		return resp.StatusCode, out
	}
	enqueue := func(booking string) {
		status, _, _ := postWebhook(t, tester, map[string]string{"X-Api-Key": e2eSecret}, `{"booking_id":"`+booking+`"}`)
		require.Equal(t, 202, status)
	}
	runAdminScenario(t, call, up, enqueue, []string{e2eSecret, e2eTargetKey})
}

// TestAdminAPIPostgres runs the same scenario on PostgreSQL, calling the
// admin module's routes directly.
func TestAdminAPIPostgres(t *testing.T) {
	up := newRecordingUpstream(t)
	up.status.Store(400)
	dsn := freshPostgresDSN(t)
	rq := &resolvedQueue{driver: queuePostgres, location: dsn, workers: 2, maxAttempts: 3, workerTimeout: 5 * time.Second}
	q, err := openQueue("test-admin-pg", rq, zaptest.NewLogger(t))
	require.NoError(t, err)
	t.Cleanup(func() { _ = q.Destruct() })
	u, _ := url.Parse(up.URL)
	upstream := newUpstream(u, e2eTargetKey, nil)
	qh := &queueHandle{q: q, targetID: targetID(upstream.target), upstream: upstream}
	q.register(qh.targetID, upstream)

	routes := AdminAPI{}.Routes()
	call := func(method, path string) (int, map[string]any) {
		sep := "?"
		if strings.Contains(path, "?") {
			sep = "&"
		}
		r := httptest.NewRequest(method, path+sep+"queue="+q.key, nil)
		w := httptest.NewRecorder()
		if err := routes[0].Handler.ServeHTTP(w, r); err != nil {
			// Render as Caddy's admin endpoint does.
			var apiErr caddy.APIError
			require.ErrorAs(t, err, &apiErr)
			w.WriteHeader(apiErr.HTTPStatus)
			_ = json.NewEncoder(w).Encode(map[string]string{"error": apiErr.Err.Error()})
		}
		var out map[string]any
		require.NoError(t, json.Unmarshal(w.Body.Bytes(), &out), "%s %s: %s", method, path, w.Body)
		return w.Code, out
	}
	enqueue := func(booking string) {
		_, _, err := qh.enqueue(t.Context(), testWebhook(booking), 0)
		require.NoError(t, err)
	}
	password := "rb-test-secret-pw"
	if pu, err := url.Parse(dsn); err == nil && pu.User != nil {
		password, _ = pu.User.Password()
	}
	runAdminScenario(t, call, up, enqueue, []string{e2eTargetKey, password, dsn})
}

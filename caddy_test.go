package receivebooking

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/caddyserver/caddy/v2/caddytest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests run the real Caddy, in-process, through caddytest. They share
// its admin port, so none of them runs in parallel.

const (
	e2eSecret    = "e2e-s3cr3t-value"
	e2eTargetKey = "sb_secret_e2e-target-key"
	e2eSite      = "http://localhost:9080"
)

func initE2E(t *testing.T, globals, directive string) *caddytest.Tester {
	t.Helper()
	tester := caddytest.NewTester(t)
	tester.InitServer(e2eConfig(globals, directive), "caddyfile")
	// Unload the config while the test's temporary files (a queue's
	// SQLite file) still exist: t.TempDir removes them after this runs.
	t.Cleanup(func() {
		resp, err := http.Post("http://localhost:2999/load", "text/caddyfile",
			strings.NewReader("{\n\tadmin localhost:2999\n}\n"))
		if err == nil {
			resp.Body.Close()
		}
	})
	if strings.Contains(directive, "queue ") {
		// The queue opens in the background once Caddy has started (its
		// migrations take a moment, more under -race): wait until it
		// records webhooks, so that a test's first webhook is not a 503.
		require.Eventually(t, func() bool {
			resp, err := http.Get("http://localhost:2999/receive_booking/health")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == http.StatusOK
		}, 20*time.Second, 20*time.Millisecond, "the queue opens")
	}
	return tester
}

// e2eConfig is a Caddyfile with one site that runs the given directive.
func e2eConfig(globals, directive string) string {
	return fmt.Sprintf(`{
	admin localhost:2999
	http_port 9080
	https_port 9443
	grace_period 1s
	skip_install_trust
	%s
}
http://localhost:9080 {
	%s
}
`, globals, directive)
}

func postWebhook(t *testing.T, tester *caddytest.Tester, headers map[string]string, body string) (int, map[string]any, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, e2eSite+"/", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := tester.Client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out), "body: %s", raw)
	assert.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	return resp.StatusCode, out, resp.Header
}

func TestE2EContract(t *testing.T) {
	up := testkit.NewStandIn(t)
	tester := initE2E(t, "", fmt.Sprintf(`receive_booking {
		secret %s other-secret
		organization org-bound {
			secret bound-key
		}
		target %s/functions/v1/import-bookings
		target_key %s
		timeout 1s
	}`, e2eSecret, up.URL, e2eTargetKey))
	auth := map[string]string{"X-Api-Key": e2eSecret}

	t.Run("preflight", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodOptions, e2eSite+"/", nil)
		resp := tester.AssertResponseCode(req, http.StatusNoContent)
		assert.Equal(t, "*", resp.Header.Get("Access-Control-Allow-Origin"))
		assert.Equal(t, corsAllowHeaders, resp.Header.Get("Access-Control-Allow-Headers"))
		assert.Equal(t, "POST, OPTIONS", resp.Header.Get("Access-Control-Allow-Methods"))
	})
	t.Run("method", func(t *testing.T) {
		for _, m := range []string{http.MethodGet, http.MethodPut, http.MethodDelete, http.MethodPatch} {
			req, _ := http.NewRequest(m, e2eSite+"/", nil)
			resp, _ := tester.AssertResponse(req, http.StatusMethodNotAllowed, `{"error":"Method not allowed"}`)
			assert.Equal(t, "POST, OPTIONS", resp.Header.Get("Allow"))
		}
	})
	rejected := []struct {
		name    string
		headers map[string]string
		body    string
		status  int
		err     string
	}{
		{"no credential", nil, `{"booking_id":"b1"}`, 401, "Unauthorized"},
		{"wrong key", map[string]string{"X-Api-Key": "nope"}, `{"booking_id":"b1"}`, 401, "Unauthorized"},
		{"secret prefix", map[string]string{"X-Api-Key": e2eSecret[:5]}, `{"booking_id":"b1"}`, 401, "Unauthorized"},
		{"bearer empty", map[string]string{"Authorization": "Bearer "}, `{"booking_id":"b1"}`, 401, "Unauthorized"},
		{"basic scheme", map[string]string{"Authorization": "Basic " + e2eSecret}, `{"booking_id":"b1"}`, 401, "Unauthorized"},
		{"not json", auth, `booking_id=1`, 400, "Invalid JSON body"},
		{"array", auth, `[{"booking_id":"b1"}]`, 400, "Invalid JSON body"},
		{"missing organization", auth, `{"booking_id":"b1"}`, 400, "Missing required field: organization_id"},
		{"organization checked before booking_id", auth, `{"event_type":"created"}`, 400, "Missing required field: organization_id"},
		{"null organization", auth, `{"booking_id":"b1","organization_id":null}`, 400, "Missing required field: organization_id"},
		{"float organization", auth, `{"booking_id":"b1","organization_id":1.5}`, 400, "Invalid field: organization_id"},
		{"bound key, other organization", map[string]string{"X-Api-Key": "bound-key"}, `{"booking_id":"b1","organization_id":"org-1"}`, 403, "Forbidden"},
		{"bound key, other organization, no booking_id", map[string]string{"X-Api-Key": "bound-key"}, `{"organization_id":"org-1"}`, 403, "Forbidden"},
		{"missing id", auth, `{"organization_id":"org-1","event_type":"created"}`, 400, "Missing required field: booking_id"},
		{"null id", auth, `{"organization_id":"org-1","booking_id":null}`, 400, "Missing required field: booking_id"},
		{"float id", auth, `{"organization_id":"org-1","booking_id":1.5}`, 400, "Invalid field: booking_id"},
		{"newline id", auth, `{"organization_id":"org-1","booking_id":"a\nb"}`, 400, "Invalid field: booking_id"},
		{"object event", auth, `{"organization_id":"org-1","booking_id":"b1","event_type":{}}`, 400, "Invalid field: event_type"},
		{"too large", auth, `{"booking_id":"b1","pad":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "Request body too large"},
	}
	for _, tc := range rejected {
		t.Run(tc.name, func(t *testing.T) {
			status, body, _ := postWebhook(t, tester, tc.headers, tc.body)
			assert.Equal(t, tc.status, status)
			assert.Equal(t, map[string]any{"error": tc.err}, body)
		})
	}
	assert.Empty(t, up.Calls(), "rejected webhooks must never reach import-bookings")

	t.Run("synced", func(t *testing.T) {
		status, body, _ := postWebhook(t, tester, map[string]string{"Authorization": "bearer other-secret"},
			`{"booking_id":42,"organization_id":"org-1","event_type":"booking.updated","extra":{"x":1}}`)
		assert.Equal(t, 200, status)
		assert.Equal(t, map[string]any{
			"success": true, "booking_id": float64(42), "event_type": "booking.updated",
			"sync_result": map[string]any{"success": true, "queued": false, "completed": true, "sync_mode": "single",
				"booking_id": float64(42), "organization_id": "org-1", "outcome": "applied"},
		}, body)
		calls := up.Calls()
		require.Len(t, calls, 1)
		c := calls[0]
		assert.JSONEq(t, `{"booking_id":42,"syncMode":"single","organization_id":"org-1","event_type":"booking.updated"}`, c.Body)
		assert.Equal(t, "Bearer "+e2eTargetKey, c.Header.Get("Authorization"))
		assert.Equal(t, e2eTargetKey, c.Header.Get("Apikey"))
		assert.Equal(t, "application/json", c.Header.Get("Content-Type"))
		assert.True(t, strings.HasPrefix(c.Header.Get("User-Agent"), "caddy-receive-booking/"))
		assert.NotEmpty(t, c.Header.Get(upstream.HeaderRequestID), "Caddy's request ID travels upstream")
		assert.Empty(t, c.Header.Get("X-Api-Key"), "the caller's credentials are never forwarded")
	})
	t.Run("bound key syncs as its organization", func(t *testing.T) {
		status, body, _ := postWebhook(t, tester, map[string]string{"X-Api-Key": "bound-key"}, `{"booking_id":"b-bound","event_type":"BOOKING_CREATED"}`)
		assert.Equal(t, 200, status, "%v", body)
		assert.Equal(t, "booking.created", body["event_type"], "event_type is echoed normalised")
		calls := up.CallsFor("b-bound")
		require.Len(t, calls, 1)
		assert.JSONEq(t, `{"booking_id":"b-bound","syncMode":"single","organization_id":"org-bound","event_type":"booking.created"}`, calls[0].Body)
	})
	t.Run("upstream says failure", func(t *testing.T) {
		up.Respond(testkit.JSON(http.StatusOK, `{"success":false,"error":"EventFlow API down"}`))
		defer up.Respond(nil)
		status, body, _ := postWebhook(t, tester, auth, `{"booking_id":"b2","organization_id":"org-1"}`)
		assert.Equal(t, 502, status)
		assert.Equal(t, "Sync failed", body["error"])
		assert.Equal(t, float64(200), body["upstream_status"])
		assert.Equal(t, map[string]any{"success": false, "error": "EventFlow API down"}, body["details"])
	})
	t.Run("upstream 503", func(t *testing.T) {
		up.Respond(testkit.JSON(http.StatusServiceUnavailable, `{"code":"BOOT_ERROR","message":"Function failed to start"}`))
		defer up.Respond(nil)
		status, body, _ := postWebhook(t, tester, auth, `{"booking_id":"b3","organization_id":"org-1"}`)
		assert.Equal(t, 502, status)
		assert.Equal(t, float64(503), body["upstream_status"])
	})
	t.Run("timeout", func(t *testing.T) {
		up.Respond(testkit.Hold(3*time.Second, nil))
		defer up.Respond(nil)
		start := time.Now()
		status, body, _ := postWebhook(t, tester, auth, `{"booking_id":"slow","organization_id":"org-1"}`)
		assert.Equal(t, 504, status)
		assert.Equal(t, map[string]any{"error": "Sync timed out"}, body)
		assert.Less(t, time.Since(start), 2500*time.Millisecond)
	})
}

func TestE2EUnreachableAndCORSOff(t *testing.T) {
	// A closed port: nothing listens there.
	target := testkit.ClosedPortURL(t) + "/import?apikey=QUERYSECRET"
	tester := initE2E(t, "", fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		cors off
	}`, e2eSecret, target))
	status, body, hdr := postWebhook(t, tester, map[string]string{"X-Api-Key": e2eSecret}, `{"booking_id":"b1","organization_id":"org-1"}`)
	assert.Equal(t, 502, status)
	assert.Equal(t, "Sync failed", body["error"])
	assert.NotContains(t, fmt.Sprint(body["details"]), "QUERYSECRET")
	assert.NotContains(t, body, "upstream_status")
	assert.Empty(t, hdr.Get("Access-Control-Allow-Origin"))
	req, _ := http.NewRequest(http.MethodOptions, e2eSite+"/", nil)
	tester.AssertResponseCode(req, http.StatusMethodNotAllowed)
}

// TestE2ENoSecretInLogs runs with debug logging and an access log, sends
// accepted, rejected and failed webhooks, and reads every log line. Caddy
// copies the request for its access log before any handler runs, so the
// access log needs the filter the README documents to drop X-Api-Key and
// the URI's query, where a key may come too (Authorization is redacted by
// Caddy itself).
func TestE2ENoSecretInLogs(t *testing.T) {
	up := testkit.NewStandIn(t)
	dir := t.TempDir()
	serverLog := filepath.Join(dir, "server.log")
	accessLog := filepath.Join(dir, "access.log")
	tester := initE2E(t, fmt.Sprintf("debug\n\tlog {\n\t\toutput file %s\n\t\tlevel DEBUG\n\t}", serverLog),
		fmt.Sprintf(`log {
		output file %s
		format filter {
			request>headers>X-Api-Key delete
			request>uri regexp \?.* ?REDACTED
		}
	}
	receive_booking {
		organization org-1 {
			secret %s
		}
		target %s
		target_key %s
	}`, accessLog, e2eSecret, up.URL, e2eTargetKey))
	auth := map[string]string{"X-Api-Key": e2eSecret}
	postWebhook(t, tester, auth, `{"booking_id":"ok-1","event_type":"booking_created"}`)
	postWebhook(t, tester, auth, `{"booking_id":"ok-2","event_type":"Booking.Exploded"}`)
	postWebhook(t, tester, map[string]string{"X-Api-Key": e2eSecret + "x"}, `{"booking_id":"b1"}`)
	postWebhook(t, tester, map[string]string{"Authorization": "Bearer " + e2eSecret}, `{"booking_id":"b2"}`)
	postWebhook(t, tester, auth, `{"booking_id":"b3","organization_id":"org-2"}`)
	// A key in the query string is no key (401), and is not logged with
	// the URI, whatever the parameter's name.
	for _, query := range []string{"apikey=", "ApiKey=", "x=1&api_key="} {
		req, err := http.NewRequest(http.MethodPost, e2eSite+"/?"+query+e2eSecret, strings.NewReader(`{"booking_id":"b4"}`))
		require.NoError(t, err)
		resp, err := tester.Client.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, query)
	}
	up.Respond(testkit.JSON(http.StatusInternalServerError, `{}`))
	postWebhook(t, tester, auth, `{"booking_id":"fail-1"}`)

	var logs string
	require.Eventually(t, func() bool {
		a, _ := os.ReadFile(accessLog)
		s, _ := os.ReadFile(serverLog)
		logs = string(a) + string(s)
		return strings.Count(string(a), "\n") >= 9 && strings.Contains(logs, "fail-1")
	}, 5*time.Second, 50*time.Millisecond)
	assert.NotContains(t, logs, e2eSecret)
	assert.NotContains(t, logs, e2eTargetKey)
	assert.Contains(t, logs, `"uri":"/?REDACTED"`, "the query-string requests are in the access log, filtered")
	assert.Contains(t, logs, `"outcome":"synced"`)
	assert.Contains(t, logs, `"event_type":"booking.created"`, "event types are normalised in the log")
	assert.Contains(t, logs, `"event_type":"booking.exploded","unknown_event_type":true`, "unknown event types are accepted and logged")
	assert.Contains(t, logs, `"outcome":"rejected"`)
	assert.Contains(t, logs, `"reason":"organization"`, "a key used for another organization is logged")
	assert.Contains(t, logs, `"outcome":"failed"`)
}

func TestE2EAsyncQueuesAndSyncs(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(testkit.JSON(http.StatusServiceUnavailable, `{}`)) // import-bookings is down: webhooks must still be accepted
	dbPath := filepath.Join(t.TempDir(), "async.sqlite3")
	tester := initE2E(t, "", fmt.Sprintf(`receive_booking {
		organization org-1 {
			secret %s
		}
		target %s
		mode async
		queue sqlite %s
		coalesce_window 1s
	}`, e2eSecret, up.URL, dbPath))
	auth := map[string]string{"X-Api-Key": e2eSecret}
	status, body, _ := postWebhook(t, tester, auth, `{"booking_id":"q1","event_type":"booking.created"}`)
	require.Equal(t, 202, status, "%v", body)
	jobID := body["job_id"]
	assert.Equal(t, map[string]any{"success": true, "accepted": true, "queued": true, "coalesced": false,
		"job_id": jobID, "booking_id": "q1", "event_type": "booking.created"}, body)
	status, body, _ = postWebhook(t, tester, auth, `{"booking_id":"q1","event_type":"booking.updated"}`)
	require.Equal(t, 202, status)
	assert.Equal(t, true, body["coalesced"], "a second webhook inside the window merges")
	assert.Equal(t, jobID, body["job_id"])

	require.Eventually(t, func() bool { return len(up.Calls()) >= 1 }, 10*time.Second, 20*time.Millisecond)
	up.Respond(nil)
	// The 503 is retried (first retry after 2.5–5 s, moved by River's
	// scheduler every 5 s) until it succeeds.
	require.Eventually(t, func() bool {
		for _, c := range up.Calls() {
			if strings.Contains(c.Body, `"event_type":"booking.updated"`) {
				return true
			}
		}
		return false
	}, 20*time.Second, 50*time.Millisecond, "the retry carries the latest event type")
}

// TestE2EAutoRecordsThenWaits: in auto mode every webhook is recorded
// first and synced by the queue's workers; the sender waits for the first
// attempt: 200 when it synced, 202 with sync_error when it will be
// retried, 202 when it is still running at the timeout (and it is neither
// cancelled nor started again), 200 without "success" when it failed for
// good (it was recorded: a resend would fail the same way).
func TestE2EAutoRecordsThenWaits(t *testing.T) {
	up := testkit.NewStandIn(t)
	dbPath := filepath.Join(t.TempDir(), "auto.sqlite3")
	tester := initE2E(t, "", fmt.Sprintf(`receive_booking {
		organization org-1 {
			secret %s
		}
		target %s
		timeout 500ms
		queue sqlite %s
	}`, e2eSecret, up.URL, dbPath))
	auth := map[string]string{"X-Api-Key": e2eSecret}
	callsOf := func(booking string) (n int) {
		for _, c := range up.Calls() {
			if strings.Contains(c.Body, `"`+booking+`"`) {
				require.True(t, strings.HasPrefix(c.Header.Get(upstream.HeaderRequestID), "job-"), "every sync is a queued job's")
				n++
			}
		}
		return n
	}

	status, body, _ := postWebhook(t, tester, auth, `{"booking_id":"a1"}`)
	assert.Equal(t, 200, status, "auto mode answers the sync's result when it comes in time: %v", body)
	assert.Equal(t, true, body["success"])
	assert.NotNil(t, body["job_id"])
	assert.Equal(t, "applied", body["sync_result"].(map[string]any)["outcome"])
	assert.Equal(t, 1, callsOf("a1"))

	up.Respond(testkit.JSON(http.StatusServiceUnavailable, `{}`))
	status, body, _ = postWebhook(t, tester, auth, `{"booking_id":"a2"}`)
	assert.Equal(t, 202, status)
	assert.True(t, strings.HasPrefix(body["sync_error"].(string), "upstream status 503"), "%v", body)
	assert.Equal(t, true, body["queued"])

	up.Respond(testkit.Hold(2*time.Second, nil))
	start := time.Now()
	status, body, _ = postWebhook(t, tester, auth, `{"booking_id":"a3"}`)
	assert.Equal(t, 202, status)
	assert.Less(t, time.Since(start), 1500*time.Millisecond, "the sender waits no longer than timeout")
	assert.Equal(t, stillRunning, body["sync_error"])

	up.Respond(testkit.JSON(http.StatusNotFound, `{"msg":"no such function"}`))
	status, body, _ = postWebhook(t, tester, auth, `{"booking_id":"a4"}`)
	assert.Equal(t, 200, status, "a recorded webhook whose sync failed for good is not answered 5xx")
	assert.Nil(t, body["success"], "not a sync: %v", body)
	assert.Equal(t, true, body["accepted"])
	assert.Equal(t, float64(404), body["upstream_status"])
	assert.Equal(t, `upstream status 404: {"msg":"no such function"}`, body["sync_error"])
	up.Respond(nil)

	// a2 is retried and synced; a3's one call ran to its end.
	require.Eventually(t, func() bool { return callsOf("a2") >= 2 }, 20*time.Second, 50*time.Millisecond)
	time.Sleep(2 * time.Second)
	assert.Equal(t, 1, callsOf("a3"), "the slow sync was neither cancelled nor started again")
	assert.Equal(t, 1, callsOf("a4"), "a permanent failure is not retried")
}

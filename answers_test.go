package receivebooking

// What "accepted" and "synced" mean, probed through the real binary: only
// import-bookings' envelope is a sync; every webhook resolves to one
// organization, and a key acts only for its own; a recorded webhook is
// never answered 5xx; a change merged into a job gets a full attempt
// budget after it.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	orgAKey = "org-a-key-Zq81"
	orgBKey = "org-b-key-Lm52"
)

// postAs sends a webhook with the given key and returns the status and
// the decoded answer.
func postAs(t *testing.T, url, key, body string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("X-Api-Key", key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var out map[string]any
	require.NoError(t, json.Unmarshal(raw, &out), "answer: %s", raw)
	return resp.StatusCode, out
}

// adminJSON GETs an admin API path of a running binary, which must answer
// 200, and decodes it into out.
func adminJSON(t *testing.T, p *caddyProcess, path string, out any) {
	t.Helper()
	require.Equal(t, http.StatusOK, p.adminDecode(t, http.MethodGet, path, out), path)
}

// jobsOf lists the jobs of one booking.
func jobsOf(t *testing.T, p *caddyProcess, booking string) []jobView {
	t.Helper()
	var out struct {
		Jobs []jobView `json:"jobs"`
	}
	adminJSON(t, p, "/receive_booking/jobs?state=pending,completed,cancelled,discarded&booking_id="+booking, &out)
	return out.Jobs
}

// queuedDirective is an auto-mode handler on the given queue ("sqlite" or
// "postgres"), with a shared key (e2eSecret) and two organizations' keys.
func queuedDirective(t *testing.T, driver, target string, lines ...string) (dataDir, directive string) {
	t.Helper()
	dataDir = t.TempDir()
	queue := queueLine(t, driver, dataDir)
	return dataDir, fmt.Sprintf(`receive_booking {
		secret %s
		organization org-a {
			secret %s
		}
		organization org-b {
			secret %s
		}
		target %s
		%s
		%s
	}`, e2eSecret, orgAKey, orgBKey, target, queue, strings.Join(lines, "\n\t\t"))
}

// waitHealthy waits until the binary's queue records webhooks.
func waitHealthy(t *testing.T, p *caddyProcess) {
	t.Helper()
	require.Eventually(t, func() bool {
		resp, err := http.Get(p.admin + "/receive_booking/health")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "the queue opens: %s", p.log)
}

// TestOnlyTheEnvelopeIsASync: import-bookings answering 200 with anything
// but the envelope (the eleven answers a lenient judge took for a sync)
// is never answered "success": true and never completes a job. Each is
// judged as the platform's worker judges it: final (the job is cancelled,
// the sender gets 200 without "success") or retried (202, the job waits
// for its next attempt).
func TestOnlyTheEnvelopeIsASync(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	bodies := map[string]struct {
		body  string
		final bool
	}{
		"error":          {`{"error":"boom"}`, true},
		"null":           {`null`, false},
		"array":          {`[]`, true},
		"empty":          {`{}`, true},
		"string":         {`"ok"`, false},
		"number":         {`123`, false},
		"true":           {`true`, false},
		"success-string": {`{"success":"false"}`, true},
		"success-one":    {`{"success":1}`, true},
		"success-null":   {`{"success":null}`, true},
		"success-true":   {`{"success":true}`, true},
	}
	stub := testkit.NewStandIn(t)
	stub.Answer(func(c *testkit.Call) (int, string) {
		if b, ok := bodies[c.Booking]; ok {
			return http.StatusOK, b.body
		}
		return http.StatusOK, testkit.Envelope(c, "applied")
	})
	dataDir, directive := queuedDirective(t, "sqlite", stub.Target(), "timeout 5s", "max_attempts 3")
	p := startCaddy(t, dataDir, directive)
	waitHealthy(t, p)

	status, out := postAs(t, p.url, orgAKey, `{"booking_id":"control"}`)
	require.Equal(t, 200, status, "the envelope is a sync: %v", out)
	require.Equal(t, true, out["success"])

	for booking, b := range bodies {
		status, out := postAs(t, p.url, orgAKey, `{"booking_id":"`+booking+`"}`)
		if b.final {
			assert.Nil(t, out["success"], "%s: %v", b.body, out)
			assert.Equal(t, 200, status, "%s: recorded and failed for good: %v", b.body, out)
			assert.Contains(t, out["sync_error"], "contract violation", b.body)
		} else {
			assert.Equal(t, 202, status, "%s: recorded and retried: %v", b.body, out)
			assert.Equal(t, true, out["queued"], "%s: %v", b.body, out)
		}
		jobs := jobsOf(t, p, booking)
		require.Len(t, jobs, 1, booking)
		// A retry within seconds is kept "available" from its time.
		want := []string{"retryable", "available"}
		if b.final {
			want = []string{"cancelled"}
		}
		assert.Eventually(t, func() bool { return slices.Contains(want, jobsOf(t, p, booking)[0].State) }, 5*time.Second, 20*time.Millisecond,
			"%s: job %s, want %s", b.body, jobs[0].State, want)
	}
	var stats struct {
		Counts map[string]int64 `json:"counts"`
	}
	adminJSON(t, p, "/receive_booking/stats", &stats)
	assert.EqualValues(t, 1, stats.Counts["completed"], "only the envelope completed a job: %v", stats.Counts)
}

// TestOrganizationsThroughTheBinary: on SQLite and PostgreSQL, a webhook
// syncs as the organization its body names (shared key) or its key
// belongs to; another organization's key is 403 and records nothing; no
// organization at all is 400 and records nothing.
func TestOrganizationsThroughTheBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			stub := testkit.NewStandIn(t)
			dataDir, directive := queuedDirective(t, driver, stub.Target(), "timeout 5s")
			p := startCaddy(t, dataDir, directive)
			waitHealthy(t, p)
			cases := []struct {
				name, key, body string
				status          int
				err, org        string
			}{
				{"shared key, organization in the body", e2eSecret, `{"booking_id":"%s","organization_id":"org-a"}`, 200, "", "org-a"},
				{"shared key, organization as a number", e2eSecret, `{"booking_id":"%s","organization_id":77}`, 200, "", "77"},
				{"shared key, no organization", e2eSecret, `{"booking_id":"%s"}`, 400, "Missing required field: organization_id", ""},
				{"bound key, no organization", orgAKey, `{"booking_id":"%s"}`, 200, "", "org-a"},
				{"bound key, its organization", orgBKey, `{"booking_id":"%s","organization_id":"org-b"}`, 200, "", "org-b"},
				{"bound key, another organization", orgAKey, `{"booking_id":"%s","organization_id":"org-b"}`, 403, "Forbidden", ""},
				{"other bound key, another organization", orgBKey, `{"booking_id":"%s","organization_id":"org-a"}`, 403, "Forbidden", ""},
				{"no organization, no booking_id", e2eSecret, `{"event_type":"booking.created"}`, 400, "Missing required field: organization_id", ""},
			}
			for i, tc := range cases {
				booking := fmt.Sprintf("org-case-%d", i)
				body := tc.body
				if strings.Contains(body, "%s") {
					body = fmt.Sprintf(body, booking)
				}
				status, out := postAs(t, p.url, tc.key, body)
				assert.Equal(t, tc.status, status, "%s: %v", tc.name, out)
				calls := stub.CallsFor(booking)
				if tc.status != 200 {
					assert.Equal(t, map[string]any{"error": tc.err}, out, tc.name)
					assert.Empty(t, calls, "%s: nothing reaches import-bookings", tc.name)
					assert.Empty(t, jobsOf(t, p, booking), "%s: nothing is recorded", tc.name)
					continue
				}
				assert.Equal(t, true, out["success"], tc.name)
				require.Len(t, calls, 1, tc.name)
				var sent struct {
					OrganizationID json.RawMessage `json:"organization_id"`
				}
				require.NoError(t, json.Unmarshal([]byte(calls[0].Body), &sent))
				assert.Equal(t, tc.org, strings.Trim(string(sent.OrganizationID), `"`), "%s: sent upstream as", tc.name)
				jobs := jobsOf(t, p, booking)
				require.Len(t, jobs, 1, tc.name)
				assert.Equal(t, tc.org, jobs[0].OrganizationID, tc.name)
			}
			assert.NotContains(t, p.log.String(), orgAKey, "no key in any log line")
			assert.NotContains(t, p.log.String(), orgBKey)
			assert.Contains(t, p.log.String(), `"reason":"organization"`, "a key used for another organization is logged")
		})
	}
}

// TestFinalOutcomeIsAnswered2xx: in auto mode a recorded webhook whose
// sync ended for good (not_found, a cancellation import-bookings will not
// apply) is answered 200 naming the outcome, after one call: a resend
// would end the same way, and a 5xx would ask for one.
func TestFinalOutcomeIsAnswered2xx(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	stub.Answer(func(c *testkit.Call) (int, string) {
		return http.StatusOK, testkit.Envelope(c, strings.TrimSuffix(c.Booking, "-1"))
	})
	dataDir, directive := queuedDirective(t, "sqlite", stub.Target(), "timeout 5s")
	p := startCaddy(t, dataDir, directive)
	waitHealthy(t, p)
	for _, outcome := range []string{"not_found", "cancellation_requires_explicit_apply"} {
		booking := outcome + "-1"
		status, out := postAs(t, p.url, orgAKey, `{"booking_id":"`+booking+`","event_type":"booking.cancelled"}`)
		assert.Equal(t, 200, status, "%v", out)
		assert.Nil(t, out["success"], "not a sync")
		assert.Equal(t, true, out["accepted"])
		assert.Equal(t, outcome, out["outcome"])
		assert.Equal(t, "upstream status 200: outcome "+outcome+": "+testkit.Envelope(&stub.CallsFor(booking)[0], outcome), out["sync_error"])
		assert.Equal(t, outcome, out["sync_result"].(map[string]any)["outcome"])
		assert.NotNil(t, out["job_id"])
		time.Sleep(300 * time.Millisecond)
		assert.Len(t, stub.CallsFor(booking), 1, "a final outcome is not retried")
		assert.Equal(t, "cancelled", jobsOf(t, p, booking)[0].State)
	}
}

// TestMergedChangeGetsFullAttempts: with max_attempts 2 and
// import-bookings failing, a webhook (W2) that merges into a job waiting
// for its last attempt renews the job's budget: the last attempt failing
// does not discard W2's change, and once import-bookings recovers the
// booking is synced. W2's sender is told the sync goes on (202), not that
// it failed for good.
func TestMergedChangeGetsFullAttempts(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) {
			stub := testkit.NewStandIn(t)
			down := func(w http.ResponseWriter, _ *http.Request, _ *testkit.Call) {
				w.Header().Set("Retry-After", "1")
				testkit.WriteJSON(w, http.StatusServiceUnavailable, `{"code":"BOOT_ERROR"}`)
			}
			stub.Respond(down)
			dataDir, directive := queuedDirective(t, driver, stub.Target(), "timeout 3s", "max_attempts 2")
			p := startCaddy(t, dataDir, directive)
			waitHealthy(t, p)

			status, w1 := postAs(t, p.url, orgAKey, `{"booking_id":"w","event_type":"booking.created"}`)
			require.Equal(t, 202, status, "W1: attempt 1 failed and will be retried: %v", w1)
			status, w2 := postAs(t, p.url, orgAKey, `{"booking_id":"w","event_type":"booking.updated"}`)
			require.Equal(t, 202, status, "W2 waits for attempt 2: %v", w2)
			assert.Equal(t, true, w2["coalesced"], "W2 merged into W1's job")
			assert.Equal(t, w1["job_id"], w2["job_id"])
			assert.Contains(t, w2["sync_error"], "upstream status 503", "attempt 2 failed too, and the job goes on: %v", w2)
			require.Len(t, stub.CallsFor("w"), 2)
			// River records the attempt's end in batches, just after it.
			require.Eventually(t, func() bool { return jobsOf(t, p, "w")[0].State != "running" }, 5*time.Second, 20*time.Millisecond)
			job := jobsOf(t, p, "w")[0]
			assert.Contains(t, []string{"retryable", "available"}, job.State, "not discarded after its second attempt: %+v", job)
			assert.Equal(t, 3, job.MaxAttempts, "W2's change has two attempts after it: attempts 2 and 3")

			stub.Respond(nil) // import-bookings recovers
			require.Eventually(t, func() bool { return jobsOf(t, p, "w")[0].State == "completed" }, 20*time.Second, 100*time.Millisecond,
				"the booking is synced after recovery: %+v", jobsOf(t, p, "w"))
			calls := stub.CallsFor("w")
			require.Len(t, calls, 3)
			assert.Equal(t, http.StatusOK, calls[2].Status)
			assert.Contains(t, calls[2].Body, `"event_type":"booking.updated"`, "the sync carries W2's event")
		})
	}
}

package receivebooking

// import-bookings' contract through the real binary: every outcome and
// contract violation in async, auto and sync modes (calls per webhook, the
// sender's answer, the job's end and recorded reason, the metrics),
// redirects never followed, Retry-After on time, fairness between
// organizations, a global cap across instances, and the Edge Function's
// leniency (any Content-Type, a bare Authorization key).

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// outcomeCase is one kind of answer, for the booking of the same name.
type outcomeCase struct {
	booking string
	answer  func(c *testkit.Call) (int, string)
	final   bool // else transient: retried
	synced  bool
	reason  string // in the job's last error
	// outcome, when set, is the envelope's outcome that the answer
	// carries when the sync ends for good in auto mode.
	outcome string
}

func envelopeWith(c *testkit.Call, outcome, extra string) string {
	e := testkit.Envelope(c, outcome)
	if extra != "" {
		e = strings.TrimSuffix(e, "}") + "," + extra + "}"
	}
	return e
}

func outcomeCases() []outcomeCase {
	ok := func(outcome, extra string) func(*testkit.Call) (int, string) {
		return func(c *testkit.Call) (int, string) { return 200, envelopeWith(c, outcome, extra) }
	}
	return []outcomeCase{
		{booking: "applied", answer: ok("applied", ""), synced: true},
		{booking: "already-current", answer: ok("already_current", ""), synced: true},
		{booking: "not-found", answer: ok("not_found", ""), final: true, reason: "outcome not_found", outcome: "not_found"},
		{booking: "cancellation", answer: ok("cancellation_requires_explicit_apply", ""), final: true, reason: "outcome cancellation_requires_explicit_apply", outcome: "cancellation_requires_explicit_apply"},
		{booking: "partial", answer: ok("partial", ""), reason: "outcome partial"},
		{booking: "local-fallback", answer: ok("local_fallback", ""), reason: "outcome local_fallback"},
		// mutating_sync_paused holds the sync instead (urgency_test.go).
		{booking: "failed", answer: ok("failed", `"error":"EventFlow timed out"`), reason: "outcome failed"},
		{booking: "failed-stale", answer: ok("failed", `"error":"stale_source_revision: rev 3 < 4"`), final: true, reason: "outcome failed: stale_source_revision", outcome: "failed"},
		{booking: "unknown-outcome", answer: ok("teleported", ""), final: true, reason: `unknown outcome \"teleported\"`, outcome: "teleported"},
		{booking: "queued-true", answer: func(c *testkit.Call) (int, string) {
			return 200, strings.Replace(testkit.Envelope(c, "applied"), `"queued":false`, `"queued":true`, 1)
		}, final: true, reason: `contract violation: \"queued\": true`},
		{booking: "other-booking", answer: func(c *testkit.Call) (int, string) {
			return 200, strings.Replace(testkit.Envelope(c, "applied"), `"other-booking"`, `"someone-else"`, 1)
		}, final: true, reason: "booking_id in the answer differs"},
		{booking: "applied-incomplete", answer: func(c *testkit.Call) (int, string) {
			return 200, strings.Replace(testkit.Envelope(c, "applied"), `"completed":true`, `"completed":false`, 1)
		}, final: true, reason: `outcome \"applied\" with \"completed\" not true`},
		// Only the envelope is a sync: another 2xx object, an array or a
		// field of the wrong type breaks the contract (final); null, a
		// scalar or a non-JSON body may come from a gateway (retried).
		{booking: "success-only", answer: func(*testkit.Call) (int, string) { return 200, `{"success":true}` },
			final: true, reason: `contract violation: no \"outcome\"`},
		{booking: "error-only", answer: func(*testkit.Call) (int, string) { return 200, `{"error":"boom"}` },
			final: true, reason: `contract violation: no \"outcome\"`},
		{booking: "array", answer: func(c *testkit.Call) (int, string) { return 200, "[" + testkit.Envelope(c, "applied") + "]" },
			final: true, reason: "contract violation: an array, not the envelope"},
		{booking: "wrong-type", answer: func(c *testkit.Call) (int, string) {
			return 200, strings.Replace(testkit.Envelope(c, "applied"), `"success":true`, `"success":"true"`, 1)
		}, final: true, reason: "contract violation: a field of the envelope has the wrong type"},
		// The envelope is read key for key, as import-bookings writes it:
		// "Outcome" is not "outcome", and a key given twice is a guess at
		// which one counts, so it breaks the contract.
		{booking: "outcome-capitalised", answer: func(c *testkit.Call) (int, string) {
			return 200, strings.Replace(testkit.Envelope(c, "applied"), `"outcome":`, `"Outcome":`, 1)
		}, final: true, reason: `contract violation: no \"outcome\"`},
		{booking: "outcome-shadowed", answer: ok("failed", `"OUTCOME":"applied"`), reason: "outcome failed"},
		{booking: "outcome-twice", answer: ok("failed", `"outcome":"applied"`), final: true,
			reason: `contract violation: key \"outcome\" given twice`},
		{booking: "success-twice", answer: func(c *testkit.Call) (int, string) {
			return 200, strings.Replace(testkit.Envelope(c, "applied"), `"success":true`, `"success":false,"success":true`, 1)
		}, final: true, reason: `contract violation: key \"success\" given twice`},
		{booking: "booking-twice", answer: ok("applied", `"booking_id":"someone-else"`), final: true,
			reason: `contract violation: key \"booking_id\" given twice`},
		{booking: "null", answer: func(*testkit.Call) (int, string) { return 200, `null` }, reason: "not a JSON object"},
		{booking: "scalar", answer: func(*testkit.Call) (int, string) { return 200, `true` }, reason: "not a JSON object"},
		{booking: "not-json", answer: func(*testkit.Call) (int, string) { return 200, `OK` }, reason: "non-JSON answer"},
		{booking: "http-500", answer: func(*testkit.Call) (int, string) { return 500, `{"error":"organization_id required"}` }, reason: "upstream status 500"},
		{booking: "http-546", answer: func(*testkit.Call) (int, string) { return 546, `{"code":"WORKER_LIMIT"}` }, reason: "upstream status 546"},
		{booking: "http-401", answer: func(*testkit.Call) (int, string) { return 401, `{"msg":"Invalid JWT"}` }, final: true, reason: "upstream status 401"},
	}
}

// metricSum sums the series of a metric whose labels include every one of
// labels (`kind="final"`).
func metricSum(t *testing.T, p *caddyProcess, name string, labels ...string) float64 {
	t.Helper()
	resp, err := http.Get(p.admin + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var sum float64
	for sc.Scan() {
		series, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || (series != name && !strings.HasPrefix(series, name+"{")) {
			continue
		}
		match := true
		for _, l := range labels {
			match = match && strings.Contains(series, l)
		}
		if match {
			f, _ := strconv.ParseFloat(v, 64)
			sum += f
		}
	}
	return sum
}

// jobOf returns the admin API's view of the booking's one job.
func jobOf(t *testing.T, p *caddyProcess, booking string) map[string]any {
	t.Helper()
	_, out := p.adminJSON(t, http.MethodGet, "/receive_booking/jobs?state=completed,cancelled,discarded&booking_id="+booking)
	jobs, _ := out["jobs"].([]any)
	if len(jobs) != 1 {
		return nil
	}
	return jobs[0].(map[string]any)
}

func TestContractEndToEnd(t *testing.T) {
	for _, mode := range []string{"async", "auto", "sync"} {
		t.Run(mode, func(t *testing.T) { runContract(t, mode) })
	}
}

func runContract(t *testing.T, mode string) {
	stand := testkit.NewStandIn(t)
	cases := outcomeCases()
	byBooking := map[string]outcomeCase{}
	for _, c := range cases {
		byBooking[c.booking] = c
	}
	stand.Answer(func(c *testkit.Call) (int, string) { return byBooking[c.Booking].answer(c) })
	dataDir := t.TempDir()
	queue := fmt.Sprintf("mode %s\n\t\tcoalesce_window 0\n\t\tmax_attempts 2\n\t\tqueue sqlite %s", mode, filepath.Join(dataDir, "q.sqlite3"))
	if mode == "sync" {
		queue = "mode sync"
	}
	p := startCaddy(t, dataDir, fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		timeout 3s
		%s
	}`, e2eSecret, stand.Target(), queue))
	answers := map[string]int{}
	bodies := map[string]map[string]any{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, c := range cases {
		wg.Go(func() {
			status, body, _ := sendOne(http.DefaultClient, p.url, c.booking)
			mu.Lock()
			answers[c.booking], bodies[c.booking] = status, body
			mu.Unlock()
		})
	}
	wg.Wait()
	if mode != "sync" {
		// Transient answers are retried once (max_attempts 2), after 2.5-5 s.
		require.Eventually(t, func() bool {
			for _, c := range cases {
				if j := jobOf(t, p, c.booking); j == nil {
					return false
				}
			}
			return true
		}, 30*time.Second, 200*time.Millisecond, "every job ended")
	}
	var report []string
	for _, c := range cases {
		calls := len(stand.CallsFor(c.booking))
		status := answers[c.booking]
		line := fmt.Sprintf("%s: calls=%d answer=%d", c.booking, calls, status)
		switch {
		case c.synced || c.final || mode == "sync":
			assert.Equal(t, 1, calls, "%s: %s answer, one call", c.booking, map[bool]string{true: "final", false: "synced"}[c.final])
		default:
			assert.Equal(t, 2, calls, "%s: transient answer, retried until max_attempts", c.booking)
		}
		body := bodies[c.booking]
		switch {
		case mode == "async":
			assert.Equal(t, 202, status, c.booking)
		case c.synced:
			assert.Equal(t, 200, status, c.booking)
			assert.Equal(t, true, body["success"], c.booking)
		case mode == "sync": // no queue keeps it: the sender must resend
			assert.Equal(t, 502, status, c.booking)
			assert.Equal(t, "Sync failed", body["error"], c.booking)
		case c.final: // auto: recorded, and no resend would change it
			assert.Equal(t, 200, status, c.booking)
			assert.Equal(t, true, body["accepted"], c.booking)
			assert.NotContains(t, body, "success", c.booking)
			assert.NotContains(t, body, "error", c.booking)
			assert.NotEmpty(t, body["job_id"], c.booking)
			assert.Contains(t, body["sync_error"], strings.ReplaceAll(c.reason, `\"`, `"`), c.booking)
			if c.outcome != "" {
				assert.Equal(t, c.outcome, body["outcome"], c.booking)
			}
		default: // auto, transient: retried in the queue
			assert.Equal(t, 202, status, c.booking)
			assert.Contains(t, body["sync_error"], strings.ReplaceAll(c.reason, `\"`, `"`), c.booking)
		}
		if mode != "sync" {
			j := jobOf(t, p, c.booking)
			require.NotNil(t, j, c.booking)
			want := map[bool]string{true: "cancelled", false: "discarded"}[c.final]
			if c.synced {
				want = "completed"
			}
			assert.Equal(t, want, j["state"], c.booking)
			if !c.synced {
				assert.Contains(t, j["last_error"], strings.ReplaceAll(c.reason, `\"`, `"`), c.booking)
			}
			line += fmt.Sprintf(" job=%s %q", j["state"], j["last_error"])
		}
		report = append(report, line)
	}
	if mode != "sync" {
		final := metricSum(t, p, `caddy_receive_booking_sync_failures_total`, `kind="final"`)
		exhausted := metricSum(t, p, `caddy_receive_booking_sync_failures_total`, `kind="exhausted"`)
		assert.Positive(t, metricSum(t, p, `caddy_receive_booking_sync_failures_total`, `kind="final"`, `outcome="not_found"`),
			"final failures are counted by outcome")
		nFinal, nTransient := 0, 0
		for _, c := range cases {
			switch {
			case c.final:
				nFinal++
			case !c.synced:
				nTransient++
			}
		}
		assert.Equal(t, float64(nFinal), final, "final failures counted apart")
		assert.Equal(t, float64(nTransient), exhausted, "exhausted retries counted apart")
		report = append(report, fmt.Sprintf("metrics: sync_failures_total{kind=final}=%v {kind=exhausted}=%v", final, exhausted))
	}
	t.Logf("CONTRACT mode %s:\n  %s", mode, strings.Join(report, "\n  "))
}

// TestRedirectsEndToEnd: a target that redirects (301, 302, 307, 308) to
// another host, another port or the same host: nothing reaches the
// redirect's location, the job ends as a final failure, and the sender
// (auto mode) gets 200 with accepted and the reason, not a resend request.
func TestRedirectsEndToEnd(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		elsewhere.Add(1)
		w.WriteHeader(200)
	}))
	t.Cleanup(other.Close)
	stand := testkit.NewStandIn(t)
	locations := map[string]string{
		"host": strings.Replace(other.URL, "127.0.0.1", "localhost", 1) + "/x",
		"port": other.URL + "/x",
		"same": "/functions/v1/elsewhere",
	}
	stand.Respond(func(w http.ResponseWriter, _ *http.Request, c *testkit.Call) {
		code, where, _ := strings.Cut(c.Booking, "-")
		n, _ := strconv.Atoi(code)
		w.Header().Set("Location", locations[where])
		w.WriteHeader(n)
	})
	p := startQueued(t, stand.Target(), "target_key sb_secret_must-stay-home", "coalesce_window 0")
	for _, code := range []int{301, 302, 307, 308} {
		for where := range locations {
			booking := fmt.Sprintf("%d-%s", code, where)
			status, body, _ := sendOne(http.DefaultClient, p.url, booking)
			assert.Equal(t, 200, status, booking)
			assert.Equal(t, true, body["accepted"], booking)
			assert.NotContains(t, body, "success", booking)
			assert.Contains(t, body["sync_error"], fmt.Sprintf("redirect: status %d to ", code), booking)
			assert.Equal(t, float64(code), body["upstream_status"], booking)
			var j map[string]any
			require.Eventually(t, func() bool { j = jobOf(t, p, booking); return j != nil }, 10*time.Second, 20*time.Millisecond, booking)
			assert.Equal(t, "cancelled", j["state"], booking)
			assert.Contains(t, j["last_error"], fmt.Sprintf("redirect: status %d to ", code), booking)
		}
	}
	assert.Zero(t, elsewhere.Load(), "no request reached a redirect's location")
	for _, c := range stand.Calls() {
		assert.Equal(t, testkit.Path, c.Path, "nothing went to the same-host location either")
	}
	t.Logf("REDIRECTS: 12 webhooks (301/302/307/308 x another host, another port, same host): 12×200 (accepted, not synced), 12 jobs cancelled, %d requests reached a Location, %d calls at the target", elsewhere.Load(), len(stand.Calls()))
}

// TestRetryAfterOnTime: a plain 503, then a 503 with Retry-After: 1, then
// success: the third call comes about 1 s after the second.
func TestRetryAfterOnTime(t *testing.T) {
	stand := testkit.NewStandIn(t)
	var n atomic.Int64
	stand.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		switch n.Add(1) {
		case 1:
			testkit.WriteJSON(w, 503, `{"code":"BOOT_ERROR"}`)
		case 2:
			w.Header().Set("Retry-After", "1")
			testkit.WriteJSON(w, 503, `{"code":"BOOT_ERROR"}`)
		default:
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
		}
	})
	p := startQueued(t, stand.Target(), "mode async", "coalesce_window 0")
	status, _, _ := sendOne(http.DefaultClient, p.url, "ra")
	require.Equal(t, 202, status)
	require.Eventually(t, func() bool { return len(stand.Calls()) >= 3 }, 30*time.Second, 20*time.Millisecond)
	calls := stand.Calls()
	first, second := calls[1].Start.Sub(calls[0].Start), calls[2].Start.Sub(calls[1].Start)
	t.Logf("RETRY-AFTER: call 2 came %s after call 1 (backoff 2.5-5 s); call 3 came %s after call 2 (Retry-After: 1)",
		first.Round(10*time.Millisecond), second.Round(10*time.Millisecond))
	assert.GreaterOrEqual(t, second, 950*time.Millisecond)
	assert.Less(t, second, 2*time.Second, "the Retry-After of the second answer set the third call's time")
	assert.GreaterOrEqual(t, first, 2500*time.Millisecond, "without Retry-After, the backoff")
}

// TestGlobalCapAcrossInstances: two instances on one PostgreSQL, workers
// 10 each, max_in_flight 3, 100 queued syncs: the stand-in never sees
// more than 3 at once, and the queue drains.
func TestGlobalCapAcrossInstances(t *testing.T) {
	stand := testkit.NewStandIn(t)
	stand.SetDelay(100 * time.Millisecond)
	dsn := testkit.FreshPostgresDSN(t)
	directive := fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		mode async
		coalesce_window 0
		workers 10
		max_in_flight 3
		queue postgres %s
	}`, e2eSecret, stand.Target(), dsn)
	a := startCaddy(t, t.TempDir(), directive)
	b := startCaddy(t, t.TempDir(), directive)
	start := time.Now()
	for i := range 100 {
		status, _, _ := sendOne(http.DefaultClient, []string{a.url, b.url}[i%2], fmt.Sprintf("cap-%d", i))
		require.Equal(t, 202, status)
	}
	require.Eventually(t, func() bool {
		for i := range 100 {
			if !stand.SyncedAfter(fmt.Sprintf("cap-%d", i), start) {
				return false
			}
		}
		return true
	}, 60*time.Second, 100*time.Millisecond, "the queue drains")
	_, maxTotal := stand.MaxInFlight()
	t.Logf("CAP: 100 syncs over 2 instances × 10 workers, max_in_flight 3: at most %d in flight at the stand-in; drained in %s",
		maxTotal, time.Since(start).Round(100*time.Millisecond))
	assert.LessOrEqual(t, maxTotal, 3)
	assert.Equal(t, 3, maxTotal, "the cap is used, not just respected")
}

// TestEdgeFunctionLeniency: a sender with Content-Type: text/plain and a
// JSON body, and one with a bare Authorization key, get 200.
func TestEdgeFunctionLeniency(t *testing.T) {
	stand := testkit.NewStandIn(t)
	p := startCaddy(t, t.TempDir(), fmt.Sprintf(`receive_booking {
		secret %s
		target %s
	}`, e2eSecret, stand.Target()))
	send := func(header, value string) int {
		req, _ := http.NewRequest(http.MethodPost, p.url, strings.NewReader(`{"booking_id":"len-1","organization_id":"org-1"}`))
		req.Header.Set(header, value)
		if header != "Authorization" {
			req.Header.Set("X-Api-Key", e2eSecret)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	assert.Equal(t, 200, send("Content-Type", "text/plain"), "text/plain with a JSON body")
	assert.Equal(t, 200, send("Authorization", e2eSecret), "a bare Authorization key")
	assert.Equal(t, 401, send("Authorization", "Basic "+e2eSecret), "another scheme stays 401")
}

package receivebooking

// A booking's timeline through the real binary: a booking that went
// through a retry, a final failure and a replay, read with `caddy
// receive-booking booking` (table and --json) and the admin API, on SQLite
// and PostgreSQL.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

func TestTimeline(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	for _, driver := range []string{"sqlite", "postgres"} {
		t.Run(driver, func(t *testing.T) { testTimeline(t, driver) })
	}
}

func testTimeline(t *testing.T, driver string) {
	// import-bookings is down at first (503, Retry-After 1 s), then
	// answers that it does not know the booking (final), then, after the
	// replay, syncs it.
	var calls atomic.Int32
	stand := testkit.NewStandIn(t)
	stand.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		if c.Booking != "tl-1" {
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
			return
		}
		switch calls.Add(1) {
		case 1:
			w.Header().Set("Retry-After", "1")
			testkit.WriteJSON(w, http.StatusServiceUnavailable, `{"code":"BOOT_ERROR","message":"Function failed to start"}`)
		case 2:
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "not_found"))
		default:
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
		}
	})
	dataDir, directive := queuedDirective(t, driver, stand.Target(), "timeout 5s", "max_attempts 5")
	p := startCaddy(t, dataDir, directive)
	waitHealthy(t, p)

	status, out := postAs(t, p.url, orgAKey, `{"booking_id":"tl-1","event_type":"booking.updated"}`)
	require.Equal(t, http.StatusAccepted, status, "the first attempt failed and will be retried: %v", out)
	job := int64(out["job_id"].(float64))
	require.Eventually(t, func() bool { return jobsOf(t, p, "tl-1")[0].State == "cancelled" }, 15*time.Second, 50*time.Millisecond,
		"the retry got a final answer")
	replay, code := runCLI(t, p, "retry", fmt.Sprint(job))
	require.Equal(t, 0, code, replay)
	require.Eventually(t, func() bool { return jobsOf(t, p, "tl-1")[0].State == "completed" }, 15*time.Second, 50*time.Millisecond,
		"the replay synced")
	require.Len(t, stand.CallsFor("tl-1"), 3)

	// A booking id that two organizations use is two bookings.
	status, _ = postAs(t, p.url, orgAKey, `{"booking_id":"tl-twice"}`)
	require.Equal(t, 200, status)
	status, _ = postAs(t, p.url, orgBKey, `{"booking_id":"tl-twice"}`)
	require.Equal(t, 200, status)

	view := waitTimeline(t, p, "/receive_booking/bookings/tl-1?organization=org-a", 6)
	checkTimeline(t, &view, job)

	// The command prints the same: --json is the admin API's answer
	// (without an organization: only org-a has the booking).
	stdout, stderr, code := runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), "booking", "tl-1", "--json")
	require.Equal(t, 0, code, stderr)
	var fromCLI timelineView
	require.NoError(t, json.Unmarshal([]byte(stdout), &fromCLI), stdout)
	assert.Equal(t, view, fromCLI)

	stdout, stderr, code = runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), "booking", "tl-1", "--organization", "org-a")
	require.Equal(t, 0, code, stderr)
	t.Logf("caddy receive-booking booking tl-1 --organization org-a:\n%s", stdout)
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	want := []string{
		`^booking\s+tl-1$`,
		`^organization\s+org-a$`,
		`^state\s+completed$`,
		fmt.Sprintf(`^job\s+%d completed, 3/\d+ attempts$`, job),
		`^$`,
		`^TIME \(UTC\)\s+KIND\s+JOB\s+DETAILS$`,
		fmt.Sprintf(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\s+attempt\s+%d\s+attempt 3: upstream 200, outcome applied, \S+ → synced$`, job),
		fmt.Sprintf(`^\S+ \S+\s+replay\s+%d\s+replayed: runs again now, with a fresh attempt budget$`, job),
		fmt.Sprintf(`^\S+ \S+\s+attempt\s+%d\s+attempt 2: upstream 200, outcome not_found, \S+ → final: job cancelled: upstream status 200: outcome not_found`, job),
		fmt.Sprintf(`^\S+ \S+\s+answer\s+%d\s+answered 202 queued: upstream status 503`, job),
		fmt.Sprintf(`^\S+ \S+\s+attempt\s+%d\s+attempt 1: upstream 503, \S+ → retry, next run \S+ \S+: upstream status 503`, job),
		fmt.Sprintf(`^\S+ \S+\s+webhook\s+%d\s+booking.updated by organization org-a key #1, new job$`, job),
	}
	require.Len(t, lines, len(want), stdout)
	for i, re := range want {
		assert.Regexp(t, regexp.MustCompile(re), lines[i], "line %d", i+1)
	}

	// An id in two organizations asks which (usage, 2); an unknown
	// booking is 4, as an unknown job.
	_, stderr, code = runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), "booking", "tl-twice")
	assert.Equal(t, exitUsage, code)
	assert.Contains(t, stderr, "booking tl-twice is known in several organizations (org-a, org-b): name one")
	stdout, _, code = runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), "booking", "tl-twice", "--organization", "org-b")
	assert.Equal(t, 0, code)
	assert.Regexp(t, `(?m)^\S+ \S+\s+webhook\s+\d+\s+no event_type by organization org-b key #1, new job$`, stdout)
	status, _ = postAs(t, p.url, orgAKey, `{"booking_id":"tl/slash"}`)
	require.Equal(t, 200, status)
	stdout, _, code = runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), "booking", "tl/slash")
	assert.Equal(t, 0, code, "an id with a slash is one id")
	assert.Regexp(t, `(?m)^booking\s+tl/slash$`, stdout)
	resp, err := http.Get(p.admin + "/receive_booking/bookings/")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusBadRequest, resp.StatusCode, "no booking id")
	_, stderr, code = runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), "booking", "nope")
	assert.Equal(t, exitNotFound, code)
	assert.Contains(t, stderr, msgNoSuchBooking)
	_, _, code = runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), "booking", "tl-1", "--organization", "org-b")
	assert.Equal(t, exitNotFound, code, "the booking is org-a's")
	assert.NotContains(t, p.log.String(), orgAKey, "no key in any log line")
}

// waitTimeline reads a timeline from the admin API once it has n events:
// an answer is written just after it is given.
func waitTimeline(t *testing.T, p *caddyProcess, path string, n int) timelineView {
	t.Helper()
	var view timelineView
	require.Eventually(t, func() bool {
		adminJSON(t, p, path, &view)
		return len(view.Events) == n
	}, 10*time.Second, 50*time.Millisecond, "%d events: %+v", n, view.Events)
	return view
}

// checkTimeline: the six events of the retried, failed and replayed
// booking, newest first, with their fields.
func checkTimeline(t *testing.T, v *timelineView, job int64) {
	t.Helper()
	assert.Equal(t, "tl-1", v.BookingID)
	assert.Equal(t, "org-a", v.OrganizationID)
	assert.Equal(t, "completed", v.State)
	require.Len(t, v.Jobs, 1)
	assert.Equal(t, job, v.Jobs[0].ID)
	assert.Equal(t, 3, v.Jobs[0].Attempts)
	kinds := make([]string, len(v.Events))
	for i, ev := range v.Events {
		kinds[i] = ev.Kind
		assert.Equal(t, job, ev.JobID, "event %d", i)
		assert.Equal(t, queue.DefaultRoute, ev.Route)
		if i > 0 {
			assert.False(t, ev.At.After(v.Events[i-1].At), "newest first: %v after %v", ev.At, v.Events[i-1].At)
		}
	}
	require.Equal(t, []string{"attempt", "replay", "attempt", "answer", "attempt", "webhook"}, kinds)

	synced, replay, final, answer, retry, webhook := v.Events[0], v.Events[1], v.Events[2], v.Events[3], v.Events[4], v.Events[5]
	assert.Equal(t, 3, synced.Attempt)
	assert.Equal(t, 200, synced.UpstreamStatus)
	assert.Equal(t, "applied", synced.Outcome)
	assert.Equal(t, "ok", synced.Verdict)
	assert.Equal(t, queue.ResultSynced, synced.Result)
	assert.Empty(t, synced.Error)
	assert.Nil(t, synced.NextRun)

	assert.Equal(t, false, *replay.Coalesced)
	assert.Zero(t, replay.ReplayedJob)

	assert.Equal(t, 2, final.Attempt)
	assert.Equal(t, 200, final.UpstreamStatus)
	assert.Equal(t, "not_found", final.Outcome)
	assert.Equal(t, "final", final.Verdict)
	assert.Equal(t, queue.ResultFinal, final.Result)
	assert.True(t, strings.HasPrefix(final.Error, "upstream status 200: outcome not_found"), final.Error)
	assert.Nil(t, final.NextRun)
	assert.True(t, replay.At.After(final.At))

	assert.Equal(t, 202, answer.Status, "the sender was told the sync goes on")
	assert.Equal(t, "queued", answer.Answer)
	assert.Contains(t, answer.Error, "upstream status 503")

	assert.Equal(t, 1, retry.Attempt)
	assert.Equal(t, 503, retry.UpstreamStatus)
	assert.Equal(t, "retry", retry.Verdict)
	assert.Equal(t, queue.ResultRetry, retry.Result)
	assert.Contains(t, retry.Error, "upstream status 503")
	assert.Contains(t, retry.Error, "(Retry-After 1s)")
	require.NotNil(t, retry.NextRun)
	assert.WithinDuration(t, retry.At.Add(time.Second), *retry.NextRun, 500*time.Millisecond, "the Retry-After's second")
	assert.False(t, final.At.Before(*retry.NextRun), "the retry ran at its next run")
	assert.Positive(t, retry.DurationMS)
	assert.True(t, answer.At.After(retry.At), "answered once the attempt had ended")

	assert.Equal(t, "booking.updated", webhook.EventType)
	assert.Equal(t, "organization org-a key #1", webhook.Credential)
	assert.Equal(t, false, *webhook.Coalesced)
	assert.Zero(t, webhook.Status, "auto mode: the answer is its own event")
}

// TestRetentionThroughTheBinary: the retention periods reach River (a
// completed job is deleted once its short retention has passed, while a
// cancelled one is kept), and its booking's timeline goes with it.
func TestRetentionThroughTheBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	stand := testkit.NewStandIn(t)
	stand.Answer(func(c *testkit.Call) (int, string) {
		if c.Booking == "rt-kept" {
			return 200, testkit.Envelope(c, "not_found")
		}
		return 200, testkit.Envelope(c, "applied")
	})
	dataDir, directive := queuedDirective(t, "sqlite", stand.Target(), "timeout 5s",
		"retention completed 2s", "retention cancelled 1h", "retention discarded 1h")
	p := startCaddy(t, dataDir, directive)
	waitHealthy(t, p)
	status, _ := postAs(t, p.url, orgAKey, `{"booking_id":"rt-gone"}`)
	require.Equal(t, 200, status)
	status, _ = postAs(t, p.url, orgAKey, `{"booking_id":"rt-kept"}`)
	require.Equal(t, 200, status)
	view := waitTimeline(t, p, "/receive_booking/bookings/rt-gone", 3) // webhook, attempt, answer

	// River's cleaner runs every 30 s; the engine prunes every 10 s.
	start := time.Now()
	require.Eventually(t, func() bool { return len(jobsOf(t, p, "rt-gone")) == 0 }, 60*time.Second, 500*time.Millisecond,
		"the completed job is deleted after its retention")
	gone := time.Since(start)
	require.Eventually(t, func() bool {
		resp, err := http.Get(p.admin + "/receive_booking/bookings/rt-gone")
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode == http.StatusNotFound
	}, 30*time.Second, 500*time.Millisecond, "its timeline goes with it")
	t.Logf("job deleted %s after it completed, its events %s after that", gone.Round(time.Second), (time.Since(start) - gone).Round(time.Second))
	require.Len(t, jobsOf(t, p, "rt-kept"), 1, "the cancelled job is kept (1h)")
	adminJSON(t, p, "/receive_booking/bookings/rt-kept", &view)
	assert.Len(t, view.Events, 3)
	assert.Equal(t, "cancelled", view.State)
}

package receivebooking

// Operators' pauses through the real binary and `caddy receive-booking`,
// on SQLite and on PostgreSQL with two instances: a pause stops syncing
// its scope on every instance, survives a restart, leaves webhooks
// recorded and answered, and its resume drains the held syncs most urgent
// first.

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

func TestOperatorPause(t *testing.T) {
	onBothDatabases(t, func(t *testing.T, db string) {
		stand := testkit.NewStandIn(t)
		dataDir := t.TempDir()
		directive := fmt.Sprintf("receive_booking {\n\t\tsecret %s\n\t\ttarget %s\n\t\tmode auto\n\t\ttimeout 2s\n\t\tworkers 1\n\t\tcoalesce_window 0\n\t\t%s\n\t}",
			e2eSecret, stand.Target(), queueLine(t, db, dataDir))
		a := startCaddy(t, dataDir, directive)
		b := a // the instance that sees A's pause: B on PostgreSQL
		if db == "postgres" {
			b = startCaddy(t, t.TempDir(), directive)
		}
		waitHealthy(t, a)
		waitHealthy(t, b)

		out, code := runCLI(t, a, "pause", "--organization", "org-1", "--reason", "EventFlow maintenance")
		require.Equal(t, 0, code, out)
		assert.Contains(t, out, "created")
		out, code = runCLI(t, b, "pauses")
		require.Equal(t, 0, code, out)
		assert.Regexp(t, `\*\s+org-1\s+\S+.*EventFlow maintenance`, out, "the pause is seen on every instance")
		time.Sleep(1500 * time.Millisecond) // each instance reads the pauses every second

		// Paused: recorded and answered at once, nothing synced; another
		// organization syncs.
		var sent []string
		for i, p := range []*caddyProcess{a, b, a, b, a} {
			booking := fmt.Sprintf("upd-%d", i)
			status, body := sendEvent(t, p.url, "org-1", booking, "booking.updated")
			require.Equal(t, 202, status, "%v", body)
			assert.Equal(t, true, body["paused"], "%v", body)
			assert.NotEmpty(t, body["job_id"])
			sent = append(sent, booking)
		}
		status, body := sendEvent(t, b.url, "org-1", "cancel", "booking.cancelled")
		require.Equal(t, 202, status, "%v", body)
		assert.Equal(t, true, body["paused"])
		status, body = sendEvent(t, a.url, "org-2", "other", "booking.updated")
		assert.Equal(t, 200, status, "another organization is not paused: %v", body)
		assert.Equal(t, true, body["success"])

		var stats struct {
			Paused []map[string]any `json:"paused"`
		}
		adminJSON(t, b, "/receive_booking/stats", &stats)
		require.Len(t, stats.Paused, 1)
		assert.Equal(t, "org-1", stats.Paused[0]["organization_id"])
		assert.Equal(t, float64(1), metricSum(t, a, "caddy_receive_booking_queue_paused", `organization="org-1"`))

		// The pause survives a restart.
		a.kill()
		a = startCaddy(t, dataDir, directive)
		waitHealthy(t, a)
		if db == "sqlite" {
			b = a
		}
		out, code = runCLI(t, a, "pauses")
		require.Equal(t, 0, code, out)
		assert.Contains(t, out, "EventFlow maintenance", "the pause is kept over a restart")
		time.Sleep(2 * time.Second)
		for _, c := range stand.Calls() {
			assert.NotEqual(t, "org-1", orgOf(c), "nothing of org-1 is synced while paused: %s", c.Booking)
		}

		// Resume on the other instance: the syncs run, the cancellation
		// first.
		out, code = runCLI(t, b, "resume", "--organization", "org-1")
		require.Equal(t, 0, code, out)
		assert.Regexp(t, `jobs_due\s+6`, out)
		held := append(sent, "cancel")
		require.Eventually(t, func() bool {
			for _, booking := range held {
				if !stand.SyncedAfter(booking, time.Time{}) {
					return false
				}
			}
			return true
		}, 30*time.Second, 50*time.Millisecond, "every held sync ran after resume")
		var order []string
		for _, c := range stand.Calls() {
			if orgOf(c) == "org-1" {
				order = append(order, c.Booking)
			}
		}
		assert.Len(t, order, len(held), "one call per held booking: %v", order)
		pos := slices.Index(order, "cancel")
		assert.Less(t, pos, map[string]int{"sqlite": 1, "postgres": 2}[db], "the cancellation runs first: %v", order)
		perBooking, _ := stand.MaxInFlight()
		assert.Equal(t, 1, perBooking)

		out, code = runCLI(t, a, "resume", "--organization", "org-1")
		assert.Equal(t, 4, code, "no such pause: %s", out)

		// Everything paused, then resumed.
		out, code = runCLI(t, b, "pause")
		require.Equal(t, 0, code, out)
		time.Sleep(1500 * time.Millisecond)
		status, body = sendEvent(t, a.url, "org-2", "all", "booking.updated")
		assert.Equal(t, 202, status, "%v", body)
		assert.Equal(t, true, body["paused"])
		time.Sleep(time.Second)
		assert.Empty(t, stand.CallsFor("all"), "paused everywhere")
		out, code = runCLI(t, a, "resume")
		require.Equal(t, 0, code, out)
		require.Eventually(t, func() bool { return stand.SyncedAfter("all", time.Time{}) }, 20*time.Second, 50*time.Millisecond)
		t.Logf("PAUSE %s: 6 org-1 webhooks answered 202 paused while org-2 synced; kept over a restart; resume made %s due, the calls came as %v (cancellation at %d)",
			db, "6", order, pos)

		var none map[string]any
		require.Equal(t, http.StatusBadRequest, a.adminDecode(t, http.MethodPost, "/receive_booking/pause?reason="+strings.Repeat("x", 1000), &none),
			"an over-long reason is refused")
	})
}

// orgOf is the organization_id a call carried.
func orgOf(c testkit.Call) string {
	_, rest, _ := strings.Cut(c.Body, `"organization_id":"`)
	org, _, _ := strings.Cut(rest, `"`)
	return org
}

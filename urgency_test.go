package receivebooking

// Urgency through the real binary, on SQLite and PostgreSQL: urgent events
// are synced before an organization's backlog of updates, a small
// organization is not starved, an urgent webhook makes a waiting retry due
// at once (never before a Retry-After), and import-bookings' kill switch
// (mutating_sync_paused) holds a sync without spending its attempts.

import (
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// sendEvent posts one webhook of the given organization, booking and
// event type with the test secret, and returns the status and the answer.
func sendEvent(t *testing.T, url, org, booking, event string) (int, map[string]any) {
	t.Helper()
	return postAs(t, url, e2eSecret, fmt.Sprintf(`{"booking_id":%q,"event_type":%q,"organization_id":%q}`, booking, event, org))
}

// queueLine is the queue directive of a test on the given database.
func queueLine(t *testing.T, db, dataDir string) string {
	t.Helper()
	if db == "postgres" {
		return "queue postgres " + testkit.FreshPostgresDSN(t)
	}
	return "queue sqlite " + filepath.Join(dataDir, "q.sqlite3")
}

// startOn runs the binary with one receive_booking handler in front of
// target, queued on db (sqlite or postgres), with lines added to its block.
func startOn(t *testing.T, db, target string, lines ...string) *caddyProcess {
	t.Helper()
	dataDir := t.TempDir()
	lines = append([]string{"secret " + e2eSecret, "target " + target}, lines...)
	lines = append(lines, queueLine(t, db, dataDir))
	return startCaddy(t, dataDir, "receive_booking {\n\t\t"+strings.Join(lines, "\n\t\t")+"\n\t}")
}

func onBothDatabases(t *testing.T, run func(t *testing.T, db string)) {
	for _, db := range []string{"sqlite", "postgres"} {
		t.Run(db, func(t *testing.T) { run(t, db) })
	}
}

// TestUrgentEventsFirst: one worker, held on a first sync while org-1
// queues 60 updates, then a cancellation and a confirmation, and org-2 an
// offer. Once the first sync ends, the cancellation and the confirmation
// are the next two calls, and org-2's offer comes within the next six: not
// behind org-1's backlog.
func TestUrgentEventsFirst(t *testing.T) {
	onBothDatabases(t, func(t *testing.T, db string) {
		stand := testkit.NewStandIn(t)
		release := make(chan struct{})
		stand.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
			if c.Booking == "first" {
				<-release
			}
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
		})
		p := startOn(t, db, stand.Target(), "mode async", "workers 1", "coalesce_window 0")
		status, _ := sendEvent(t, p.url, "org-1", "first", "booking.updated")
		require.Equal(t, 202, status)
		testkit.WaitFor(t, stand.Arrived, 10*time.Second, "the first sync")
		for i := range 60 {
			status, _ := sendEvent(t, p.url, "org-1", fmt.Sprintf("upd-%d", i), "booking.updated")
			require.Equal(t, 202, status)
		}
		for _, w := range [][3]string{{"org-1", "cancel", "BOOKING_CANCELLED"}, {"org-1", "confirm", "booking.confirmed"}, {"org-2", "offer", "booking.offer"}} {
			status, body := sendEvent(t, p.url, w[0], w[1], w[2])
			require.Equal(t, 202, status, "%v", body)
		}
		close(release)
		require.Eventually(t, func() bool { return len(stand.Calls()) == 64 }, 60*time.Second, 50*time.Millisecond)
		var order []string
		for _, c := range stand.Calls()[1:] {
			order = append(order, c.Booking)
		}
		pos := func(b string) int { return slices.Index(order, b) }
		t.Logf("URGENCY %s: after the first sync, the calls came in this order: cancel at %d, confirm at %d, org-2's offer at %d (of 63; 60 org-1 updates queued before them); first ten: %v",
			db, pos("cancel"), pos("confirm"), pos("offer"), order[:10])
		assert.ElementsMatch(t, []string{"cancel", "confirm"}, order[:2], "the urgent events are the next two calls")
		assert.Less(t, pos("offer"), 6, "the small organization's offer is not starved behind org-1's backlog")
		assert.Equal(t, 1, func() int { n, _ := stand.MaxInFlight(); return n }())
	})
}

// TestUrgentWebhookMakesRetryDue: three bookings fail once (503); a
// cancellation for the first makes its retry due at once; an update for
// the second leaves its backoff (2.5-5 s); a cancellation for the third,
// whose failure carried Retry-After: 4, does not bring it before then.
func TestUrgentWebhookMakesRetryDue(t *testing.T) {
	onBothDatabases(t, func(t *testing.T, db string) {
		stand := testkit.NewStandIn(t)
		var mu sync.Mutex
		failed := map[string]bool{}
		stand.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
			mu.Lock()
			first := !failed[c.Booking]
			failed[c.Booking] = true
			mu.Unlock()
			switch {
			case first && c.Booking == "floor":
				w.Header().Set("Retry-After", "4")
				testkit.WriteJSON(w, 503, `{"code":"BOOT_ERROR"}`)
			case first:
				testkit.WriteJSON(w, 503, `{"code":"BOOT_ERROR"}`)
			default:
				testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
			}
		})
		p := startOn(t, db, stand.Target(), "mode async", "coalesce_window 0")
		for _, b := range []string{"urgent", "normal", "floor"} {
			status, _ := sendEvent(t, p.url, "org-1", b, "booking.updated")
			require.Equal(t, 202, status)
		}
		require.Eventually(t, func() bool {
			for _, b := range []string{"urgent", "normal", "floor"} {
				// River makes a retry due within 5 s available at once, for
				// its time: waiting, not running.
				if j := jobsOf(t, p, b); len(stand.CallsFor(b)) != 1 || len(j) != 1 || j[0].State == "running" {
					return false
				}
			}
			return true
		}, 10*time.Second, 20*time.Millisecond, "each booking's first attempt failed")
		sent := map[string]time.Time{}
		for b, event := range map[string]string{"urgent": "booking.cancelled", "normal": "booking.updated", "floor": "booking.confirmed"} {
			sent[b] = time.Now()
			status, body := sendEvent(t, p.url, "org-1", b, event)
			require.Equal(t, 202, status, "%v", body)
			assert.Equal(t, float64(jobsOf(t, p, b)[0].ID), body["job_id"], "%s merged into its waiting job", b)
		}
		require.Eventually(t, func() bool {
			for _, b := range []string{"urgent", "normal", "floor"} {
				if len(stand.CallsFor(b)) != 2 {
					return false
				}
			}
			return true
		}, 20*time.Second, 20*time.Millisecond, "each booking retried once")
		after := func(b string) (sinceWebhook, sinceFailure time.Duration) {
			c := stand.CallsFor(b)
			return c[1].Start.Sub(sent[b]), c[1].Start.Sub(c[0].End)
		}
		uw, _ := after("urgent")
		_, nf := after("normal")
		_, ff := after("floor")
		t.Logf("RETRY DUE %s: cancellation's retry %s after its webhook; update's retry %s after its failure (backoff 2.5-5 s); confirmation with Retry-After: 4, %s after its failure",
			db, uw.Round(time.Millisecond), nf.Round(time.Millisecond), ff.Round(time.Millisecond))
		assert.Less(t, uw, 1500*time.Millisecond, "an urgent webhook makes the waiting retry due now")
		assert.GreaterOrEqual(t, nf, 2400*time.Millisecond, "an update keeps the backoff")
		assert.GreaterOrEqual(t, ff, 3900*time.Millisecond, "an urgent webhook never brings a retry before the Retry-After")
	})
}

// TestPlatformPauseHolds: import-bookings answers mutating_sync_paused
// three times, then applies. With max_attempts 2 the sync is held, not
// failed: it is shown as held (stats, metrics, timeline), spends no
// attempt, and syncs when the platform's pause ends. With a hold budget
// shorter than the pause, the answers spend attempts again after it and
// the job ends in the dead letter.
func TestPlatformPauseHolds(t *testing.T) {
	onBothDatabases(t, func(t *testing.T, db string) {
		stand := testkit.NewStandIn(t)
		var pausedCalls sync.Map // booking -> *atomic.Int64
		stand.Answer(func(c *testkit.Call) (int, string) {
			v, _ := pausedCalls.LoadOrStore(c.Booking, new(atomic.Int64))
			if n := v.(*atomic.Int64).Add(1); n <= 3 || strings.HasPrefix(c.Booking, "long") {
				return 200, testkit.Envelope(c, "mutating_sync_paused")
			}
			return 200, testkit.Envelope(c, "applied")
		})
		p := startOn(t, db, stand.Target(), "mode auto", "timeout 2s", "max_attempts 2", "coalesce_window 0", "hold_budget 1m")
		status, body := sendEvent(t, p.url, "org-1", "held", "booking.updated")
		require.Equal(t, 202, status, "%v", body)
		assert.Contains(t, body["sync_error"], "mutating_sync_paused", "the sender learns why: %v", body)
		var stats struct {
			Held int64 `json:"held"`
		}
		// The sender is answered from the held attempt; the hold is
		// recorded as that attempt ends, a moment later.
		assert.Eventually(t, func() bool {
			adminJSON(t, p, "/receive_booking/stats", &stats)
			return stats.Held == 1
		}, 2*time.Second, 20*time.Millisecond, "stats show the held sync")
		require.Eventually(t, func() bool { return stand.SyncedAfter("held", time.Time{}) }, 40*time.Second, 100*time.Millisecond,
			"held through three paused answers, then synced")
		require.Eventually(t, func() bool { j := jobsOf(t, p, "held"); return len(j) == 1 && j[0].State == "completed" }, 5*time.Second, 20*time.Millisecond,
			"the job completed: %+v", jobsOf(t, p, "held"))
		calls := stand.CallsFor("held")
		assert.Len(t, calls, 4, "3 held answers and the sync, with max_attempts 2")
		assert.Equal(t, float64(3), metricSum(t, p, "caddy_receive_booking_held_attempts_total"), "held attempts counted")
		var tl struct {
			Events []struct {
				Kind   string `json:"kind"`
				Result string `json:"result"`
			} `json:"events"`
		}
		adminJSON(t, p, "/receive_booking/bookings/held?organization=org-1", &tl)
		heldEvents := 0
		for _, e := range tl.Events {
			if e.Result == "held" {
				heldEvents++
			}
		}
		assert.Equal(t, 3, heldEvents, "the timeline shows three held attempts: %+v", tl.Events)
		var waits []string
		for i := 1; i < len(calls); i++ {
			waits = append(waits, calls[i].Start.Sub(calls[i-1].End).Round(100*time.Millisecond).String())
		}

		// A pause longer than the budget: held for 3 s, then the two
		// attempts spent, then the dead letter.
		q := startOn(t, db, stand.Target(), "mode async", "max_attempts 2", "coalesce_window 0", "hold_budget 3s")
		status, _ = sendEvent(t, q.url, "org-1", "long", "booking.updated")
		require.Equal(t, 202, status)
		require.Eventually(t, func() bool { j := jobsOf(t, q, "long"); return len(j) == 1 && j[0].State == "discarded" }, 40*time.Second, 100*time.Millisecond,
			"past the hold budget, the paused answers spend the attempts")
		long := len(stand.CallsFor("long"))
		assert.GreaterOrEqual(t, long, 3, "held at least once, then 2 attempts")
		assert.Contains(t, jobsOf(t, q, "long")[0].LastError, "mutating_sync_paused")
		t.Logf("HOLD %s: 3 mutating_sync_paused answers then applied, max_attempts 2: %d calls, job completed, waits between calls %v, held_attempts_total %v; with hold_budget 3s and a pause that never ends: %d calls, then discarded",
			db, len(calls), waits, metricSum(t, p, "caddy_receive_booking_held_attempts_total"), long)
	})
}

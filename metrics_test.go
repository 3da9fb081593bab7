package receivebooking

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scrape reads one sample from Caddy's admin /metrics endpoint.
func scrape(t *testing.T, series string) float64 {
	t.Helper()
	resp, err := http.Get("http://localhost:2999/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` ([0-9.e+]+)$`).FindSubmatch(body)
	if m == nil {
		return 0
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, err)
	return v
}

func TestE2EMetricsMoveAndSurviveReload(t *testing.T) {
	up := testkit.NewStandIn(t)
	config := func(timeout string) string {
		return fmt.Sprintf(`receive_booking {
		organization org-1 {
			secret %s
		}
		target %s
		timeout %s
	}`, e2eSecret, up.URL, timeout)
	}
	tester := initE2E(t, "metrics", config("5s"))
	auth := map[string]string{"X-Api-Key": e2eSecret}
	synced := `caddy_receive_booking_webhooks_total{event_type="booking.created",outcome="synced"}`
	forbidden := `caddy_receive_booking_rejections_total{reason="organization"}`
	rejected := `caddy_receive_booking_rejections_total{reason="unauthorized"}`
	invalid := `caddy_receive_booking_rejections_total{reason="invalid_json"}`
	other := `caddy_receive_booking_webhooks_total{event_type="other",outcome="synced"}`
	upstream200 := `caddy_receive_booking_upstream_requests_total{code="200"}`

	before := map[string]float64{}
	for _, s := range []string{synced, rejected, invalid, other, upstream200, forbidden} {
		before[s] = scrape(t, s)
	}
	postWebhook(t, tester, auth, `{"booking_id":"m1","event_type":"booking_created"}`)
	postWebhook(t, tester, auth, `{"booking_id":"m2","event_type":"BOOKING.CREATED"}`)
	postWebhook(t, tester, auth, `{"booking_id":"m3","event_type":"something-new-`+strconv.Itoa(int(time.Now().UnixNano()))+`"}`)
	postWebhook(t, tester, nil, `{"booking_id":"m4"}`)
	postWebhook(t, tester, auth, `nope`)
	postWebhook(t, tester, auth, `{"booking_id":"m6","organization_id":"org-2"}`)
	assert.Equal(t, before[synced]+2, scrape(t, synced), "event types are normalised")
	assert.Equal(t, before[other]+1, scrape(t, other), "unknown event types are bounded to \"other\"")
	assert.Equal(t, before[rejected]+1, scrape(t, rejected))
	assert.Equal(t, before[invalid]+1, scrape(t, invalid))
	assert.Equal(t, before[forbidden]+1, scrape(t, forbidden), "a key used for another organization is counted")
	assert.Equal(t, before[upstream200]+3, scrape(t, upstream200))
	assert.Positive(t, scrape(t, `caddy_receive_booking_upstream_duration_seconds_count`))

	// Reload: a new config, a new registry; the counters carry on.
	tester.InitServer(e2eConfig("metrics", config("6s")), "caddyfile")
	assert.Equal(t, before[synced]+2, scrape(t, synced), "counters survive a reload")
	postWebhook(t, tester, auth, `{"booking_id":"m5","event_type":"booking.created"}`)
	assert.Equal(t, before[synced]+3, scrape(t, synced))
}

// TestSyncLagOneSamplePerSync: through the binary, in every mode, the
// sync-lag histogram gains exactly one sample per sync import-bookings
// answered with the success envelope: not one per webhook, and not one
// more when an auto-mode sender hears of its queued sync. Each round sends
// 4 webhooks for 4 bookings and then 3 at once for one booking held at the
// stand-in (they may share a call, or merge into one queued sync), and a
// failure (not a sync, no sample).
func TestSyncLagOneSamplePerSync(t *testing.T) {
	for _, mode := range []string{"sync", "async", "auto"} {
		dbs := []string{"sqlite", "postgres"}
		if mode == "sync" {
			dbs = []string{""}
		}
		for _, db := range dbs {
			t.Run(strings.Trim(mode+"/"+db, "/"), func(t *testing.T) {
				stand := testkit.NewStandIn(t)
				release := make(chan struct{})
				stand.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
					switch c.Booking {
					case "burst":
						<-release
					case "broken":
						testkit.WriteJSON(w, 200, testkit.Envelope(c, "not_found"))
						return
					}
					testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
				})
				var p *caddyProcess
				if db == "" {
					p = startCaddy(t, t.TempDir(), "receive_booking {\n\t\tsecret "+e2eSecret+"\n\t\ttarget "+stand.Target()+"\n\t\tmode sync\n\t}")
				} else {
					p = startOn(t, db, stand.Target(), "mode "+mode, "coalesce_window 0", "max_attempts 1")
				}
				for i := range 4 {
					status, body := sendEvent(t, p.url, "org-1", fmt.Sprintf("one-%d", i), "booking.updated")
					require.Contains(t, []int{200, 202}, status, "%v", body)
				}
				status, body := sendEvent(t, p.url, "org-1", "broken", "booking.updated")
				require.Contains(t, []int{200, 202, 502}, status, "%v", body)
				require.NotEqual(t, true, body["success"] == true && body["sync_result"] != nil && mode != "async", "not a sync: %v", body)
				// The first of the burst reaches the stand-in and is held
				// there; the other two arrive while it runs.
				var wg sync.WaitGroup
				for i := range 3 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						status, body := sendEvent(t, p.url, "org-1", "burst", "booking.updated")
						assert.Contains(t, []int{200, 202}, status, "%v", body)
					}()
					if i == 0 {
						require.Eventually(t, func() bool { return len(stand.CallsFor("burst")) == 1 }, 10*time.Second, 10*time.Millisecond, "the burst's first call")
					}
				}
				time.Sleep(300 * time.Millisecond) // the other two are in
				close(release)
				wg.Wait()
				require.Eventually(t, func() bool {
					return stand.Counts().InFlight == 0 && len(stand.CallsFor("burst")) >= 1 &&
						metricSum(t, p, "caddy_receive_booking_sync_lag_seconds_count") == float64(stand.Counts().Synced)
				}, 20*time.Second, 100*time.Millisecond, "one sample per synced call: %v samples, %d synced calls",
					metricSum(t, p, "caddy_receive_booking_sync_lag_seconds_count"), stand.Counts().Synced)
				time.Sleep(500 * time.Millisecond) // nothing more comes
				synced := stand.Counts().Synced
				samples := metricSum(t, p, "caddy_receive_booking_sync_lag_seconds_count")
				t.Logf("SYNC_LAG %s: 8 webhooks (4 bookings, 1 failing, 3 for one booking at once): %d synced calls (%d for the burst), %v samples",
					strings.Trim(mode+"/"+db, "/"), synced, len(stand.CallsFor("burst")), samples)
				assert.Equal(t, float64(synced), samples)
				assert.GreaterOrEqual(t, synced, int64(5))
				assert.LessOrEqual(t, synced, int64(7))
			})
		}
	}
}

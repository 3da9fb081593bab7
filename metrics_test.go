package receivebooking

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
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

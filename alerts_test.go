package receivebooking

// The shipped Prometheus alerts (prometheus/alerts.yml): promtool's unit
// tests of every rule, and the dead-letter alert firing in a real
// Prometheus that scrapes a running Caddy whose import-bookings refuses.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lookTool finds a program of Debian's prometheus package; make test
// (scripts/test.sh) installs it.
func lookTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed: run the tests with `make test` (scripts/test.sh installs Debian's prometheus package), or apt-get install prometheus", name)
	}
	return path
}

func TestAlertRules(t *testing.T) {
	promtool := lookTool(t, "promtool")
	for _, args := range [][]string{
		{"check", "rules", "alerts.yml"},
		{"test", "rules", "alerts_test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = "prometheus"
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "promtool %s:\n%s", strings.Join(args, " "), out)
		assert.Contains(t, string(out), "SUCCESS")
	}
}

// TestDeadLetterAlertFires: a real Prometheus scrapes a running Caddy (its
// admin endpoint's /metrics, every 200 ms) and evaluates the shipped
// rules; import-bookings refuses every sync and max_attempts is 1, so the
// webhook's job is discarded, and ReceiveBookingDeadLetters fires, read
// from Prometheus's own API. The queue gauges arrive with their queue
// label from the first scrapes.
func TestDeadLetterAlertFires(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary and Prometheus")
	}
	prometheus := lookTool(t, "prometheus")
	stub := testkit.NewStandIn(t)
	stub.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		if c.Booking == "held-1" {
			testkit.WriteJSON(w, http.StatusOK, testkit.Envelope(c, "mutating_sync_paused"))
			return
		}
		testkit.WriteJSON(w, http.StatusServiceUnavailable, `{"code":"BOOT_ERROR"}`)
	})
	dataDir, directive := queuedDirective(t, "sqlite", stub.Target(), "timeout 2s", "max_attempts 1")
	p := startCaddy(t, dataDir, directive)
	waitHealthy(t, p)

	dir := t.TempDir()
	rules, err := os.ReadFile(filepath.Join("prometheus", "alerts.yml"))
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "alerts.yml"), rules, 0o600))
	promPort := freePort(t)
	config := fmt.Sprintf(`global:
  scrape_interval: 200ms
  evaluation_interval: 200ms
rule_files: [alerts.yml]
scrape_configs:
  - job_name: caddy
    static_configs:
      - targets: ['%s']
`, strings.TrimPrefix(p.admin, "http://"))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(config), 0o600))
	cmd := exec.Command(prometheus, "--config.file="+filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path="+filepath.Join(dir, "data"), fmt.Sprintf("--web.listen-address=127.0.0.1:%d", promPort))
	log := new(lockedBuffer)
	cmd.Stdout, cmd.Stderr = log, log
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	api := fmt.Sprintf("http://127.0.0.1:%d/api/v1/", promPort)
	query := func(path string, out any) bool {
		resp, err := http.Get(api + path)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK && json.Unmarshal(raw, out) == nil
	}

	// The gauges, labelled by queue, from the first scrapes on.
	var up struct {
		Data struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  []any             `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	require.Eventually(t, func() bool {
		return query("query?query=caddy_receive_booking_queue_up", &up) && len(up.Data.Result) == 1
	}, 30*time.Second, 100*time.Millisecond, "Prometheus scrapes the queue gauges: %s", log)
	assert.True(t, strings.HasPrefix(up.Data.Result[0].Metric["queue"], "receive_booking:sqlite:"), "%v", up.Data.Result[0].Metric)
	assert.Equal(t, "1", up.Data.Result[0].Value[1])

	status, out := postAs(t, p.url, orgAKey, `{"booking_id":"dead-1"}`)
	require.Equal(t, 200, status, "the last attempt failed: a final answer: %v", out)
	type alert struct {
		Labels map[string]string `json:"labels"`
		State  string            `json:"state"`
	}
	var alerts struct {
		Data struct {
			Alerts []alert `json:"alerts"`
		} `json:"data"`
	}
	in := func(name, state string) *alert {
		if !query("alerts", &alerts) {
			return nil
		}
		for i, a := range alerts.Data.Alerts {
			if a.Labels["alertname"] == name && a.State == state {
				return &alerts.Data.Alerts[i]
			}
		}
		return nil
	}
	require.Eventually(t, func() bool { return in("ReceiveBookingDeadLetters", "firing") != nil }, 30*time.Second, 100*time.Millisecond,
		"the dead-letter alert fires: %+v\n%s", alerts.Data.Alerts, log)
	assert.Equal(t, "critical", in("ReceiveBookingDeadLetters", "firing").Labels["severity"])

	// A sync held by import-bookings' pause, and an operator's pause: both
	// alerts match the real series at once (pending: they fire after 30
	// minutes and an hour).
	status, out = postAs(t, p.url, orgAKey, `{"booking_id":"held-1"}`)
	require.Equal(t, 202, status, "held: %v", out)
	cli, code := runCLI(t, p, "pause", "--organization", "org-b", "--reason", "alert test")
	require.Equal(t, 0, code, cli)
	require.Eventually(t, func() bool {
		return in("ReceiveBookingSyncsHeld", "pending") != nil && in("ReceiveBookingSyncingPaused", "pending") != nil
	}, 30*time.Second, 100*time.Millisecond, "the held and paused alerts are pending: %+v\n%s", alerts.Data.Alerts, log)
	assert.Equal(t, "org-b", in("ReceiveBookingSyncingPaused", "pending").Labels["organization"])
}

// TestQueueGaugesAtScrape: two queues in one config each have their own
// gauges, labelled by queue, right after start (they are read at scrape
// time, not sampled), and a webhook recorded on one shows on its queue
// only.
func TestQueueGaugesAtScrape(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	dataDir := t.TempDir()
	handler := func(path, file string) string {
		return fmt.Sprintf(`handle %s {
		receive_booking {
			organization org-a {
				secret %s
			}
			target %s
			mode async
			coalesce_window 1h
			queue sqlite %s
		}
	}`, path, orgAKey, stub.Target(), filepath.Join(dataDir, file))
	}
	p := startCaddy(t, dataDir, handler("/a", "a.sqlite3")+"\n\t"+handler("/b", "b.sqlite3"))
	waitHealthy(t, p)
	series := func() map[string]float64 {
		resp, err := http.Get(p.admin + "/metrics")
		require.NoError(t, err)
		defer resp.Body.Close()
		raw, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		out := map[string]float64{}
		for _, line := range strings.Split(string(raw), "\n") {
			if name, v, ok := strings.Cut(line, " "); ok && strings.HasPrefix(name, "caddy_receive_booking_queue_") {
				var f float64
				_, _ = fmt.Sscan(v, &f)
				out[name] = f
			}
		}
		return out
	}
	var queues []string
	for name, v := range series() {
		if strings.HasPrefix(name, "caddy_receive_booking_queue_up{") {
			assert.Equal(t, 1.0, v, name)
			queues = append(queues, strings.TrimSuffix(strings.TrimPrefix(name, `caddy_receive_booking_queue_up{queue="`), `"}`))
		}
	}
	require.Len(t, queues, 2, "one queue_up per queue at the first scrape: %v", series())

	status, out := postAs(t, strings.TrimSuffix(p.url, "/")+"/a", orgAKey, `{"booking_id":"g-1"}`)
	require.Equal(t, 202, status, "%v", out)
	pending := func(queue string) (n float64) {
		for name, v := range series() {
			if strings.HasPrefix(name, `caddy_receive_booking_queue_jobs{queue="`+queue+`",state=`) &&
				!strings.Contains(name, "completed") {
				n += v
			}
		}
		return n
	}
	a, b := pending(queues[0]), pending(queues[1])
	assert.ElementsMatch(t, []float64{1, 0}, []float64{a, b}, "the webhook shows on its own queue only, at once")
}

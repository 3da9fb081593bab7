package receivebooking

// The dashboard in a real browser (Debian's headless Chromium, driven with
// chromedp) against the real binary: a queue holding a failed job is shown,
// a screenshot is saved, and a write the dashboard must not make (River
// UI's retry) is refused.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// chromiumPath is Debian's Chromium (scripts/test.sh installs it).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{os.Getenv("RB_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	t.Fatal("no Chromium: run the tests with make test (scripts/test.sh installs Debian's chromium), or set RB_CHROMIUM")
	return ""
}

// browserHome is an environment that gives the browser a temporary home.
func browserHome(t *testing.T) []string {
	home := t.TempDir()
	return []string{"HOME=" + home, "XDG_CACHE_HOME=" + filepath.Join(home, ".cache"),
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"), "XDG_DATA_HOME=" + filepath.Join(home, ".local", "share")}
}

// waitText waits until the page's visible text holds s (the dashboard is a
// single-page app: it renders after its API calls answer).
func waitText(t *testing.T, ctx context.Context, s string) {
	t.Helper()
	var text string
	var err error
	assert.Eventually(t, func() bool {
		text, err = chromedp.Run(ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		return err == nil && strings.Contains(text, s)
	}, 30*time.Second, 100*time.Millisecond, "the page shows %q", s)
	if !strings.Contains(text, s) {
		t.Fatalf("the page shows %q (%v)", text, err)
	}
	time.Sleep(300 * time.Millisecond) // let it finish rendering
}

func TestDashboardInBrowser(t *testing.T) {
	stand := testkit.NewStandIn(t)
	stand.Answer(func(c *testkit.Call) (int, string) {
		if c.Booking == "dash-failed" {
			return 200, testkit.Envelope(c, "not_found")
		}
		return 200, testkit.Envelope(c, "applied")
	})
	dataDir := t.TempDir()
	p := startCaddy(t, dataDir, fmt.Sprintf(`route /queue/* {
		receive_booking_dashboard {
			prefix /queue
		}
	}
	route /protected/* {
		basic_auth {
			ops $2a$14$GDty4aeXGMbITBwImvtKc.iHzvhnGQneRMNRyYYCqVg9QofLEHgra
		}
		receive_booking_dashboard {
			prefix /protected
		}
	}
	receive_booking {
		secret %s
		target %s
		queue sqlite %s
	}`, e2eSecret, stand.Target(), filepath.Join(dataDir, "q.sqlite3")))
	status, _, _ := sendOne(http.DefaultClient, p.url, "dash-ok")
	require.Equal(t, 200, status)
	status, body, _ := sendOne(http.DefaultClient, p.url, "dash-failed")
	require.Equal(t, 200, status, "a sync that ends for good is answered 200: %v", body)
	require.Equal(t, "not_found", body["outcome"], "%v", body)
	failed := int64(body["job_id"].(float64))
	require.Eventually(t, func() bool { return jobOf(t, p, "dash-failed") != nil }, 10*time.Second, 50*time.Millisecond)

	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()),
		// The browser's own files (dconf's cache, NSS's database) go to a
		// home of its own, never the user's.
		chromedp.Env(browserHome(t)...),
		chromedp.WindowSize(1400, 900),
	)
	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancelAlloc()
	ctx, cancel := chromedp.NewContext(allocCtx)
	defer cancel()
	ctx, cancelTimeout := context.WithTimeout(ctx, 60*time.Second)
	defer cancelTimeout()

	base := strings.TrimSuffix(p.url, "/") + "/queue"
	url := base + "/jobs?state=cancelled"
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(url)), "the dashboard at %s", url)
	waitText(t, ctx, "receive_booking_sync")
	page, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	require.NoError(t, err)
	assert.Contains(t, page, "receive_booking_sync", "the cancelled job is listed")
	shot, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)) // quality 100: a PNG
	require.NoError(t, err)
	dir := os.Getenv("RB_SCREENSHOT_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	file := filepath.Join(dir, "dashboard-cancelled-job.png")
	require.NoError(t, os.WriteFile(file, shot, 0o644))
	t.Logf("DASHBOARD: %s shows the cancelled job; screenshot %s (%d bytes)", url, file, len(shot))

	// The job's own page, with its error.
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(fmt.Sprintf("%s/jobs/%d", base, failed))))
	waitText(t, ctx, "not_found")
	jobPage, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	require.NoError(t, err)
	assert.Contains(t, jobPage, "outcome not_found", "the job's page shows its error")

	// A write from the page, as its Retry button would make it: refused.
	answer, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`fetch(%q, {method: "POST",
		headers: {"Content-Type": "application/json"}, body: JSON.stringify({ids: ["%d"]})})
		.then(r => r.status + " " + r.headers.get("Content-Type"))`, "/queue/api/jobs/retry", failed),
		chromedp.EvalAwaitPromise))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(answer, "403 "), "River UI's retry is refused: %s", answer)
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, "cancelled", jobOf(t, p, "dash-failed")["state"], "the job was not retried")
	assert.Len(t, stand.CallsFor("dash-failed"), 1)
	t.Logf("DASHBOARD: a retry posted from the page answered %s; the job stayed cancelled", answer)

	// Behind Caddy's basic_auth, as a site offering it should be.
	resp, err := http.Get(strings.TrimSuffix(p.url, "/") + "/protected/jobs")
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusUnauthorized, resp.StatusCode, "basic_auth guards the dashboard")
	req, _ := http.NewRequest(http.MethodGet, strings.TrimSuffix(p.url, "/")+"/protected/jobs", nil)
	req.SetBasicAuth("ops", "dashboard-pw")
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	assert.Equal(t, http.StatusOK, resp.StatusCode, "and lets the operator in")
}

package receivebooking

// The dashboard against the real binary: who it serves (only requests an
// authentication handler authenticated, unless it is declared public),
// where River UI's log lines go; and in a real browser (Debian's headless
// Chromium, driven with chromedp) behind basic_auth: a queue holding a
// failed job is shown with its booking and organization ids in the list, a screenshot is
// saved, and a write the dashboard must not make (River UI's retry) is
// refused.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/chromedp/cdproto/network"
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

// opsAuth is the Authorization header basic_auth below accepts (user ops,
// password dashboard-pw).
var opsAuth = "Basic " + base64.StdEncoding.EncodeToString([]byte("ops:dashboard-pw"))

const opsBasicAuth = `basic_auth {
			ops $2a$14$GDty4aeXGMbITBwImvtKc.iHzvhnGQneRMNRyYYCqVg9QofLEHgra
		}`

// startDashboard runs the binary with routes (the dashboards) before a
// receive_booking handler on a SQLite queue, and records two webhooks:
// dash-ok syncs, dash-failed ends for good (cancelled). It returns the
// process, the stand-in and dash-failed's job id.
func startDashboard(t *testing.T, routes string) (*caddyProcess, *testkit.StandIn, int64) {
	t.Helper()
	stand := testkit.NewStandIn(t)
	stand.Answer(func(c *testkit.Call) (int, string) {
		if c.Booking == "dash-failed" {
			return 200, testkit.Envelope(c, "not_found")
		}
		return 200, testkit.Envelope(c, "applied")
	})
	dataDir := t.TempDir()
	p := startCaddy(t, dataDir, fmt.Sprintf(`%s
	receive_booking {
		secret %s
		target %s
		queue sqlite %s
	}`, routes, e2eSecret, stand.Target(), filepath.Join(dataDir, "q.sqlite3")))
	status, _, _ := sendOne(http.DefaultClient, p.url, "dash-ok")
	require.Equal(t, 200, status)
	status, body, _ := sendOne(http.DefaultClient, p.url, "dash-failed")
	require.Equal(t, 200, status, "a sync that ends for good is answered 200: %v", body)
	require.Equal(t, "not_found", body["outcome"], "%v", body)
	failed := int64(body["job_id"].(float64))
	require.Eventually(t, func() bool { return jobOf(t, p, "dash-failed") != nil }, 10*time.Second, 50*time.Millisecond)
	return p, stand, failed
}

// get answers a request to the process's site, with headers (name, value,
// …).
func (p *caddyProcess) get(t *testing.T, method, path string, headers ...string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(method, strings.TrimSuffix(p.url, "/")+path, nil)
	require.NoError(t, err)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, resp.Header, string(body)
}

// dashboardPaths are the dashboard's page and its JSON API, under a
// prefix: what a request must not see without authentication.
func dashboardPaths(failed int64) []string {
	return []string{"/", "/jobs?state=cancelled", fmt.Sprintf("/jobs/%d", failed),
		"/api/jobs?state=cancelled&limit=20", "/api/jobs?state=completed&limit=20", fmt.Sprintf("/api/jobs/%d", failed),
		"/api/states", "/api/queues", "/api/features", "/assets/nonexistent.js"}
}

func TestDashboardAccess(t *testing.T) {
	// An auth gateway for forward_auth: one token lets ops in, another
	// passes without naming a user.
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("X-Token") {
		case "let-ops-in":
			w.Header().Set("Remote-User", "ops")
		case "no-user":
		default:
			http.Error(w, "no", http.StatusUnauthorized)
		}
	}))
	t.Cleanup(gateway.Close)
	p, stand, failed := startDashboard(t, fmt.Sprintf(`route /open/* {
		receive_booking_dashboard {
			prefix /open
		}
	}
	route /protected/* {
		%s
		receive_booking_dashboard {
			prefix /protected
		}
	}
	route /fwd/* {
		forward_auth %s {
			uri /check
			copy_headers Remote-User
		}
		vars http.auth.user.id {header.Remote-User}
		receive_booking_dashboard {
			prefix /fwd
		}
	}
	route /public/* {
		receive_booking_dashboard {
			prefix /public
			public
		}
	}`, opsBasicAuth, strings.TrimPrefix(gateway.URL, "http://")))

	t.Run("without an authentication handler: 403, no job data", func(t *testing.T) {
		for _, path := range dashboardPaths(failed) {
			for _, method := range []string{http.MethodGet, http.MethodHead} {
				status, header, body := p.get(t, method, "/open"+path)
				assert.Equal(t, http.StatusForbidden, status, "%s /open%s: %s", method, path, body)
				if method == http.MethodHead {
					continue
				}
				assert.Equal(t, "application/json", header.Get("Content-Type"), "/open%s", path)
				assert.Contains(t, body, "authentication handler", "/open%s says why", path)
				for _, leak := range []string{"dash-failed", "dash-ok", "org-1", "receive_booking_sync", "not_found", "<html"} {
					assert.NotContains(t, body, leak, "/open%s", path)
				}
			}
		}
		status, _, body := p.get(t, http.MethodPost, "/open/api/jobs/retry")
		assert.Equal(t, http.StatusForbidden, status, body)
		t.Logf("DASHBOARD: GET /open/api/jobs?state=cancelled anonymously: %d %s", http.StatusForbidden, body)
	})

	t.Run("behind basic_auth: 401 without credentials, 200 with", func(t *testing.T) {
		status, _, body := p.get(t, http.MethodGet, "/protected/api/jobs?state=cancelled")
		assert.Equal(t, http.StatusUnauthorized, status, "basic_auth challenges: %s", body)
		assert.NotContains(t, body, "dash-failed")

		status, header, body := p.get(t, http.MethodGet, "/protected/jobs?state=cancelled", "Authorization", opsAuth)
		assert.Equal(t, http.StatusOK, status, body)
		assert.Contains(t, header.Get("Content-Type"), "text/html")
		status, _, body = p.get(t, http.MethodGet, "/protected/api/jobs?state=cancelled&limit=20", "Authorization", opsAuth)
		assert.Equal(t, http.StatusOK, status, body)
		assert.Contains(t, body, "dash-failed", "the API answers the operator")

		// The authenticated operator sees each job's args (booking and
		// organization ids) in the list.
		status, _, body = p.get(t, http.MethodGet, "/protected/api/features", "Authorization", opsAuth)
		require.Equal(t, http.StatusOK, status, body)
		var features map[string]any
		require.NoError(t, json.Unmarshal([]byte(body), &features), body)
		assert.Equal(t, false, features["job_list_hide_args_by_default"], body)

		// Still read-only for the operator.
		status, _, body = p.get(t, http.MethodPost, "/protected/api/jobs/retry", "Authorization", opsAuth)
		assert.Equal(t, http.StatusForbidden, status, body)
		assert.Contains(t, body, "read-only")
	})

	t.Run("behind forward_auth, with vars http.auth.user.id", func(t *testing.T) {
		status, _, body := p.get(t, http.MethodGet, "/fwd/api/jobs?state=cancelled&limit=20")
		assert.Equal(t, http.StatusUnauthorized, status, "the gateway refuses: %s", body)
		assert.NotContains(t, body, "dash-failed")
		// A Remote-User the client sends itself is dropped by
		// copy_headers: no user, no dashboard.
		status, _, body = p.get(t, http.MethodGet, "/fwd/api/jobs?state=cancelled&limit=20", "X-Token", "no-user", "Remote-User", "mallory")
		assert.Equal(t, http.StatusForbidden, status, body)
		assert.NotContains(t, body, "dash-failed")
		status, _, body = p.get(t, http.MethodGet, "/fwd/api/jobs?state=cancelled&limit=20", "X-Token", "let-ops-in")
		assert.Equal(t, http.StatusOK, status, body)
		assert.Contains(t, body, "dash-failed")
	})

	t.Run("public: served to anyone, with a warning at provisioning", func(t *testing.T) {
		status, _, body := p.get(t, http.MethodGet, "/public/api/jobs?state=cancelled&limit=20")
		assert.Equal(t, http.StatusOK, status, body)
		assert.Contains(t, body, "dash-failed")
		status, _, _ = p.get(t, http.MethodGet, "/public/jobs")
		assert.Equal(t, http.StatusOK, status)
		status, _, body = p.get(t, http.MethodGet, "/public/api/features")
		require.Equal(t, http.StatusOK, status, body)
		assert.Contains(t, body, `"job_list_hide_args_by_default":true`, "a public list shows ids only on demand")
		warn := logLine(t, p, "receive_booking_dashboard is public")
		assert.Equal(t, "warn", warn["level"], "%v", warn)
		assert.Equal(t, "/public", warn["prefix"], "%v", warn)
		t.Logf("DASHBOARD: public warning: %v", warn)
	})

	t.Run("River UI's log lines reach the module's logger, scrubbed", func(t *testing.T) {
		// River UI logs a bad request (here: a job id that is the
		// webhook key, quoted in its parse error) at info.
		status, _, body := p.get(t, http.MethodGet, "/protected/api/jobs/"+e2eSecret, "Authorization", opsAuth)
		assert.Equal(t, http.StatusBadRequest, status, body)
		var line map[string]any
		require.Eventually(t, func() bool {
			line = findLogLine(p, "API error response")
			return line != nil
		}, 5*time.Second, 50*time.Millisecond, "River UI's line is logged: %s", p.log)
		assert.Equal(t, "receive_booking.queue.riverui", line["logger"], "%v", line)
		assert.Contains(t, line["error"], "[redacted]", "%v", line)
		assert.NotContains(t, p.log.String(), e2eSecret, "no secret in the log")
		t.Logf("DASHBOARD: River UI's line: %v", line)
	})
	assert.Len(t, stand.CallsFor("dash-failed"), 1, "nothing was retried")
}

// findLogLine returns the first JSON line of the process's log whose msg
// holds s, or nil.
func findLogLine(p *caddyProcess, s string) map[string]any {
	for line := range strings.SplitSeq(p.log.String(), "\n") {
		var v map[string]any
		if json.Unmarshal([]byte(line), &v) == nil && strings.Contains(fmt.Sprint(v["msg"]), s) {
			return v
		}
	}
	return nil
}

// logLine is findLogLine, failing the test when there is none.
func logLine(t *testing.T, p *caddyProcess, s string) map[string]any {
	t.Helper()
	v := findLogLine(p, s)
	require.NotNil(t, v, "a log line %q: %s", s, p.log)
	return v
}

// TestDashboardServeHTTP: who the handler serves, without a Caddy.
func TestDashboardServeHTTP(t *testing.T) {
	withUser := func(id any) *http.Request {
		r := httptest.NewRequest(http.MethodGet, "/ui/api/jobs", nil)
		repl := caddy.NewReplacer()
		if id != nil {
			repl.Set("http.auth.user.id", id)
		}
		return r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl))
	}
	for _, tc := range []struct {
		name   string
		public bool
		r      *http.Request
		want   int // 0: served (here: no queue, so an error)
	}{
		{"no replacer", false, httptest.NewRequest(http.MethodGet, "/ui/api/jobs", nil), http.StatusForbidden},
		{"not authenticated", false, withUser(nil), http.StatusForbidden},
		{"empty user id", false, withUser(""), http.StatusForbidden},
		{"authenticated", false, withUser("ops"), 0},
		{"public", true, withUser(nil), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &Dashboard{Prefix: "/ui", Public: tc.public, app: new(App)}
			w := httptest.NewRecorder()
			err := d.ServeHTTP(w, tc.r, nil)
			if tc.want == 0 {
				assert.ErrorContains(t, err, "no receive_booking queue", "it reached the queue")
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.want, w.Code)
			assert.Contains(t, w.Body.String(), "authentication handler")
		})
	}
}

func TestDashboardCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Dashboard
		err  string
	}{
		{in: `receive_booking_dashboard`, want: Dashboard{}},
		{in: `receive_booking_dashboard {
			prefix /queue
			queue q1
			public
		}`, want: Dashboard{Prefix: "/queue", Queue: "q1", Public: true}},
		{in: `receive_booking_dashboard {
			public yes
		}`, err: "wrong argument count"},
		{in: `receive_booking_dashboard /queue`, err: "wrong argument count"},
	} {
		var d Dashboard
		err := d.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
		if tc.err != "" {
			assert.ErrorContains(t, err, tc.err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.want, d, tc.in)
	}
	out, err := json.Marshal(Dashboard{Prefix: "/queue", Public: true})
	require.NoError(t, err)
	assert.JSONEq(t, `{"prefix":"/queue","public":true}`, string(out))
}

func TestDashboardInBrowser(t *testing.T) {
	p, stand, failed := startDashboard(t, fmt.Sprintf(`route /protected/* {
		%s
		receive_booking_dashboard {
			prefix /protected
		}
	}`, opsBasicAuth))

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
	// The operator's credentials on every request the page makes, as the
	// browser sends them once basic_auth's prompt was answered.
	_, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{Headers: network.Headers{"Authorization": opsAuth}})
	require.NoError(t, err)

	base := strings.TrimSuffix(p.url, "/") + "/protected"
	url := base + "/jobs?state=cancelled"
	require.NoError(t, chromedp.Do(ctx, chromedp.Navigate(url)), "the dashboard at %s", url)
	waitText(t, ctx, "receive_booking_sync")
	page, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("body")))
	require.NoError(t, err)
	assert.Contains(t, page, "receive_booking_sync", "the cancelled job is listed")
	assert.Contains(t, page, "dash-failed", "its booking id shows in the list")
	assert.Contains(t, page, "org-1", "its organization shows in the list")
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
	assert.NotContains(t, page+jobPage, "JobCancelError", "in its own words, without River's prefix")

	// A write from the page, as its Retry button would make it: refused.
	answer, err := chromedp.Run(ctx, chromedp.Evaluate[string](fmt.Sprintf(`fetch(%q, {method: "POST",
		headers: {"Content-Type": "application/json"}, body: JSON.stringify({ids: ["%d"]})})
		.then(r => r.status + " " + r.headers.get("Content-Type"))`, "/protected/api/jobs/retry", failed),
		chromedp.EvalAwaitPromise))
	require.NoError(t, err)
	assert.True(t, strings.HasPrefix(answer, "403 "), "River UI's retry is refused: %s", answer)
	time.Sleep(300 * time.Millisecond)
	assert.Equal(t, "cancelled", jobOf(t, p, "dash-failed")["state"], "the job was not retried")
	assert.Len(t, stand.CallsFor("dash-failed"), 1)
	t.Logf("DASHBOARD: a retry posted from the page answered %s; the job stayed cancelled", answer)
}

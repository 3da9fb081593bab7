package receivebooking

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// These tests run the real Caddy binary (testkit.CaddyBinary: RB_CADDY_BIN,
// or built with xcaddy as .ci/run builds it), so that a process can be
// killed with SIGKILL and restarted on the same queue.

func caddyBinary(t *testing.T) string { return testkit.CaddyBinary(t) }

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyProcess is one running Caddy binary.
type caddyProcess struct {
	cmd     *exec.Cmd
	url     string
	admin   string
	log     *lockedBuffer
	config  string // the Caddyfile's path
	dataDir string
}

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startCaddy runs the binary with a site that holds the given directive,
// and waits until it answers.
func startCaddy(t *testing.T, dataDir, directive string) *caddyProcess {
	t.Helper()
	port, adminPort := freePort(t), freePort(t)
	config := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	grace_period 5s
	persist_config off
}
http://127.0.0.1:%d {
	%s
}
`, adminPort, port, port, directive)
	file := filepath.Join(t.TempDir(), "Caddyfile")
	require.NoError(t, os.WriteFile(file, []byte(config), 0o600))
	p := &caddyProcess{url: fmt.Sprintf("http://127.0.0.1:%d/", port), admin: fmt.Sprintf("http://127.0.0.1:%d", adminPort),
		log: new(lockedBuffer), config: file, dataDir: dataDir}
	p.cmd = exec.Command(caddyBinary(t), "run", "--config", file, "--adapter", "caddyfile")
	p.cmd.Env = append(os.Environ(), "XDG_DATA_HOME="+dataDir, "XDG_CONFIG_HOME="+dataDir)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	require.NoError(t, p.cmd.Start())
	t.Cleanup(p.kill)
	require.Eventually(t, func() bool {
		resp, err := http.Get(p.admin + "/config/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "caddy did not start: %s", p.log)
	return p
}

// startQueued runs the binary with one receive_booking handler in front of
// target, with the test secret and a SQLite queue in its data directory;
// lines are added to the handler's block.
func startQueued(t *testing.T, target string, lines ...string) *caddyProcess {
	t.Helper()
	dataDir := t.TempDir()
	lines = append([]string{"secret " + e2eSecret, "target " + target}, lines...)
	lines = append(lines, "queue sqlite "+filepath.Join(dataDir, "q.sqlite3"))
	return startCaddy(t, dataDir, "receive_booking {\n\t\t"+strings.Join(lines, "\n\t\t")+"\n\t}")
}

func (p *caddyProcess) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

// bootFailure is import-bookings down: it fails to start (503).
var bootFailure = testkit.JSON(http.StatusServiceUnavailable, `{"code":"BOOT_ERROR","message":"Function failed to start"}`)

// syncsIn is import-bookings up: each call is a sync that takes d (its
// envelope, outcome applied), and ends unanswered (no sync) if its caller
// hangs up first.
func syncsIn(d time.Duration) testkit.Responder {
	return testkit.Hold(d, nil)
}

// acceptLog records, per booking, when its last accepted webhook was sent,
// and the
// requests that got no answer.
type acceptLog struct {
	mu       sync.Mutex
	last     map[string]time.Time
	n        int
	errors   []string // no answer after three tries
	retries  []string // no answer, sent again
	statuses []int    // non-2xx answers
}

func (a *acceptLog) failed(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.errors = append(a.errors, err.Error())
}

func (a *acceptLog) retried(err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.retries = append(a.retries, err.Error())
}

func (a *acceptLog) rejected(status int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.statuses = append(a.statuses, status)
}

// record notes an accepted webhook, sent at the given time: the change it
// reports was made before it was sent, so a sync that started after that
// time read it.
func (a *acceptLog) record(booking string, sent time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.last == nil {
		a.last = map[string]time.Time{}
	}
	if sent.After(a.last[booking]) {
		a.last[booking] = sent
	}
	a.n++
}

// sendWebhooks posts n webhooks over the given bookings from workers
// goroutines, to the URL that target returns for each, recording 2xx.
func sendWebhooks(n, bookings, workers int, target func(i int) string, accepted *acceptLog, answered *atomic.Int64) {
	client := &http.Client{Timeout: 10 * time.Second}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				booking := fmt.Sprintf("bk-%d", i%bookings)
				resp, sent, err := postOnce(client, target(i), booking, i, accepted)
				if err != nil {
					continue // not accepted: the sender keeps it
				}
				if resp.StatusCode/100 == 2 {
					accepted.record(booking, sent)
				} else {
					accepted.rejected(resp.StatusCode)
				}
				if answered != nil {
					answered.Add(1)
				}
			}
		})
	}
	wg.Wait()
}

// postOnce delivers one webhook as a sender does: a request that got no
// HTTP answer at all (the connection was reset or closed under it) is
// sent again, up to three times. During a reload Caddy closes the old
// server's idle keep-alive connections and hands its listener over; a
// request caught in that instant never reaches a handler. Every such
// retry is counted.
func postOnce(client *http.Client, url, booking string, i int, log *acceptLog) (*http.Response, time.Time, error) {
	var err error
	for try := range 3 {
		if try > 0 {
			log.retried(err)
			time.Sleep(20 * time.Millisecond)
		}
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"booking_id":"`+booking+`","event_type":"booking.updated","organization_id":"org-1"}`))
		req.Header.Set("X-Api-Key", e2eSecret)
		req.Header.Set("Content-Type", "application/json")
		var resp *http.Response
		sent := time.Now()
		if resp, err = client.Do(req); err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp, sent, nil
		}
	}
	log.failed(err)
	return nil, time.Time{}, err
}

// lost lists the accepted bookings that up has not synced after their
// last 202.
func (a *acceptLog) lost(up *testkit.StandIn) []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for b, at := range a.last {
		if !up.SyncedAfter(b, at) {
			out = append(out, b)
		}
	}
	return out
}

// TestCrashNoLoss: async mode, import-bookings down, 1,000 webhooks over
// 200 bookings, Caddy killed with SIGKILL mid-stream and restarted on the
// same SQLite file, then import-bookings comes up: every booking that got
// a 202 is synced after its last accepted webhook.
func TestCrashNoLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	stub.Respond(bootFailure)
	dataDir := t.TempDir()
	directive := fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		mode async
		coalesce_window 200ms
		worker_timeout 2s
		queue sqlite %s
	}`, e2eSecret, stub.URL, filepath.Join(dataDir, "crash.sqlite3"))
	first := startCaddy(t, dataDir, directive)

	var accepted acceptLog
	var answered atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		sendWebhooks(1000, 200, 20, func(int) string { return first.url }, &accepted, &answered)
	}()
	require.Eventually(t, func() bool { return answered.Load() >= 500 }, 60*time.Second, time.Millisecond)
	require.NoError(t, first.cmd.Process.Kill()) // SIGKILL, mid-stream
	_ = first.cmd.Wait()
	<-done
	t.Logf("accepted before the kill: %d webhooks over %d bookings", accepted.n, len(accepted.last))

	restarted := time.Now()
	startCaddy(t, dataDir, directive)
	stub.Respond(syncsIn(0))
	require.Eventually(t, func() bool { return len(accepted.lost(stub)) == 0 }, 90*time.Second, 100*time.Millisecond,
		"bookings accepted but never synced: %v", accepted.lost(stub))
	t.Logf("accepted=%d (bookings=%d) synced=%d lost=%d; all synced %s after the restart; upstream calls=%d",
		accepted.n, len(accepted.last), len(accepted.last)-len(accepted.lost(stub)), len(accepted.lost(stub)),
		time.Since(restarted).Round(100*time.Millisecond), len(stub.Calls()))
}

// TestCrashPostgresRerunsInterruptedSync: a sync that was running on a
// PostgreSQL queue when its Caddy was killed runs again as soon as that
// instance restarts, once its call could have ended (worker_timeout after
// it started: import-bookings goes on without its caller), not only when
// River's rescuer notices it.
func TestCrashPostgresRerunsInterruptedSync(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	stub.Respond(syncsIn(time.Hour)) // the first sync hangs
	dataDir := t.TempDir()
	directive := fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		mode async
		coalesce_window 0
		worker_timeout 2s
		queue postgres %s
	}`, e2eSecret, stub.URL, testkit.FreshPostgresDSN(t))
	first := startCaddy(t, dataDir, directive)
	var accepted acceptLog
	sendWebhooks(1, 1, 1, func(int) string { return first.url }, &accepted, nil)
	require.Equal(t, 1, accepted.n)
	require.Eventually(t, func() bool { return len(stub.Calls()) == 1 }, 10*time.Second, 10*time.Millisecond, "the sync started")
	require.NoError(t, first.cmd.Process.Kill())
	_ = first.cmd.Wait()

	stub.Respond(syncsIn(0))
	restarted := time.Now()
	startCaddy(t, dataDir, directive) // same data directory: the same instance
	require.Eventually(t, func() bool { return len(accepted.lost(stub)) == 0 }, 15*time.Second, 50*time.Millisecond,
		"the interrupted sync ran again after the restart")
	t.Logf("interrupted sync ran again %s after the restart", time.Since(restarted).Round(10*time.Millisecond))
}

// TestTwoInstancesPostgres: two Caddy processes share one PostgreSQL
// queue; bursts to both; no booking is ever synced by both at once, every
// booking is synced after its last 202, and the upstream calls stay within
// the coalescing bound.
func TestTwoInstancesPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	stub.Respond(syncsIn(200 * time.Millisecond))
	dsn := testkit.FreshPostgresDSN(t)
	directive := fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		mode async
		coalesce_window 300ms
		queue postgres %s
	}`, e2eSecret, stub.URL, dsn)
	a := startCaddy(t, t.TempDir(), directive)
	b := startCaddy(t, t.TempDir(), directive)

	const webhooks, bookings = 500, 25
	var accepted acceptLog
	start := time.Now()
	sendWebhooks(webhooks, bookings, 20, func(i int) string {
		if i%2 == 0 {
			return a.url
		}
		return b.url
	}, &accepted, nil)
	burst := time.Since(start)
	require.Eventually(t, func() bool { return len(accepted.lost(stub)) == 0 }, 60*time.Second, 100*time.Millisecond,
		"bookings accepted but never synced: %v", accepted.lost(stub))
	time.Sleep(time.Second) // let any last follow-up run
	bound := 2*bookings + int(float64(bookings)*burst.Seconds()/0.3)
	calls := len(stub.Calls())
	maxConcurrent, _ := stub.MaxInFlight()
	t.Logf("webhooks=%d accepted=%d bookings=%d burst=%s upstream calls=%d bound=%d max concurrent syncs per booking=%d",
		webhooks, accepted.n, len(accepted.last), burst.Round(time.Millisecond), calls, bound, maxConcurrent)
	assert.Equal(t, webhooks, accepted.n, "every webhook accepted: errors %v, statuses %v", accepted.errors, accepted.statuses)
	assert.Equal(t, 1, maxConcurrent, "no booking synced by both instances at once")
	assert.LessOrEqual(t, calls, bound)
}

// TestWaitersHearSyncsRunElsewherePostgres: two instances share one
// PostgreSQL queue, each calling its own target path; senders in auto mode
// post only to A, one booking each, one after another. Every one gets the
// sync's 200 with import-bookings' whole answer (12 KB: more than a
// notification carries), those whose sync B ran too, as soon as it ended
// (not a 202 at timeout).
func TestWaitersHearSyncsRunElsewherePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	stub.SetDelay(250 * time.Millisecond)
	// Answers longer than a notification carries (NOTIFY refuses 8000
	// bytes): the sender still gets the whole of it.
	pad := strings.Repeat("x", 12000)
	stub.Answer(func(c *testkit.Call) (int, string) {
		return 200, envelopeWith(c, "applied", `"results":{"log":"`+pad+`"}`)
	})
	dsn := testkit.FreshPostgresDSN(t)
	directive := func(path string) string {
		return fmt.Sprintf(`receive_booking {
		secret %s
		target %s%s
		mode auto
		timeout 10s
		coalesce_window 0
		queue postgres %s
	}`, e2eSecret, stub.URL, path, dsn)
	}
	a := startCaddy(t, t.TempDir(), directive("/a"))
	startCaddy(t, t.TempDir(), directive("/b"))

	client := &http.Client{Timeout: 30 * time.Second}
	var byB []time.Duration
	for i := range 20 {
		booking := fmt.Sprintf("bk-%d", i)
		req, _ := http.NewRequest(http.MethodPost, a.url, strings.NewReader(`{"booking_id":"`+booking+`","event_type":"booking.updated","organization_id":"org-1"}`))
		req.Header.Set("X-Api-Key", e2eSecret)
		req.Header.Set("Content-Type", "application/json")
		start := time.Now()
		resp, err := client.Do(req)
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		took := time.Since(start)
		calls := stub.CallsFor(booking)
		require.Len(t, calls, 1, "one sync of %s", booking)
		assert.Equal(t, http.StatusOK, resp.StatusCode, "%s (run by %s, answered after %s): %s", booking, calls[0].Path, took, body)
		assert.Contains(t, string(body), `"success":true`)
		assert.Contains(t, string(body), `"sync_result":{`, "%s: import-bookings' answer", booking)
		assert.Contains(t, string(body), pad, "%s (run by %s): the whole answer, %d bytes", booking, calls[0].Path, len(body))
		if calls[0].Path == "/b" {
			byB = append(byB, took)
			assert.Less(t, took, 3*time.Second, "%s was run by B and answered at once", booking)
		}
	}
	t.Logf("syncs run by B: %d of 20, answered after %v", len(byB), byB)
	assert.NotEmpty(t, byB, "B ran some of the syncs (otherwise this test proves nothing)")
}

// TestReloadDuringStream reloads the config through the admin API three
// times while webhooks stream in: no request fails, and every accepted
// booking is synced, never twice at once.
func TestReloadDuringStream(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the Caddy binary")
	}
	stub := testkit.NewStandIn(t)
	stub.Respond(syncsIn(50 * time.Millisecond))
	dataDir := t.TempDir()
	dbPath := filepath.Join(dataDir, "reload.sqlite3")
	directive := func(timeout string) string {
		return fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		mode async
		timeout %s
		queue sqlite %s
	}`, e2eSecret, stub.URL, timeout, dbPath)
	}
	p := startCaddy(t, dataDir, directive("12s"))

	var accepted acceptLog
	var answered atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		sendWebhooks(1500, 100, 10, func(int) string { return p.url }, &accepted, &answered)
	}()
	for i, timeout := range []string{"11s", "13s", "12s"} {
		require.Eventually(t, func() bool { return answered.Load() >= int64(300*(i+1)) }, 30*time.Second, time.Millisecond)
		p.reload(t, directive(timeout))
	}
	<-done
	assert.Equal(t, int64(1500), answered.Load())
	assert.Empty(t, accepted.statuses, "no webhook was answered with an error across the reloads")
	assert.Equal(t, 1500, accepted.n, "every webhook accepted: %v", accepted.errors)
	require.Eventually(t, func() bool { return len(accepted.lost(stub)) == 0 }, 60*time.Second, 100*time.Millisecond,
		"bookings accepted but never synced: %v", accepted.lost(stub))
	maxConcurrent, _ := stub.MaxInFlight()
	assert.Equal(t, 1, maxConcurrent, "no booking synced twice at once")
	assert.NotContains(t, p.log.String(), "duplicate metrics collector registration")
	t.Logf("accepted=%d bookings=%d upstream calls=%d; connection-level resends during the reloads=%d %v",
		accepted.n, len(accepted.last), len(stub.Calls()), len(accepted.retries), accepted.retries)
}

// reload loads a new config with the given site body through the admin
// API, as `caddy reload` does.
func (p *caddyProcess) reload(t *testing.T, directive string) {
	t.Helper()
	body := fmt.Sprintf("{\n\tadmin %s\n\thttp_port %s\n\tgrace_period 5s\n\tpersist_config off\n}\n%s {\n\t%s\n}\n",
		strings.TrimPrefix(p.admin, "http://"), portOf(p.url), strings.TrimSuffix(p.url, "/"), directive)
	resp, err := http.Post(p.admin+"/load", "text/caddyfile", strings.NewReader(body))
	require.NoError(t, err)
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "reload: %s", msg)
}

// adminJSON calls the process's admin API and decodes the JSON answer.
func (p *caddyProcess) adminJSON(t *testing.T, method, path string) (int, map[string]any) {
	t.Helper()
	var out map[string]any
	return p.adminDecode(t, method, path, &out), out
}

// adminDecode calls the admin API and decodes its JSON answer into out;
// it returns the status.
func (p *caddyProcess) adminDecode(t *testing.T, method, path string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, p.admin+path, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	require.NoError(t, json.Unmarshal(raw, out), "%s %s: %s", method, path, raw)
	return resp.StatusCode
}

func portOf(u string) string {
	u = strings.TrimSuffix(u, "/")
	return u[strings.LastIndex(u, ":")+1:]
}

package receivebooking

// The SQLite file's size under a steady stream of webhooks, and after it:
// a measurement for the operations guide, not a pass/fail speed target.
// It runs only when asked:
//
//	RB_SOAK_SECONDS=60 RB_SOAK_RATE=640 RB_CADDY_BIN=$PWD/caddy \
//	  RB_SOAK_LINES='retention completed 5s;retention cancelled 5s;retention discarded 5s' \
//	  go test -count=1 -run TestSoakFileSize -v .
//
// RB_SOAK_LINES are added to the handler's block (';' between lines;
// mode async unless they name a mode); RB_SOAK_IDLE is how long it watches
// the file after the load (default 60s); RB_SOAK_UPSTREAM=not_found makes
// every sync fail for good, =503 every attempt fail (see max_attempts).

import (
	"cmp"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

func TestSoakFileSize(t *testing.T) {
	seconds, _ := strconv.Atoi(os.Getenv("RB_SOAK_SECONDS"))
	if seconds <= 0 {
		t.Skip("a measurement: set RB_SOAK_SECONDS (and RB_SOAK_RATE, RB_SOAK_LINES)")
	}
	rate, _ := strconv.Atoi(os.Getenv("RB_SOAK_RATE"))
	rate = max(rate, 1)
	idle, err := time.ParseDuration(cmp.Or(os.Getenv("RB_SOAK_IDLE"), "60s"))
	require.NoError(t, err)
	stand := testkit.NewStandIn(t)
	switch os.Getenv("RB_SOAK_UPSTREAM") {
	case "not_found": // every job cancelled after one attempt
		stand.Answer(func(c *testkit.Call) (int, string) { return http.StatusOK, testkit.Envelope(c, "not_found") })
	case "503": // every attempt retried a second later, until the last
		stand.Respond(func(w http.ResponseWriter, _ *http.Request, _ *testkit.Call) {
			w.Header().Set("Retry-After", "1")
			testkit.WriteJSON(w, http.StatusServiceUnavailable, `{"code":"BOOT_ERROR","message":"Function failed to start"}`)
		})
	}
	lines := []string{"coalesce_window 0"}
	if extra := os.Getenv("RB_SOAK_LINES"); extra != "" {
		lines = append(lines, strings.Split(extra, ";")...)
	}
	if !strings.Contains(strings.Join(lines, ";"), "mode ") {
		lines = append(lines, "mode async")
	}
	p := startQueued(t, stand.Target(), lines...)
	waitHealthy(t, p)
	file := filepath.Join(p.dataDir, "q.sqlite3")
	size := func() (db, wal int64) {
		if fi, err := os.Stat(file); err == nil {
			db = fi.Size()
		}
		if fi, err := os.Stat(file + "-wal"); err == nil {
			wal = fi.Size()
		}
		return db, wal
	}
	var sent, failed atomic.Int64
	var latMu sync.Mutex
	var lat []time.Duration
	report := func(phase string, start time.Time) {
		db, wal := size()
		var stats struct {
			Counts map[string]int64 `json:"counts"`
		}
		adminJSON(t, p, "/receive_booking/stats", &stats)
		t.Logf("%-5s %4.0fs  sent %7d  finished kept %7d  pending %5d  file %6.1f MB  wal %5.1f MB  total %6.1f MB",
			phase, time.Since(start).Seconds(), sent.Load(), stats.Counts["completed"]+stats.Counts["cancelled"]+stats.Counts["discarded"],
			stats.Counts["available"]+stats.Counts["scheduled"]+stats.Counts["running"]+stats.Counts["retryable"],
			float64(db)/1e6, float64(wal)/1e6, float64(db+wal)/1e6)
	}
	db0, wal0 := size()
	t.Logf("directive lines: %q; %d webhooks/s for %ds; file at start %.1f MB (wal %.1f MB)", lines, rate, seconds, float64(db0)/1e6, float64(wal0)/1e6)

	// Senders: distinct bookings, paced to rate in all.
	start := time.Now()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const senders = 16
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: senders}}
	for s := range senders {
		wg.Go(func() {
			tick := time.NewTicker(time.Second * senders / time.Duration(rate))
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				t0 := time.Now()
				status, _, _ := sendOne(client, p.url, fmt.Sprintf("soak-%d-%d", s, i))
				d := time.Since(t0)
				latMu.Lock()
				lat = append(lat, d)
				latMu.Unlock()
				sent.Add(1)
				if status >= 300 {
					failed.Add(1)
				}
			}
		})
	}
	for time.Since(start) < time.Duration(seconds)*time.Second {
		time.Sleep(5 * time.Second)
		report("load", start)
	}
	close(stop)
	wg.Wait()
	loadEnd := time.Now()
	dbEnd, walEnd := size()
	for time.Since(loadEnd) < idle {
		time.Sleep(5 * time.Second)
		report("idle", start)
	}
	dbIdle, walIdle := size()
	slices.Sort(lat)
	pct := func(q float64) time.Duration {
		return lat[min(len(lat)-1, int(q*float64(len(lat))))].Round(10 * time.Microsecond)
	}
	t.Logf("answer latency: p50 %s, p99 %s, p99.9 %s, max %s", pct(0.5), pct(0.99), pct(0.999), lat[len(lat)-1].Round(time.Millisecond))
	t.Logf("sent %d (%d not answered 2xx) in %s: %.0f/s; file grew %.1f MB during the load (%.0f bytes per webhook), %.1f MB at the end of the idle time",
		sent.Load(), failed.Load(), loadEnd.Sub(start).Round(time.Second), float64(sent.Load())/loadEnd.Sub(start).Seconds(),
		float64(dbEnd+walEnd-db0-wal0)/1e6, float64(dbEnd+walEnd-db0-wal0)/float64(max(sent.Load(), 1)), float64(dbIdle+walIdle)/1e6)
}

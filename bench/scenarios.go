package main

// The scenarios: each one's Caddyfile, its load, and what it records.

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
)

// probeID names the booking of each scenario's probe: outside the ids the
// load uses, so that it merges with none of them.
const probeID = 1_000_000_000

// start adds a scenario's row, starts Caddy with site (none when site is
// empty: the load goes straight to the stub), checks the wiring with one
// webhook that must be answered status, waits for the sync it caused, and
// reads Caddy's idle RSS. ok is false when the scenario is not selected or
// could not start; the row then says why. The caller stops c (nil-safe).
func (b *bench) start(key, name, site string, status int) (r *row, c *caddyProc, url string, ok bool) {
	if !want(key) {
		return nil, nil, "", false
	}
	r = &row{key: key, name: name, site: site, upstream: -1, perBook: -1, caddyCPU: -1, driverCPU: -1, otherCPU: -1}
	b.rows = append(b.rows, r)
	logf("scenario %s: %s", key, name)
	b.stub.reset(0)
	url = b.stub.Target()
	if site != "" {
		var err error
		if c, err = startCaddy(b.caddyBin, filepath.Join(b.tmp, key), site); err != nil {
			b.fail(r, "Caddy did not start: "+firstLine(err.Error()))
			logf("%v", err)
			return r, nil, "", false
		}
		url = c.siteURL()
	}
	got, body, err := probe(url, probeID)
	if err != nil || got != status {
		b.fail(r, fmt.Sprintf("probe: status %d, want %d: %v %s", got, status, err, oneLine(body)))
		return r, c, url, false
	}
	// The probe's sync (queued ones run after the coalescing window)
	// must not count in the scenario.
	if status == 202 {
		b.stub.waitDone(1, 15*time.Second)
	} else if n := b.stub.Counts().Received; n > 0 {
		b.stub.waitDone(n, 5*time.Second)
	}
	if c != nil {
		time.Sleep(300 * time.Millisecond)
		if err := c.resetPeak(); err != nil {
			logf("  clear_refs: %v (peak RSS includes Caddy's start)", err)
		}
		r.idleKB, _ = c.procStatus("VmRSS")
	}
	return r, c, url, true
}

func (b *bench) fail(r *row, note string) {
	r.note, r.failed = note, true
	logf("  %s", note)
}

// finish reads what every scenario with Caddy reports once its load is
// over: peak RSS and the log.
func (b *bench) finish(r *row, c *caddyProc) {
	if c == nil {
		return
	}
	r.peakKB, _ = c.procStatus("VmHWM")
	r.leaked = c.logContains(apiKey)
	if r.load != nil && r.load.nonOK() > 0 && r.note == "" {
		b.fail(r, r.load.problems())
	}
}

// profile starts a CPU profile of Caddy over d; wait waits for it. Without
// Caddy, or with -pprof=false, it does nothing.
func (b *bench) profile(r *row, c *caddyProc, d time.Duration) (wait func()) {
	if c == nil || !*flagPprof {
		return func() {}
	}
	path := filepath.Join(b.profDir, r.key+".cpu.pprof")
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := c.cpuProfile(path, d); err != nil {
			logf("  profile: %v", err)
			return
		}
		r.profile = path
	}()
	return func() { <-done }
}

func (b *bench) throughput(key, name string, status int, site string) {
	b.closedRun(key, name, status, *flagConcurrency, site)
}

// latency is a closed loop with one request in flight: what one sender
// waits, without queueing behind others.
func (b *bench) latency(key, name, site string) {
	b.closedRun(key, name, 200, 1, site)
}

// closedRun runs wrk with conns connections for a 1 s warm-up, then for
// -duration, measured, while Caddy's CPU is profiled and metered.
func (b *bench) closedRun(key, name string, status, conns int, site string) {
	r, c, url, ok := b.start(key, name, site, status)
	defer c.stop()
	if !ok {
		return
	}
	run := wrkRun{url: url, connections: conns, duration: warmup}
	if _, err := b.wrk.run(run); err != nil {
		b.fail(r, "warm-up: "+err.Error())
		return
	}
	b.stub.reset(0)
	lines0 := c.logLines()
	wait := b.profile(r, c, *flagDuration)
	cpu := c.startCPU()
	run.duration = *flagDuration
	res, err := b.wrk.run(run)
	use := cpu.stop()
	wait()
	if err != nil {
		b.fail(r, err.Error())
		return
	}
	r.setCPU(use, res.wrkCPU)
	r.load = res
	r.upstream = b.stub.Counts().Received
	r.logLines = c.logLines() - lines0
	b.finish(r, c)
	logf("  %.0f/s p50 %s p99 %s non-2xx %d; CPU: Caddy %.0f%%, wrk %.0f%%, driver %.0f%%, other %.0f%%",
		res.okPerSec(), ms(res.p50), ms(res.p99), res.nonOK(), r.caddyCPU, res.wrkCPU, r.driverCPU, r.otherCPU)
}

// coalescing sends 1,000 webhooks over 50 bookings within one second
// against a stub taking 200 ms, counts the upstream calls once they have
// stopped, and the most calls in flight at once for one booking.
func (b *bench) coalescing(key, name, site string) {
	status := 200
	if isAsync(site) {
		status = 202
	}
	r, c, url, ok := b.start(key, name, site, status)
	defer c.stop()
	if !ok {
		return
	}
	b.stub.reset(burstDelay)
	cpu := c.startCPU()
	r.load = burst(url, cycle(burstBookings), burstWebhooks, burstSpread, 2*time.Minute)
	r.setCPU(cpu.stop(), -1)
	r.upstream = b.stub.waitQuiet(3*time.Second, 2*time.Minute)
	r.perBook = b.stub.Counts().MaxPerBooking
	r.inflight = b.stub.Counts().MaxInFlight
	b.finish(r, c)
	logf("  sent %d in %s, upstream calls %d, at most %d at once for one booking, non-2xx %d",
		r.load.requests, r.load.elapsed.Round(time.Millisecond), r.upstream, r.perBook, r.load.nonOK())
}

// memory sends 1,000 webhooks for distinct bookings at once, each on its
// own connection, against a stub taking delay, and reads Caddy's peak RSS
// once every answer is in and the stub is quiet.
func (b *bench) memory(key, name string, status int, delay time.Duration, site string) {
	r, c, url, ok := b.start(key, name, site, status)
	defer c.stop()
	if !ok {
		return
	}
	b.stub.reset(delay)
	cpu := c.startCPU()
	// What is live while the senders wait: a heap profile and the
	// goroutine count, taken 150 ms into the burst.
	snap := b.memSnapshot(r, c, 150*time.Millisecond)
	r.load = burst(url, distinct, memSenders, 0, 2*time.Minute)
	<-snap
	r.setCPU(cpu.stop(), -1)
	r.upstream = b.stub.waitQuiet(2*time.Second, 2*time.Minute)
	r.inflight = b.stub.Counts().MaxInFlight
	r.perBook = b.stub.Counts().MaxPerBooking
	b.finish(r, c)
	logf("  idle %.1f MiB, peak %.1f MiB, stub saw %d at once, non-2xx %d", mib(r.idleKB), mib(r.peakKB), r.inflight, r.load.nonOK())
}

// startHeld is start for a queued scenario whose stub holds every call
// until released; stop releases the stub and stops Caddy.
func (b *bench) startHeld(key, name, site string) (r *row, c *caddyProc, url string, stop func(), ok bool) {
	r, c, url, ok = b.start(key, name, site, 202)
	b.stub.reset(0)
	b.stub.holdCalls()
	return r, c, url, func() { b.stub.release(); c.stop() }, ok
}

// drain queues -drain jobs for distinct bookings while the stub holds
// every call, then releases it and times the syncs until all are done.
func (b *bench) drain(key, name, site string) {
	r, c, url, stop, ok := b.startHeld(key, name, site)
	defer stop()
	if !ok {
		return
	}
	fill, err := b.wrk.run(wrkRun{url: url, connections: *flagConcurrency, duration: time.Hour, distinct: true, stopAfter: *flagDrain})
	if err != nil {
		b.fail(r, "filling: "+err.Error())
		return
	}
	r.load = fill
	if fill.nonOK() > 0 {
		b.fail(r, "filling: "+fill.problems())
		return
	}
	// Wait until the last acks have landed and every job is past its
	// coalescing window, so that the drain measures the workers, not the
	// window.
	var pending, prev int64 = 0, -1
	for deadline := time.Now().Add(30 * time.Second); ; {
		time.Sleep(300 * time.Millisecond)
		st, err := queueStats(c)
		if err != nil {
			b.fail(r, err.Error())
			return
		}
		pending = st.pending()
		if (pending == prev && st.Counts["scheduled"] == 0) || time.Now().After(deadline) {
			break
		}
		prev = pending
	}
	logf("  queued %d jobs at %.0f acks/s; releasing the stub", pending, fill.okPerSec())
	wait := b.profile(r, c, *flagDuration)
	cpu := c.startCPU()
	start := time.Now()
	b.stub.release()
	done := b.stub.waitDone(pending, max(10*time.Minute, time.Duration(pending)*time.Millisecond*10))
	elapsed, synced := time.Since(start), b.stub.Counts().Synced
	r.setCPU(cpu.stop(), -1)
	r.rate = float64(synced) / elapsed.Seconds()
	r.upstream = b.stub.waitQuiet(2*time.Second, time.Minute)
	r.perBook = b.stub.Counts().MaxPerBooking
	r.inflight = b.stub.Counts().MaxInFlight
	wait()
	b.finish(r, c)
	// The stats call once the queue is empty, its finished jobs kept as
	// history (the best of three: a call may meet River's completer).
	var statsTook time.Duration
	for i := range 3 {
		_, took, problem := backlogStats(c)
		if problem != "" {
			logf("  stats after the drain: %s", problem)
			break
		}
		if i == 0 || took < statsTook {
			statsTook = took
		}
	}
	r.extra = fmt.Sprintf("Scenario 9: %d jobs queued by wrk at %.0f acks/s (p99 %s) while the stub held every call; "+
		"%d syncs done %s after the release (%.0f/s); %d calls in all once quiet. Then, with the queue's %d finished jobs kept "+
		"as history, `GET /receive_booking/stats` took %s.", pending, fill.okPerSec(), ms(fill.p99),
		synced, elapsed.Round(time.Millisecond), r.rate, r.upstream, synced, ms(statsTook))
	if !done {
		b.fail(r, fmt.Sprintf("only %d of %d jobs done in time", synced, pending))
	}
	logf("  drained %d in %s: %.0f/s, Caddy CPU %.0f%%", synced, elapsed.Round(time.Millisecond), r.rate, r.caddyCPU)
}

// tenth is one tenth of scenario 10's backlog.
type tenth struct {
	backlog  int64 // pending jobs after it, from the admin API
	load     *loadResult
	caddyCPU float64
	stats    time.Duration // the admin API's /receive_booking/stats call after it
	statsErr string
}

// backlog grows the queue to -backlog jobs for distinct bookings while the
// stub holds every call, a tenth at a time, timing the acks of each tenth
// and the admin API's stats call after it. The first tenth starts with a
// 1 s warm-up (its jobs count in the backlog, its acks not in the rate).
func (b *bench) backlog(key, name, site string) {
	r, c, url, stop, ok := b.startHeld(key, name, site)
	defer stop()
	if !ok {
		return
	}
	per := (*flagBacklog + 9) / 10
	run := wrkRun{url: url, connections: *flagConcurrency, duration: warmup, distinct: true, first: 1, stopAfter: max(per/2, 1)}
	w, err := b.wrk.run(run)
	if err != nil {
		b.fail(r, "warm-up: "+err.Error())
		return
	}
	// Ids of requests wrk abandoned when it stopped are skipped too.
	run.first += w.requests + uint64(*flagConcurrency) + 1
	run.stopAfter = max(per-int(w.requests), 1)
	run.duration = time.Hour
	total := &loadResult{}
	var caddyCPU, wrkCPU float64
	for k := range 10 {
		wait := func() {}
		if k == 9 {
			wait = b.profile(r, c, *flagDuration)
		}
		cpu := c.startCPU()
		res, err := b.wrk.run(run)
		t := tenth{caddyCPU: cpu.stop().caddy, load: res}
		wait()
		if err != nil {
			b.fail(r, fmt.Sprintf("tenth %d: %v", k+1, err))
			return
		}
		run.first += uint64(run.stopAfter + *flagConcurrency + 1)
		run.stopAfter = per
		t.backlog, t.stats, t.statsErr = backlogStats(c)
		r.tenths = append(r.tenths, t)
		r.statsMax = max(r.statsMax, t.stats)
		total.add(res)
		caddyCPU += t.caddyCPU * res.elapsed.Seconds()
		wrkCPU += res.wrkCPU * res.elapsed.Seconds()
		logf("  backlog %d/10: %d pending, %.0f acks/s, p99 %s, non-2xx %d, stats %s %s",
			k+1, t.backlog, res.okPerSec(), ms(res.p99), res.nonOK(), ms(t.stats), t.statsErr)
	}
	total.wrkCPU = wrkCPU / total.elapsed.Seconds()
	r.caddyCPU = caddyCPU / total.elapsed.Seconds()
	r.load = total
	r.upstream = b.stub.Counts().Received
	b.finish(r, c)
	for _, t := range r.tenths {
		if t.statsErr != "" && r.note == "" {
			b.fail(r, "stats: "+t.statsErr)
		}
	}
}

// backlogStats times one GET /receive_booking/stats and returns the
// pending jobs it counts.
func backlogStats(c *caddyProc) (pending int64, took time.Duration, problem string) {
	code, body, took, err := c.adminGet("/receive_booking/stats")
	var st statsAnswer
	switch {
	case err != nil:
		return 0, took, err.Error()
	case code != 200:
		return 0, took, fmt.Sprintf("status %d: %s", code, oneLine(string(body)))
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return 0, took, err.Error()
	}
	return st.pending(), took, ""
}

// statsAnswer is the part of /receive_booking/stats the driver reads.
type statsAnswer struct {
	Counts map[string]int64 `json:"counts"`
}

// pending is the jobs not done yet.
func (s *statsAnswer) pending() (n int64) {
	for _, st := range queue.PendingStates {
		n += s.Counts[st]
	}
	return n
}

func queueStats(c *caddyProc) (*statsAnswer, error) {
	code, body, _, err := c.adminGet("/receive_booking/stats")
	if err != nil {
		return nil, fmt.Errorf("admin stats: %w", err)
	}
	if code != 200 {
		return nil, fmt.Errorf("admin stats: status %d: %s", code, oneLine(string(body)))
	}
	var st statsAnswer
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("admin stats: %w", err)
	}
	return &st, nil
}

func isAsync(site string) bool { return strings.Contains(site, "mode async") }

package main

// Scenarios of auto mode's tail (issue 18): auto mode on PostgreSQL, the
// memory a waiting sender holds, and how fast a capped backlog drains
// across instances.

import (
	"fmt"
	"path/filepath"
	"sync"
	"time"
)

const noDSN = "skipped: no DSN (-pg or RB_TEST_POSTGRES_DSN)"

// scenarioPG is a fresh PostgreSQL database for a scenario, or false when
// the scenario is skipped (no DSN, or the database could not be made).
func (b *bench) scenarioPG(key, name string) (string, bool) {
	if *flagPG == "" {
		b.skip(key, name, noDSN)
		return "", false
	}
	dsn, err := b.freshPG(key)
	if err != nil {
		b.skip(key, name, err.Error())
		return "", false
	}
	return dsn, true
}

// memSnapshot takes, after a delay into a burst, a heap profile of c, its
// goroutine count and the runtime's memory figures into r; the channel
// closes when they are taken.
func (b *bench) memSnapshot(r *row, c *caddyProc, after time.Duration) <-chan struct{} {
	snap := make(chan struct{})
	go func() {
		defer close(snap)
		time.Sleep(after)
		path := filepath.Join(b.profDir, r.key+".heap.pprof")
		if err := c.fetch("/debug/pprof/heap", path, 30*time.Second); err != nil {
			logf("  heap profile: %v", err)
			return
		}
		r.heapProfile = path
		r.goroutines = c.goroutines()
		r.mem = c.memStats()
	}()
	return snap
}

// pgThroughput is throughput on a fresh PostgreSQL database of its own.
func (b *bench) pgThroughput(key, name string, status int, extra ...string) {
	if !want(key) {
		return
	}
	dsn, ok := b.scenarioPG(key, name)
	if !ok {
		return
	}
	b.throughput(key, name, status, b.receiveBooking(append(extra, "queue postgres `"+dsn+"`")...))
}

// waiting sends waitSenders webhooks for distinct bookings at once, each
// on its own connection, in auto mode while the stub holds every call, so
// that every sender waits (until the handler's timeout answers it 202);
// waitSnapshot into the burst it takes a heap profile, the goroutine count
// and the runtime's memory figures. Peak RSS above idle, divided by the
// senders, is what one waiting sender costs.
func (b *bench) waiting(key, name, site string) {
	r, c, url, stop, ok := b.startHeldStatus(key, name, site, 200)
	defer stop()
	if !ok {
		return
	}
	cpu := c.startCPU()
	snap := b.memSnapshot(r, c, waitSnapshot)
	r.load = burst(url, distinct, waitSenders, 0, 2*time.Minute)
	<-snap
	r.setCPU(cpu.stop(), -1)
	r.upstream = b.stub.Counts().Received
	r.inflight = b.stub.Counts().MaxInFlight
	r.perBook = b.stub.Counts().MaxPerBooking
	b.finish(r, c)
	above := r.peakKB - min(r.idleKB, r.peakKB)
	r.extra = fmt.Sprintf("Scenario %s: %d senders waited at once (answered after the handler's `timeout`, %s); "+
		"peak RSS %.1f MiB above idle, **%.1f KB per waiting sender**; %d goroutines %s into the burst.",
		key, r.load.requests, codesText(r.load), mib(above), float64(above)/float64(waitSenders), r.goroutines, waitSnapshot)
	logf("  idle %.1f MiB, peak %.1f MiB: %.1f KB per sender; %d goroutines; non-2xx %d",
		mib(r.idleKB), mib(r.peakKB), float64(above)/float64(waitSenders), r.goroutines, r.load.nonOK())
}

// startHeldStatus is startHeld with the probe's status.
func (b *bench) startHeldStatus(key, name, site string, status int) (r *row, c *caddyProc, url string, stop func(), ok bool) {
	r, c, url, ok = b.start(key, name, site, status)
	b.stub.reset(0)
	b.stub.holdCalls()
	return r, c, url, func() { b.stub.release(); c.stop() }, ok
}

func codesText(l *loadResult) string {
	s := ""
	for code, n := range l.codes {
		if s != "" {
			s += ", "
		}
		s += fmt.Sprintf("%d×%d", n, code)
	}
	return s
}

// capDrain runs two Caddy instances on one fresh PostgreSQL database with
// max_in_flight capSlots, queues capJobs jobs for distinct bookings
// through both (mode async) against a stub taking capDelay per call, and
// times the drain from the first call's start to the last sync's end:
// with N slots and L per call it cannot beat N/L jobs/s, and it reaches it
// only if a freed slot goes to a waiting sync at once, whichever instance
// freed it. The stub's most calls in flight must never exceed N.
func (b *bench) capDrain(key, name string) {
	if !want(key) {
		return
	}
	dsn, ok := b.scenarioPG(key, name)
	if !ok {
		return
	}
	site := b.receiveBooking("mode async", fmt.Sprintf("max_in_flight %d", capSlots), "queue postgres `"+dsn+"`")
	r, a, urlA, ok := b.start(key, name, site, 202)
	defer a.stop()
	if !ok {
		return
	}
	bc, err := startCaddy(b.caddyBin, filepath.Join(b.tmp, key+"-b"), site)
	if err != nil {
		b.fail(r, "second Caddy did not start: "+firstLine(err.Error()))
		return
	}
	defer bc.stop()
	urlB := bc.siteURL()
	if got, body, err := probe(urlB, probeID+1); err != nil || got != 202 {
		b.fail(r, fmt.Sprintf("probe of the second instance: status %d, want 202: %v %s", got, err, oneLine(body)))
		return
	}
	b.stub.waitDone(2, 15*time.Second) // both probes' syncs
	time.Sleep(300 * time.Millisecond)
	b.stub.reset(capDelay)

	cpuA, cpuB := a.startCPU(), bc.startCPU()
	// Queue the backlog, alternating between the instances, from a few
	// senders at once.
	r.load = sendEach(capJobs, func(i int) string {
		if i%2 == 0 {
			return urlA
		}
		return urlB
	})
	if r.load.nonOK() > 0 {
		b.fail(r, "queueing: "+r.load.problems())
		return
	}
	var first, last time.Time
	limit := time.Now().Add(time.Duration(capJobs)*capDelay + time.Minute)
	for time.Now().Before(limit) {
		cn := b.stub.Counts()
		if first.IsZero() && cn.Received > 0 {
			first = time.Now()
		}
		if cn.Synced >= capJobs {
			last = time.Now()
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	useA, useB := cpuA.stop(), cpuB.stop()
	r.setCPU(cpuUse{caddy: useA.caddy + useB.caddy, driver: useA.driver, host: useA.host}, -1)
	r.upstream = b.stub.waitQuiet(2*time.Second, time.Minute)
	cn := b.stub.Counts()
	r.perBook, r.inflight = cn.MaxPerBooking, cn.MaxInFlight
	b.finish(r, a)
	if last.IsZero() {
		b.fail(r, fmt.Sprintf("only %d of %d jobs synced in time", cn.Synced, capJobs))
		return
	}
	elapsed := last.Sub(first)
	r.rate = float64(capJobs) / elapsed.Seconds()
	ideal := float64(capSlots) / capDelay.Seconds()
	r.extra = fmt.Sprintf("Scenario %s: %d jobs queued through two instances (`max_in_flight %d`, stub %s per call) drained in %s "+
		"from the first call's start to the last sync's end: **%.2f jobs/s = %.2f× N/L (%.2f/s)**; at most %d calls in flight at the stub; "+
		"%d calls in all. Caddy CPU is both instances'.",
		key, capJobs, capSlots, capDelay, elapsed.Round(time.Millisecond), r.rate, r.rate/ideal, ideal, r.inflight, r.upstream)
	logf("  drained %d in %s: %.2f/s = %.2f× N/L; at most %d in flight", capJobs, elapsed.Round(time.Millisecond), r.rate, r.rate/ideal, r.inflight)
}

// sendEach sends n webhooks for distinct bookings (ids 1..n), the i-th to
// url(i), from 8 senders, and sums up their answers.
func sendEach(n int, url func(i int) string) *loadResult {
	res := &loadResult{codes: map[int]int{}, wrkCPU: -1}
	var mu sync.Mutex
	var wg sync.WaitGroup
	next := make(chan int)
	start := time.Now()
	for range 8 {
		wg.Go(func() {
			for i := range next {
				code, _, err := probe(url(i), uint64(i+1))
				mu.Lock()
				if err != nil {
					res.sockErrs++
					res.errSample = firstLine(err.Error())
				} else {
					res.requests++
					res.codes[code]++
					if code/100 == 2 {
						res.ok++
					} else {
						res.status++
					}
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	res.elapsed = time.Since(start)
	return res
}

// autoTargets are issue 18's targets for auto mode, sync mode, a waiting
// sender's memory and the capped drain.
func (b *bench) autoTargets() []target {
	var ts []target
	add := func(name string, rows []*row, measure func() (string, bool)) {
		ts = append(ts, measureTarget(name, rows, measure))
	}
	vs := func(a, base *row, want float64) (string, bool) {
		x := a.load.okPerSec() / base.load.okPerSec()
		return fmt.Sprintf("%.0f vs %.0f req/s = %.2f×", a.load.okPerSec(), base.load.okPerSec(), x), x >= want
	}
	s4a, s5 := b.find("4-auto"), b.find("5-sqlite")
	add("4-auto (auto, SQLite) ≥ 0.5× 5-sqlite (async)", []*row{s4a, s5}, func() (string, bool) { return vs(s4a, s5, 0.5) })
	s4p, s5p := b.find("4-auto-pg"), b.find("5-pg")
	add("4-auto-pg (auto, PostgreSQL, max_in_flight = workers) ≥ 0.5× 5-pg (async)", []*row{s4p, s5p},
		func() (string, bool) { return vs(s4p, s5p, 0.5) })
	for _, k := range []string{"4-auto", "4-auto-pg-3"} {
		r := b.find(k)
		add(k+" (auto, default settings, 32 in flight) p99 ≤ 100 ms", []*row{r}, func() (string, bool) {
			return ms(r.load.p99), r.load.p99 <= 100*time.Millisecond
		})
	}
	s4, s3l := b.find("4"), b.find("3-log")
	add("4 (sync) ≥ 1.0× 3-log", []*row{s4, s3l}, func() (string, bool) { return vs(s4, s3l, 1.0) })
	s7 := b.find("7-auto")
	add(fmt.Sprintf("7-auto ≤ 40 KB per waiting sender (%d waiting ≤ %.0f MiB above idle)", waitSenders, waitSenders*40/1024.0),
		[]*row{s7}, func() (string, bool) {
			above := s7.peakKB - min(s7.idleKB, s7.peakKB)
			per := float64(above) / waitSenders
			return fmt.Sprintf("%.1f KB (%.1f MiB above idle)", per, mib(above)), s7.peakKB > 0 && per <= 40
		})
	s9 := b.find("9-cap")
	ideal := float64(capSlots) / capDelay.Seconds()
	add(fmt.Sprintf("9-cap drain ≥ 0.95 × N/L (%.2f jobs/s), never more than N = %d in flight", 0.95*ideal, capSlots),
		[]*row{s9}, func() (string, bool) {
			return fmt.Sprintf("%.2f jobs/s = %.2f×; at most %d in flight", s9.rate, s9.rate/ideal, s9.inflight),
				s9.rate >= 0.95*ideal && s9.inflight <= capSlots
		})
	return ts
}

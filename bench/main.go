// Command bench compares receive_booking with stock Caddy and with the
// upstream alone, on one machine in one run, and writes BENCHMARKS.md.
//
//	make bench   (cd bench && go run . -out ../BENCHMARKS.md) [-duration 10s] [-concurrency 64] [-caddy path] [-pg dsn] [-out BENCHMARKS.md]
//
// See bench/README.md.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

var (
	flagDuration    = flag.Duration("duration", 10*time.Second, "measured duration of each throughput scenario (1-5)")
	flagConcurrency = flag.Int("concurrency", 64, "requests kept in flight in scenarios 1-5")
	flagCaddy       = flag.String("caddy", "", "Caddy binary built with this module (default: build one with xcaddy)")
	flagPG          = flag.String("pg", os.Getenv("RB_TEST_POSTGRES_DSN"), "PostgreSQL DSN for scenario 5-pg, preferably a dedicated database (default: $RB_TEST_POSTGRES_DSN; skipped when empty)")
	flagOut         = flag.String("out", "BENCHMARKS.md", "markdown report to write (\"\" or \"-\": stdout only)")
	flagKeep        = flag.Bool("keep", false, "keep the temporary directory (Caddyfiles, Caddy logs, SQLite files)")
	flagProfile     = flag.String("profile", "", "directory to save a CPU profile of Caddy (admin /debug/pprof) for each throughput scenario's measured window")
	flagOnly        = flag.String("only", "", "comma-separated scenarios to run (e.g. 4,5-sqlite,7); default: all")
)

const (
	bookingsCycled = 10_000
	burstWebhooks  = 1_000
	burstBookings  = 50
	burstBound     = 100
	memInflight    = 1_000
)

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

func main() {
	flag.Parse()
	if err := run(); err != nil {
		logf("%v", err)
		os.Exit(1)
	}
}

// row is one line of the report.
type row struct {
	key, name string
	load      *loadResult
	upstream  int64 // -1: not applicable
	bound     string
	idleKB    uint64
	peakKB    uint64
	inflight  int64 // most concurrent calls seen by the stub
	logLines  int
	note      string
}

type bench struct {
	tmp      string
	caddyBin string
	stub     *stub
	rows     []*row
}

func run() error {
	// The driver is a module of its own (its load generator is no
	// dependency of the plugin); the plugin is the directory above it.
	gomod, err := goEnv("GOMOD")
	if err != nil {
		return err
	}
	if gomod == "" || gomod == os.DevNull || filepath.Base(filepath.Dir(gomod)) != "bench" {
		return fmt.Errorf("run from the repository root with make bench, or from bench/ (no bench/go.mod found)")
	}
	repoRoot := filepath.Dir(filepath.Dir(gomod))

	tmp, err := os.MkdirTemp("", "rb-bench-")
	if err != nil {
		return err
	}
	if *flagKeep {
		logf("keeping %s", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	b := &bench{tmp: tmp, caddyBin: *flagCaddy}
	if b.caddyBin != "" {
		// Caddy runs in a scenario's own directory: the path must not be
		// relative.
		if b.caddyBin, err = filepath.Abs(b.caddyBin); err != nil {
			return err
		}
	}
	if b.caddyBin == "" {
		if b.caddyBin, err = buildCaddy(repoRoot, tmp); err != nil {
			return err
		}
	}
	if b.stub, err = startStub(); err != nil {
		return err
	}
	started := time.Now()

	b.throughput("1", "Ceiling: Caddy `respond`", 200, `header Content-Type application/json
respond `+"`"+`{"success":true,"booking_id":"1"}`+"`"+` 200`)
	b.throughput("2", "Direct: load straight at the stub (no Caddy)", 200, "")
	b.throughput("3", "Stock Caddy: `header` matcher + `reverse_proxy`", 200, b.stock())
	b.throughput("4", "receive_booking `mode sync`", 200, b.receiveBooking("mode sync"))
	b.throughput("4-auto", "receive_booking `mode auto`, SQLite (record, then wait for the sync)", 200,
		b.receiveBooking("mode auto", "queue sqlite "+filepath.Join(tmp, "4-auto", "queue.sqlite3")))
	b.throughput("5-sqlite", "receive_booking `mode async`, SQLite (durable 202s/s)", 202,
		b.receiveBooking("mode async", "queue sqlite "+filepath.Join(tmp, "5-sqlite", "queue.sqlite3")))
	if *flagPG == "" && want("5-pg") {
		b.rows = append(b.rows, &row{key: "5-pg", name: "receive_booking `mode async`, PostgreSQL (durable 202s/s)", upstream: -1,
			note: "skipped: no DSN (-pg or RB_TEST_POSTGRES_DSN)"})
	} else {
		b.throughput("5-pg", "receive_booking `mode async`, PostgreSQL (durable 202s/s)", 202,
			b.receiveBooking("mode async", "queue postgres `"+*flagPG+"`"))
	}
	b.coalescing("6-async", "Coalescing burst, `mode async` (SQLite, window 1s)",
		b.receiveBooking("mode async", "queue sqlite "+filepath.Join(tmp, "6-async", "queue.sqlite3")))
	b.coalescing("6-sync", "Coalescing burst, `mode sync` (in-process coalescer)",
		b.receiveBooking("mode sync", "timeout 30s"))
	b.latency("8-sync", "Latency, 1 in flight: receive_booking `mode sync`", b.receiveBooking("mode sync"))
	b.latency("8-auto", "Latency, 1 in flight: receive_booking `mode auto`, SQLite", b.receiveBooking("mode auto",
		"queue sqlite "+filepath.Join(tmp, "8-auto", "queue.sqlite3")))
	b.memory("7", "Memory: 1,000 in-flight syncs, stub takes 2 s (`mode sync`)", b.receiveBooking("mode sync", "timeout 10s"))
	b.memory("7-stock", "Reference for 7: stock Caddy (as in 3), 1,000 in flight, stub takes 2 s", b.stock())
	total := time.Since(started)

	report := b.report(total)
	fmt.Print(report)
	if *flagOut != "" && *flagOut != "-" {
		if err := os.WriteFile(*flagOut, []byte(report), 0o644); err != nil {
			return err
		}
		logf("wrote %s", *flagOut)
	}
	b.stub.srv.Close()
	return nil
}

// stock is what a user would build with stock Caddy: a header matcher in
// front of reverse_proxy, 401 otherwise.
func (b *bench) stock() string {
	return fmt.Sprintf(`@ok header X-Api-Key %s
route {
	reverse_proxy @ok %s
	respond 401
}`, apiKey, b.stub.addr)
}

// want reports whether -only selects the scenario.
func want(key string) bool {
	if *flagOnly == "" {
		return true
	}
	for k := range strings.SplitSeq(*flagOnly, ",") {
		if k = strings.TrimSpace(k); k == key || (k == "5" && strings.HasPrefix(key, "5-")) || (k == "6" && strings.HasPrefix(key, "6-")) {
			return true
		}
	}
	return false
}

func (b *bench) receiveBooking(extra ...string) string {
	lines := []string{
		"secret " + apiKey,
		"target " + b.stub.url(),
		"target_key " + targetKey,
	}
	lines = append(lines, extra...)
	return "receive_booking {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

func (b *bench) warmup() time.Duration {
	return min(max(*flagDuration/5, 200*time.Millisecond), time.Second)
}

// throughput runs a closed-loop scenario: concurrency requests in flight
// for the duration, after a warm-up. An empty site loads the stub itself.
// start adds a scenario's row, makes the stub answer after delay and, when
// site is set, starts Caddy with it (c is nil for a scenario without
// Caddy). ok is false when the scenario is not selected or Caddy did not
// start; the row then says why.
func (b *bench) start(key, name string, delay time.Duration, site string) (r *row, c *caddyProc, ok bool) {
	if !want(key) {
		return nil, nil, false
	}
	r = &row{key: key, name: name, upstream: -1}
	b.rows = append(b.rows, r)
	logf("scenario %s: %s", key, name)
	b.stub.reset(delay)
	if site == "" {
		return r, nil, true
	}
	c, err := startCaddy(b.caddyBin, filepath.Join(b.tmp, key), site)
	if err != nil {
		r.note = "Caddy did not start: " + firstLine(err.Error())
		logf("%v", err)
		return r, nil, false
	}
	return r, c, true
}

func (b *bench) throughput(key, name string, status int, site string) {
	b.closedRun(key, name, status, *flagConcurrency, site)
}

// latency is a closed loop with one request in flight: what one sender
// waits, without queueing behind others.
func (b *bench) latency(key, name, site string) {
	b.closedRun(key, name, 200, 1, site)
}

func (b *bench) closedRun(key, name string, status, concurrency int, site string) {
	r, c, ok := b.start(key, name, 0, site)
	if !ok {
		return
	}
	url := b.stub.url()
	if c != nil {
		defer c.stop()
		url = c.siteURL()
	}
	tr := webhookTargeter(url, cycle(bookingsCycled))
	got, body, err := probe(tr)
	if err != nil || got != status {
		r.note = fmt.Sprintf("probe failed: status %d, want %d: %v %s", got, status, err, oneLine(body))
		logf("%s", r.note)
		return
	}
	closedLoop(tr, concurrency, b.warmup())
	b.stub.reset(0)
	var lines0 int
	if c != nil {
		lines0 = c.logLines()
	}
	var profiled chan struct{}
	if c != nil && *flagProfile != "" {
		profiled = make(chan struct{})
		go func() {
			defer close(profiled)
			if err := c.cpuProfile(filepath.Join(*flagProfile, key+".cpu.pprof"), *flagDuration); err != nil {
				logf("  profile: %v", err)
			}
		}()
	}
	r.load = closedLoop(tr, concurrency, *flagDuration)
	if profiled != nil {
		<-profiled
	}
	if site != "" && !strings.HasPrefix(site, "header Content-Type") {
		r.upstream = b.stub.calls.Load()
	}
	if c != nil {
		r.logLines = c.logLines() - lines0
	}
	if r.load.nonOK() > 0 {
		r.note = "answers: " + r.load.codesString()
	}
	logf("  %.0f/s p50 %s p99 %s non-2xx %d", r.load.okPerSec(), ms(r.load.p50), ms(r.load.p99), r.load.nonOK())
}

// coalescing sends 1,000 webhooks over 50 bookings within one second
// against a stub taking 200 ms, and counts the upstream calls once they
// have stopped.
func (b *bench) coalescing(key, name, site string) {
	r, c, ok := b.start(key, name, 200*time.Millisecond, site)
	if !ok {
		return
	}
	defer c.stop()
	r.bound = fmt.Sprintf("bound %d, naive %d", burstBound, burstWebhooks)
	r.load = burst(webhookTargeter(c.siteURL(), cycle(burstBookings)), burstWebhooks, burstWebhooks)
	r.upstream = b.stub.waitQuiet(3*time.Second, 90*time.Second)
	r.inflight = b.stub.maxInflight.Load()
	if r.load.nonOK() > 0 {
		r.note = "answers: " + r.load.codesString()
	}
	logf("  sent %d in %s, upstream calls %d, non-2xx %d", r.load.requests, r.load.elapsed.Round(time.Millisecond), r.upstream, r.load.nonOK())
}

// memory holds 1,000 syncs in flight against a stub that takes 2 s and
// reads Caddy's peak RSS.
func (b *bench) memory(key, name, site string) {
	r, c, ok := b.start(key, name, 2*time.Second, site)
	if !ok {
		return
	}
	defer c.stop()
	var err error
	time.Sleep(time.Second)
	if r.idleKB, err = c.procStatus("VmRSS"); err != nil {
		r.note = err.Error()
		return
	}
	// 1,000 requests within 0.1 s: all are in flight for most of the 2 s.
	r.load = burst(webhookTargeter(c.siteURL(), distinct), memInflight, 10*memInflight)
	if r.peakKB, err = c.procStatus("VmHWM"); err != nil {
		r.note = err.Error()
	}
	r.upstream = b.stub.calls.Load()
	r.inflight = b.stub.maxInflight.Load()
	if r.load.nonOK() > 0 {
		r.note = "answers: " + r.load.codesString()
	}
	logf("  idle %.1f MiB, peak %.1f MiB, stub saw %d at once", mib(r.idleKB), mib(r.peakKB), r.inflight)
}

func (b *bench) find(key string) *row {
	for _, r := range b.rows {
		if r.key == key {
			return r
		}
	}
	return nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }
func mib(kb uint64) float64     { return float64(kb) / 1024 }

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

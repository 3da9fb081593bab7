// Command bench compares receive_booking with stock Caddy and with the
// upstream alone, on one machine in one run, and writes BENCHMARKS.md.
//
//	make bench   (go run ./bench -out BENCHMARKS.md $(BENCHFLAGS))
//
// The load comes from wrk (apt-get install wrk) for the closed-loop
// scenarios, and from goroutines of the driver for the bursts. See
// bench/README.md for the flags and the scenarios.
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
	flagDuration    = flag.Duration("duration", 10*time.Second, "measured duration of each wrk scenario (1-5, 8), after a 1s warm-up")
	flagConcurrency = flag.Int("concurrency", 32, "connections wrk keeps busy in scenarios 1-5, 9 and 10 (wrk -c)")
	flagCaddy       = flag.String("caddy", "", "Caddy binary built with this module, copied at start (default: build one with xcaddy)")
	flagWrk         = flag.String("wrk", "", "wrk binary (default: wrk from PATH)")
	flagPG          = flag.String("pg", os.Getenv("RB_TEST_POSTGRES_DSN"), "PostgreSQL DSN for scenarios 5-pg (preferably a dedicated database), 4-auto-pg, 4-auto-pg-3 and 9-cap (each in a database of its own, created and dropped) (default: $RB_TEST_POSTGRES_DSN; skipped when empty)")
	flagOut         = flag.String("out", "BENCHMARKS.md", "markdown report to write (\"\" or \"-\": stdout only)")
	flagKeep        = flag.Bool("keep", false, "keep the temporary directory (Caddyfiles, Caddy logs, SQLite files, profiles)")
	flagPprof       = flag.Bool("pprof", true, "take a CPU profile of Caddy over each measured window and show its top entries (-pprof=false: off)")
	flagProfile     = flag.String("profile", "", "directory to keep the CPU profiles in, with the Caddy binary they belong to (default: the run's temporary directory)")
	flagOnly        = flag.String("only", "", "comma-separated scenarios to run; a number selects its variants too (e.g. 4,5,7-async); default: all")
	flagDrain       = flag.Int("drain", 20_000, "jobs queued before the drain of scenario 9")
	flagBacklog     = flag.Int("backlog", 1_000_000, "backlog scenario 10 grows to (0: skip scenario 10)")
)

const (
	bookingsCycled = 10_000
	burstWebhooks  = 1_000
	burstBookings  = 50
	burstSpread    = time.Second
	burstDelay     = 200 * time.Millisecond
	autoCallBound  = 60
	memSenders     = 1_000
	memDelay       = 2 * time.Second
	warmup         = time.Second
	// 7-auto: senders waiting in auto mode at once, and when the driver
	// looks at what holds Caddy's memory (all of them are waiting then).
	waitSenders  = 5_000
	waitSnapshot = 5 * time.Second
	// 9-cap: max_in_flight, the stub's time per call, the jobs queued.
	capSlots = 3
	capDelay = 2 * time.Second
	capJobs  = 60
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
	// heapProfile is a heap profile taken during a memory burst, with
	// the goroutine count then.
	heapProfile string
	goroutines  int
	mem         memStats
	site        string // the Caddyfile site block ("" without Caddy)
	load        *loadResult
	rate        float64 // jobs/s (scenario 9); else load.okPerSec()
	upstream    int64   // -1: not applicable
	perBook     int64   // most calls in flight at once for one booking; -1: not measured
	inflight    int64   // most calls in flight at once at the stub
	idleKB      uint64
	peakKB      uint64
	caddyCPU    float64 // % of one core over the measured window; -1: n/a
	driverCPU   float64 // the driver's own (stub, burst senders); -1: n/a
	otherCPU    float64 // the rest of the machine; -1: n/a
	logLines    int
	leaked      bool // the API key appears in Caddy's log
	profile     string
	note        string // why the scenario has no figures, or what went wrong
	failed      bool   // the scenario's figures cannot be trusted (errors, non-2xx)
	extra       string // a sentence for the notes below the table

	tenths   []tenth // scenario 10
	statsMax time.Duration
}

type bench struct {
	tmp      string
	caddyBin string
	profDir  string
	wrk      *wrkTool
	stub     *stub
	rows     []*row
	pgDBs    []pgDB // made by freshPG, dropped at the end
}

func run() error {
	tmp, err := os.MkdirTemp("", "rb-bench-")
	if err != nil {
		return err
	}
	if *flagKeep {
		logf("keeping %s", tmp)
	} else {
		defer os.RemoveAll(tmp)
	}
	b := &bench{tmp: tmp, profDir: *flagProfile}
	if b.wrk, err = findWrk(tmp); err != nil {
		return err
	}
	if b.profDir == "" {
		b.profDir = filepath.Join(tmp, "profiles")
	}
	binDir := tmp
	if *flagPprof && *flagProfile != "" {
		// The profiles are kept: keep the binary they name next to them.
		binDir = *flagProfile
		if err := os.MkdirAll(binDir, 0o755); err != nil {
			return err
		}
	}
	if *flagCaddy != "" {
		b.caddyBin, err = copyCaddy(*flagCaddy, binDir)
	} else {
		b.caddyBin, err = buildCaddy(binDir)
	}
	if err != nil {
		return err
	}
	if b.stub, err = startStub(); err != nil {
		return err
	}
	defer b.stub.Close()
	defer b.dropPGs()
	started := time.Now()
	b.scenarios()
	total := time.Since(started)

	report := b.report(total)
	fmt.Print(report)
	if *flagOut != "" && *flagOut != "-" {
		if err := os.WriteFile(*flagOut, []byte(report), 0o644); err != nil {
			return err
		}
		logf("wrote %s", *flagOut)
	}
	return nil
}

// scenarios runs every selected scenario, one Caddy at a time.
func (b *bench) scenarios() {
	sqlite := func(key string) string { return "queue sqlite " + filepath.Join(b.tmp, key, "queue.sqlite3") }
	b.throughput("1", "Ceiling: `respond` with a JSON body", 200, `header Content-Type application/json
respond `+"`"+`{"success":true,"booking_id":"1"}`+"`"+` 200`)
	b.throughput("2", "Direct: wrk straight at the stub (no Caddy)", 200, "")
	b.throughput("3", "Stock: `header` matcher + `reverse_proxy`, `respond 401`, no log", 200, b.stock(false))
	b.throughput("3-log", "Stock as 3, with an access log (X-Api-Key filtered out)", 200, b.stock(true))
	b.throughput("4", "receive_booking `mode sync`", 200, b.receiveBooking("mode sync"))
	b.throughput("4-auto", "receive_booking `mode auto`, SQLite (record, wait for the sync)", 200,
		b.receiveBooking("mode auto", sqlite("4-auto")))
	// Each sender in auto mode holds a worker for its sync: with 32 in
	// flight, 10 workers (the default) are the limit.
	b.throughput("4-auto-w32", "receive_booking `mode auto`, SQLite, `workers 32`", 200,
		b.receiveBooking("mode auto", "workers 32", sqlite("4-auto-w32")))
	// Auto mode on PostgreSQL, each scenario on a database of its own:
	// with max_in_flight at the workers (10), so that the cap is not the
	// limit, and with the default cap of 3 in flight.
	b.pgThroughput("4-auto-pg", "receive_booking `mode auto`, PostgreSQL, `max_in_flight 10` (= workers)", 200,
		"mode auto", "max_in_flight 10")
	b.pgThroughput("4-auto-pg-3", "receive_booking `mode auto`, PostgreSQL, default `max_in_flight` (3)", 200, "mode auto")
	b.throughput("5-sqlite", "receive_booking `mode async`, SQLite (durable 202s)", 202,
		b.receiveBooking("mode async", sqlite("5-sqlite")))
	const pgName = "receive_booking `mode async`, PostgreSQL (durable 202s)"
	if *flagPG == "" {
		b.skip("5-pg", pgName, "skipped: no DSN (-pg or RB_TEST_POSTGRES_DSN)")
	} else {
		b.throughput("5-pg", pgName, 202, b.receiveBooking("mode async", "queue postgres `"+*flagPG+"`"))
	}
	b.coalescing("6-async", "Burst, `mode async`, SQLite", b.receiveBooking("mode async", sqlite("6-async")))
	// Auto mode starts a booking's first sync at once (coalesce_window 0):
	// a burst then costs a first and a follow-up sync per booking. An
	// installation that expects bursts sets a window, as async has.
	b.coalescing("6-auto", "Burst, `mode auto`, SQLite, `coalesce_window 1s` (senders wait for the sync)",
		b.receiveBooking("mode auto", "coalesce_window 1s", sqlite("6-auto")))
	b.coalescing("6-auto-0", "Burst, `mode auto`, SQLite, default `coalesce_window` (0)", b.receiveBooking("mode auto", sqlite("6-auto-0")))
	b.coalescing("6-sync", "Burst, `mode sync` (in-process coalescer)", b.receiveBooking("mode sync"))
	b.memory("7-async", "Memory: 1,000 senders at once, `mode async`, SQLite", 202, 0,
		b.receiveBooking("mode async", sqlite("7-async")))
	b.memory("7", "Memory: 1,000 senders at once, `mode sync`, stub takes 2 s", 200, memDelay, b.receiveBooking("mode sync"))
	b.memory("7-stock", "Memory: as 7 through stock Caddy (as 3)", 200, memDelay, b.stock(false))
	b.waiting("7-auto", fmt.Sprintf("Memory: %d senders at once waiting in `mode auto`, SQLite, stub holds every call", waitSenders),
		b.receiveBooking("mode auto", sqlite("7-auto")))
	b.latency("8-sync", "Latency, 1 in flight: `mode sync`", b.receiveBooking("mode sync"))
	b.latency("8-auto", "Latency, 1 in flight: `mode auto`, SQLite", b.receiveBooking("mode auto", sqlite("8-auto")))
	b.drain("9", fmt.Sprintf("Drain: %d queued jobs, `mode async`, SQLite", *flagDrain), b.receiveBooking("mode async", sqlite("9")))
	b.capDrain("9-cap", fmt.Sprintf("Cap: %d queued jobs, two instances on one PostgreSQL, `max_in_flight %d`, stub takes %s",
		capJobs, capSlots, capDelay))
	if *flagBacklog <= 0 {
		b.skip("10", "Backlog growth", "skipped: -backlog 0")
	} else {
		b.backlog("10", fmt.Sprintf("Backlog growth to %d jobs, `mode async`, SQLite, nothing drains", *flagBacklog),
			b.receiveBooking("mode async", sqlite("10")))
	}
}

// stock is what a user would build with stock Caddy: a header matcher in
// front of reverse_proxy, 401 otherwise; with log, an access log like the
// line receive_booking writes, without the API key.
func (b *bench) stock(log bool) string {
	s := fmt.Sprintf(`@ok header X-Api-Key %s
route {
	reverse_proxy @ok %s
	respond 401
}`, apiKey, b.stub.addr())
	if log {
		s = `log {
	output stderr
	format filter {
		wrap json
		fields {
			request>headers>X-Api-Key delete
		}
	}
}
` + s
	}
	return s
}

func (b *bench) receiveBooking(extra ...string) string {
	lines := []string{
		"secret " + apiKey,
		"target " + b.stub.Target(),
		"target_key " + targetKey,
	}
	lines = append(lines, extra...)
	return "receive_booking {\n\t" + strings.Join(lines, "\n\t") + "\n}"
}

// want reports whether -only selects the scenario: its key, or its
// number alone for every variant ("5" selects 5-sqlite and 5-pg).
func want(key string) bool {
	if *flagOnly == "" {
		return true
	}
	for k := range strings.SplitSeq(*flagOnly, ",") {
		if k = strings.TrimSpace(k); k == key || strings.HasPrefix(key, k+"-") {
			return true
		}
	}
	return false
}

func (b *bench) skip(key, name, note string) {
	if want(key) {
		b.rows = append(b.rows, &row{key: key, name: name, upstream: -1, perBook: -1, caddyCPU: -1, driverCPU: -1, otherCPU: -1, note: note})
	}
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

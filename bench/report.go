package main

// The report: the scenario table, the targets, and where Caddy's CPU
// went, written as markdown (BENCHMARKS.md).

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// printer writes markdown.
type printer struct{ strings.Builder }

func (w *printer) p(format string, args ...any) { fmt.Fprintf(w, format, args...) }

func (b *bench) report(total time.Duration) string {
	w := new(printer)
	b.header(w, total)
	b.mainTable(w)
	b.notes(w)
	b.backlogTable(w)
	b.targets(w)
	b.profiles(w)
	b.heapProfiles(w)
	b.configs(w)
	return w.String()
}

func (b *bench) header(w *printer, total time.Duration) {
	w.p("# Benchmarks\n\n")
	if *flagDuration < 10*time.Second {
		w.p("> **SMOKE RUN** (`-duration %s`, on a machine busy with other work): these figures only show\n"+
			"> that the driver works. They are not the benchmark; rerun with the defaults on a quiet machine.\n\n", *flagDuration)
	}
	w.p("- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	w.p("- Machine: %s cores (`nproc`), %s; kernel %s; %s\n", nproc(), cpuModel(), cmdOutput("uname", "-r"), cmdOutput("go", "version"))
	w.p("- Command: `go run ./bench%s` (as `make bench` runs it); whole run %s, Caddy build excluded\n", argsString(), total.Round(time.Second))
	w.p("- Caddy: `%s`, copied at the start of the run\n", firstLine(cmdOutput(b.caddyBin, "version")))
	w.p("- Load generator: `%s`, one thread:\n"+
		"  `wrk -t1 -c%d -d%s --timeout 30s --latency -s webhook.lua <url> -- cycle %d 1 0`, after the same for 1 s\n"+
		"  (warm-up, not measured). The generated Lua script builds each POST (`X-Api-Key`,\n"+
		"  `Content-Type: application/json`, `{\"booking_id\":\"<n>\",\"event_type\":\"booking.updated\",\"organization_id\":\"org-1\"}`),\n"+
		"  booking ids cycling over %d (distinct ids in 9 and 10), and prints one result line from `done()`;\n"+
		"  it has no `response()` callback. wrk counts answers ≥ 400 as errors: \"req/s (2xx)\" is its answers\n"+
		"  minus those, per second of its run; p50/p99 are wrk's.\n",
		b.wrk.version, *flagConcurrency, durationFlag(*flagDuration), bookingsCycled, bookingsCycled)
	w.p("- Bursts (6, 7) come from goroutines of the driver, one connection each, timed by the driver.\n")
	w.p("- Every scenario runs its own fresh Caddy (`grace_period 1s`, own admin port and data directory; its\n"+
		"  stderr, where Caddy and receive_booking log, goes to a file), after one probe webhook that must get\n"+
		"  the scenario's status. The stub import-bookings runs in the driver's process on loopback; wrk, the\n"+
		"  driver and Caddy **share the %s cores**, so compare ratios rather than absolute figures.\n", nproc())
	w.p("- Idle RSS is Caddy's VmRSS after the probe, once its peak was reset (`clear_refs` 5); \"peak − idle\" is\n"+
		"  VmHWM after the load minus that. CPU, over the measured window in %% of one core (%s cores = %s00%%):\n"+
		"  Caddy's utime+stime from `/proc/<pid>/stat`; wrk's rusage; the driver's own (the stub, and the\n"+
		"  senders of a burst); \"other\" is the machine's busy time (`/proc/stat`) beyond those three: other\n"+
		"  processes, and kernel work (loopback networking) charged to none. Upstream calls are the stub's\n"+
		"  during the measured window (for 6, 7, 9: until it has been quiet for 2-3 s).\n", nproc(), nproc())
	if *flagPG != "" {
		w.p("- PostgreSQL for 5-pg (read with `psql -c 'SHOW …'`): %s. Durable acknowledgements need\n"+
			"  fsync and synchronous_commit on (`RB_PG_DURABLE=1 scripts/pg.sh start` keeps them).\n", pgSettings(*flagPG))
	}
	if *flagPprof {
		w.p("- Caddy's CPU was profiled (admin `/debug/pprof/profile`) over each measured window; that costs a\n" +
			"  little CPU. `-pprof=false` turns it off.\n")
	}
	w.p("\n")
}

func durationFlag(d time.Duration) string {
	return fmt.Sprintf("%ds", max(int((d+time.Second-1)/time.Second), 1))
}

func (b *bench) ceiling() float64 {
	if r := b.find("1"); r != nil && r.load != nil && !r.failed {
		return r.load.okPerSec()
	}
	return 0
}

func isBurst(key string) bool { return strings.HasPrefix(key, "6") || strings.HasPrefix(key, "7") }

func (b *bench) mainTable(w *printer) {
	w.p("| # | Scenario | req/s (2xx) | × respond | p50 | p99 | non-2xx | idle RSS | peak − idle | Caddy CPU | wrk CPU | driver CPU | other CPU | upstream calls |\n")
	w.p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
	ceil := b.ceiling()
	for _, r := range b.rows {
		c := map[string]string{}
		for _, k := range []string{"rps", "ratio", "p50", "p99", "errs", "idle", "peak", "cpu", "wrk", "drv", "other", "up"} {
			c[k] = "—"
		}
		if l := r.load; l != nil {
			c["errs"] = fmt.Sprint(l.nonOK())
			switch {
			case r.key == "9":
				c["rps"] = fmt.Sprintf("**%.0f jobs/s**", r.rate)
			case r.key == "9-cap":
				c["rps"] = fmt.Sprintf("**%.2f jobs/s**", r.rate)
			case r.key == "10":
				c["rps"] = fmt.Sprintf("%.0f", l.okPerSec())
				c["p99"] = ms(l.p99) + " (worst tenth)"
			case isBurst(r.key):
				c["p50"], c["p99"] = ms(l.p50), ms(l.p99)
			default:
				c["rps"], c["p50"], c["p99"] = fmt.Sprintf("%.0f", l.okPerSec()), ms(l.p50), ms(l.p99)
			}
			if !isBurst(r.key) && !strings.HasPrefix(r.key, "9") && ceil > 0 {
				c["ratio"] = fmt.Sprintf("%.2f×", l.okPerSec()/ceil)
			}
			if l.wrkCPU >= 0 && !strings.HasPrefix(r.key, "9") {
				c["wrk"] = fmt.Sprintf("%.0f%%", l.wrkCPU)
			}
		}
		if r.idleKB > 0 {
			c["idle"] = fmt.Sprintf("%.1f MiB", mib(r.idleKB))
		}
		if r.peakKB > 0 {
			c["peak"] = fmt.Sprintf("%.1f MiB", mib(r.peakKB-min(r.idleKB, r.peakKB)))
		}
		for k, v := range map[string]float64{"cpu": r.caddyCPU, "drv": r.driverCPU, "other": r.otherCPU} {
			if v >= 0 {
				c[k] = fmt.Sprintf("%.0f%%", v)
			}
		}
		if r.upstream >= 0 {
			c["up"] = fmt.Sprint(r.upstream)
			if r.perBook >= 0 {
				c["up"] += fmt.Sprintf(" (≤ %d per booking at once)", r.perBook)
			}
		}
		name := r.name
		if r.note != "" {
			name += " — **" + strings.ReplaceAll(r.note, "|", "\\|") + "**"
		}
		w.p("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.key, name,
			c["rps"], c["ratio"], c["p50"], c["p99"], c["errs"], c["idle"], c["peak"], c["cpu"], c["wrk"], c["drv"], c["other"], c["up"])
	}
	w.p("\n")
}

func (b *bench) notes(w *printer) {
	if b.find("6-async") != nil || b.find("6-auto") != nil || b.find("6-auto-0") != nil || b.find("6-sync") != nil ||
		b.find("7-async") != nil || b.find("7") != nil || b.find("7-stock") != nil {
		b.burstNote(w)
	}
	b.moreNotes(w)
}

func (b *bench) burstNote(w *printer) {
	w.p("Scenario 6 sends %d webhooks over %d bookings, evenly within %s, against a stub taking %s, and counts\n"+
		"the upstream calls until none has come for 3 s, and the most calls in flight at once for one booking\n"+
		"(the stub counts them per `booking_id`). Scenario 7 sends %d webhooks for distinct bookings at once, each\n"+
		"on its own connection (stub: %s in 7 and 7-stock, no delay in 7-async). p50/p99 are the senders'.\n",
		burstWebhooks, burstBookings, burstSpread, burstDelay, memSenders, memDelay)
}

func (b *bench) moreNotes(w *printer) {
	for _, k := range []string{"6-async", "6-auto", "6-auto-0", "6-sync", "7-async", "7", "7-stock", "7-auto", "9", "9-cap"} {
		if r := b.find(k); r != nil && r.inflight > 0 {
			w.p("Scenario %s: at most %d calls in flight at the stub at once.\n", k, r.inflight)
		}
	}
	for _, k := range []string{"3-log", "4"} {
		if r := b.find(k); r != nil && r.load != nil && r.load.requests > 0 {
			w.p("Scenario %s: Caddy wrote %d log lines during the measured window (%.2f per request).\n",
				k, r.logLines, float64(r.logLines)/float64(r.load.requests))
		}
	}
	for _, r := range b.rows {
		if r.leaked {
			w.p("**Scenario %s: the API key appears in Caddy's log.**\n", r.key)
		}
	}
	if s, a := b.find("8-sync"), b.find("8-auto"); s != nil && a != nil && s.load != nil && a.load != nil {
		w.p("Scenario 8: at one request in flight, `mode auto` (record the webhook, then wait for the queued sync)\n"+
			"adds **%s at p50 and %s at p99** over `mode sync` (%s / %s vs %s / %s).\n",
			ms(a.load.p50-s.load.p50), ms(a.load.p99-s.load.p99), ms(a.load.p50), ms(a.load.p99), ms(s.load.p50), ms(s.load.p99))
	}
	for _, r := range b.rows {
		if r.extra != "" {
			w.p("%s\n", r.extra)
		}
	}
	w.p("\n")
}

func (b *bench) backlogTable(w *printer) {
	r := b.find("10")
	if r == nil || len(r.tenths) == 0 {
		return
	}
	w.p("## Scenario 10: backlog growth\n\n")
	w.p("wrk sends webhooks for distinct bookings (`mode async`, SQLite) while the stub holds every call, so\n"+
		"nothing drains, a tenth of %d at a time (the first tenth starts with a 1 s warm-up whose\n"+
		"jobs count in the backlog but whose acks are not timed); after each tenth the driver times one\n"+
		"`GET /receive_booking/stats` on Caddy's admin endpoint. \"Pending\" is what that call counts.\n\n", *flagBacklog)
	w.p("| Tenth | pending after | acks/s | p50 | p99 | non-2xx | Caddy CPU | wrk CPU | stats call |\n")
	w.p("|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, t := range r.tenths {
		stats := ms(t.stats)
		if t.statsErr != "" {
			stats += " (" + strings.ReplaceAll(t.statsErr, "|", "\\|") + ")"
		}
		w.p("| %d | %d | %.0f | %s | %s | %d | %.0f%% | %.0f%% | %s |\n", i+1, t.backlog, t.load.okPerSec(),
			ms(t.load.p50), ms(t.load.p99), t.load.nonOK(), t.caddyCPU, t.load.wrkCPU, stats)
	}
	w.p("\n")
}

// target is one line of the Targets table.
type target struct {
	name, measured string
	ok, measuredOK bool
}

func (b *bench) targets(w *printer) {
	w.p("## Targets\n\n| Target | Measured | Result |\n|---|---|---|\n")
	for _, t := range b.targetList() {
		res := "n/a"
		switch {
		case !t.measuredOK:
			if t.measured == "" {
				t.measured = "not measured"
			}
		case t.ok:
			res = "PASS"
		default:
			res = "MISS"
		}
		w.p("| %s | %s | %s |\n", t.name, strings.ReplaceAll(t.measured, "|", "\\|"), res)
	}
	w.p("\nA scenario with non-2xx answers or errors fails its target whatever its figures.\n\n")
}

// measureTarget measures a target over rows: not measured when one is
// missing or was skipped, a MISS when one failed (errors, non-2xx
// answers).
func measureTarget(name string, rows []*row, measure func() (string, bool)) target {
	t := target{name: name}
	for _, r := range rows {
		switch {
		case r == nil:
			return t
		case r.failed:
			t.measured, t.measuredOK = fmt.Sprintf("%s failed: %s", r.key, r.note), true
			return t
		case r.load == nil:
			t.measured = r.key + " " + r.note
			return t
		}
	}
	t.measured, t.ok = measure()
	t.measuredOK = true
	return t
}

func (b *bench) targetList() []target {
	var ts []target
	ceil := b.ceiling()
	add := func(name string, rows []*row, measure func() (string, bool)) {
		ts = append(ts, measureTarget(name, rows, measure))
	}
	vsCeil := func(r *row, want float64) (string, bool) {
		x := r.load.okPerSec() / ceil
		return fmt.Sprintf("%.0f vs %.0f req/s = %.2f×", r.load.okPerSec(), ceil, x), x >= want
	}
	s1 := b.find("1")
	s5 := b.find("5-sqlite")
	add("5-sqlite (async, SQLite) ≥ 0.18× respond, p99 ≤ 50 ms", []*row{s5, s1}, func() (string, bool) {
		m, ok := vsCeil(s5, 0.18)
		return m + ", p99 " + ms(s5.load.p99), ok && s5.load.p99 <= 50*time.Millisecond
	})
	s5pg := b.find("5-pg")
	add("5-pg (async, PostgreSQL) ≥ 0.25× respond", []*row{s5pg, s1}, func() (string, bool) { return vsCeil(s5pg, 0.25) })
	s4a := b.find("4-auto")
	add("4-auto (auto, SQLite) ≥ 0.15× respond", []*row{s4a, s1}, func() (string, bool) { return vsCeil(s4a, 0.15) })
	s4a32 := b.find("4-auto-w32")
	add("4-auto-w32 (auto, SQLite, workers 32) ≥ 0.15× respond", []*row{s4a32, s1}, func() (string, bool) { return vsCeil(s4a32, 0.15) })
	s8s, s8a := b.find("8-sync"), b.find("8-auto")
	add("8: auto p50 − sync p50 ≤ 2 ms (1 in flight)", []*row{s8s, s8a}, func() (string, bool) {
		d := s8a.load.p50 - s8s.load.p50
		return fmt.Sprintf("%s − %s = %s", ms(s8a.load.p50), ms(s8s.load.p50), ms(d)), d <= 2*time.Millisecond
	})
	above := func(r *row) float64 { return mib(r.peakKB - min(r.idleKB, r.peakKB)) }
	s7a := b.find("7-async")
	add("7-async peak RSS ≤ 32 MiB above idle", []*row{s7a}, func() (string, bool) {
		return fmt.Sprintf("%.1f MiB", above(s7a)), s7a.peakKB > 0 && above(s7a) <= 32
	})
	s7, s7s := b.find("7"), b.find("7-stock")
	add("7 (sync) peak above idle ≤ 7-stock's", []*row{s7, s7s}, func() (string, bool) {
		return fmt.Sprintf("%.1f vs %.1f MiB", above(s7), above(s7s)), s7.peakKB > 0 && s7s.peakKB > 0 && above(s7) <= above(s7s)
	})
	s6a := b.find("6-auto")
	add(fmt.Sprintf("6-auto ≤ %d upstream calls, ≤ 1 per booking in flight", autoCallBound), []*row{s6a}, func() (string, bool) {
		return fmt.Sprintf("%d calls, ≤ %d per booking", s6a.upstream, s6a.perBook), s6a.upstream <= autoCallBound && s6a.perBook <= 1
	})
	var once []*row
	for _, k := range []string{"6-async", "6-auto-0", "6-sync", "7-async", "7", "7-auto", "9", "9-cap"} {
		if r := b.find(k); r != nil && (r.perBook >= 0 || r.failed) {
			once = append(once, r)
		}
	}
	if len(once) > 0 {
		add("never 2 calls for one booking at once (6-async, 6-auto-0, 6-sync, 7-async, 7, 7-auto, 9, 9-cap)", once, func() (string, bool) {
			var parts []string
			ok := true
			for _, r := range once {
				parts = append(parts, fmt.Sprintf("%s: %d", r.key, r.perBook))
				ok = ok && r.perBook <= 1
			}
			return strings.Join(parts, ", "), ok
		})
	}
	s9 := b.find("9")
	add("9 drain ≥ 1,000 jobs/s", []*row{s9}, func() (string, bool) {
		return fmt.Sprintf("%.0f/s", s9.rate), s9.rate >= 1000
	})
	ts = append(ts, b.autoTargets()...)
	s10 := b.find("10")
	add("10 backlog: last tenth's ack rate ≥ 0.8× the first's", []*row{s10}, func() (string, bool) {
		if len(s10.tenths) < 10 {
			return "incomplete", false
		}
		first, last := s10.tenths[0].load.okPerSec(), s10.tenths[9].load.okPerSec()
		return fmt.Sprintf("%.0f vs %.0f acks/s = %.2f×", last, first, last/first), last >= 0.8*first
	})
	add("10 backlog: stats call < 100 ms at every tenth", []*row{s10}, func() (string, bool) {
		return "slowest " + ms(s10.statsMax), s10.statsMax < 100*time.Millisecond
	})
	return ts
}

// profiles shows the top of each CPU profile: where Caddy's time went.
func (b *bench) profiles(w *printer) {
	var shown bool
	for _, r := range b.rows {
		if r.profile == "" {
			continue
		}
		if !shown {
			w.p("## Where Caddy's CPU goes\n\n`go tool pprof -top -nodecount=8 <caddy> <scenario>.cpu.pprof` over each measured window\n"+
				"(9: the first %s of the drain; 10: the first %s of the last tenth). flat: in the function\n"+
				"itself; cum: in it and what it calls.\n\n", durationFlag(*flagDuration), durationFlag(*flagDuration))
			shown = true
		}
		w.p("**%s** — %s\n\n", r.key, r.name)
		if !b.topTable(w, r.profile) {
			continue
		}
		if parts := pprofAreas(b.caddyBin, r.profile); parts != "" {
			w.p("\nTime under (cum %%, of all samples): %s\n", parts)
		}
		w.p("\n")
	}
}

// heapProfiles shows what was live during each memory burst.
func (b *bench) heapProfiles(w *printer) {
	var shown bool
	for _, r := range b.rows {
		if r.heapProfile == "" {
			continue
		}
		if !shown {
			w.p("## What holds the memory during a burst\n\n`go tool pprof -top -nodecount=8 -sample_index=inuse_space <caddy> <scenario>.heap.pprof`,\n" +
				"taken 150 ms into each memory burst (live heap only: goroutine stacks and the runtime's\n" +
				"free pages are part of RSS but not of this profile).\n\n")
			shown = true
		}
		w.p("**%s** — %s; at that moment: %d goroutines, stacks %.1f MiB, heap in use %.1f MiB, from the OS %.1f MiB (Go runtime)\n\n",
			r.key, r.name, r.goroutines, float64(r.mem.StackInuse)/(1<<20), float64(r.mem.HeapInuse)/(1<<20), float64(r.mem.Sys)/(1<<20))
		if b.topTable(w, r.heapProfile, "-sample_index=inuse_space") {
			w.p("\n")
		}
	}
}

// topTable writes a profile's top entries as a table, or why it cannot;
// it reports whether it wrote the table.
func (b *bench) topTable(w *printer, profile string, flags ...string) bool {
	summary, rows, err := pprofTop(b.caddyBin, profile, flags...)
	if err != nil {
		w.p("(%s)\n\n", oneLine(err.Error()))
		return false
	}
	w.p("%s\n\n| flat %% | cum %% | function |\n|---:|---:|---|\n", summary)
	for _, pr := range rows {
		w.p("| %s | %s | `%s` |\n", pr[0], pr[1], pr[2])
	}
	return true
}

// pprofTop runs go tool pprof -top and returns its Duration line and, for
// each of the top entries, flat %, cum % and the function.
func pprofTop(bin, profile string, flags ...string) (string, [][3]string, error) {
	args := append([]string{"tool", "pprof", "-top", "-nodecount=8"}, flags...)
	out, err := exec.Command("go", append(args, bin, profile)...).CombinedOutput()
	if err != nil {
		return "", nil, fmt.Errorf("go tool pprof: %v: %s", err, out)
	}
	var summary string
	var rows [][3]string
	inTable := false
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case strings.HasPrefix(line, "Duration:"), summary == "" && strings.HasPrefix(line, "Showing nodes accounting for"):
			summary = strings.TrimSpace(line)
		case len(f) > 0 && f[0] == "flat":
			inTable = true
		case inTable && len(f) >= 6:
			rows = append(rows, [3]string{f[1], f[4], strings.Join(f[5:], " ")})
		}
	}
	return summary, rows, nil
}

// profileAreas are the parts of Caddy a reader looks for in a profile: a
// function (exact name) or a package (prefix, the largest cum of its
// functions, i.e. its outermost frame).
var profileAreas = []struct{ label, name string }{
	{"HTTP server (`net/http.(*conn).serve`)", "net/http.(*conn).serve"},
	{"receive_booking", "github.com/bookingwebhook/caddy-receive-booking"},
	{"reverse_proxy", "github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"},
	{"River", "github.com/riverqueue/river"},
	{"SQLite (modernc)", "modernc.org/sqlite"},
	{"pgx", "github.com/jackc/pgx"},
	{"zap (logging)", "go.uber.org/zap"},
	{"GC (`runtime.gcBgMarkWorker`)", "runtime.gcBgMarkWorker"},
	{"syscalls (`Syscall6`)", "internal/runtime/syscall/linux.Syscall6"},
}

// pprofAreas sums up a profile by profileAreas, from go tool pprof -top
// -cum; "" if it fails.
func pprofAreas(bin, profile string) string {
	out, err := exec.Command("go", "tool", "pprof", "-top", "-cum", "-nodecount=1000", bin, profile).Output()
	if err != nil {
		return ""
	}
	best := map[string]float64{}
	inTable := false
	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && f[0] == "flat" {
			inTable = true
			continue
		}
		if !inTable || len(f) < 6 {
			continue
		}
		var cum float64
		if _, err := fmt.Sscanf(f[4], "%f%%", &cum); err != nil {
			continue
		}
		fn := f[5]
		for _, a := range profileAreas {
			if fn == a.name || strings.HasPrefix(fn, a.name+".") || strings.HasPrefix(fn, a.name+"/") {
				best[a.label] = max(best[a.label], cum)
			}
		}
	}
	var parts []string
	for _, a := range profileAreas {
		if v, ok := best[a.label]; ok && v >= 1 {
			parts = append(parts, fmt.Sprintf("%s %.0f%%", a.label, v))
		}
	}
	return strings.Join(parts, " · ")
}

// configs lists each scenario's site block, so that a reader sees the
// config measured (the plugin's defaults apply to everything not set).
func (b *bench) configs(w *printer) {
	w.p("## Configs\n\nEvery Caddyfile has the global options `admin 127.0.0.1:<port>`, `http_port`, `grace_period 1s`,\n" +
		"`persist_config off`, `auto_https off`, and one site `http://127.0.0.1:<port>` holding the block below.\n" +
		"receive_booking's defaults apply to what is not set: `coalesce_window` 1s in `mode async`, 0 otherwise;\n" +
		"`workers` 10; `timeout` 12s; no `max_in_flight` on SQLite, 3 on PostgreSQL. `<stub>` is the driver's stub\n" +
		"(`http://127.0.0.1:<port>/functions/v1/import-bookings`), `<tmp>/<scenario>` the scenario's directory.\n\n")
	seen := map[string]string{}
	for _, r := range b.rows {
		if r.site == "" {
			continue
		}
		site := b.scrubSite(r)
		if k, ok := seen[site]; ok {
			w.p("- **%s**: as %s\n", r.key, k)
			continue
		}
		seen[site] = r.key
		w.p("- **%s**:\n\n```caddyfile\n%s\n```\n\n", r.key, site)
	}
}

// scrubSite is a row's site block with the run's own addresses and paths
// (and the DSN) replaced by names.
func (b *bench) scrubSite(r *row) string {
	s := strings.ReplaceAll(r.site, filepath.Join(b.tmp, r.key), "<tmp>/<scenario>")
	for _, d := range b.pgDBs {
		s = strings.ReplaceAll(s, d.dsn, "<dsn of a database of its own>")
	}
	if *flagPG != "" {
		s = strings.ReplaceAll(s, *flagPG, "<dsn>")
	}
	s = strings.ReplaceAll(s, b.stub.Target(), "<stub>")
	s = strings.ReplaceAll(s, b.stub.addr(), "<stub address>")
	return strings.ReplaceAll(s, b.tmp, "<tmp>")
}

func argsString() string {
	var parts []string
	for _, a := range os.Args[1:] {
		if strings.HasPrefix(a, "-pg=") || strings.HasPrefix(a, "--pg=") {
			a = a[:strings.Index(a, "=")+1] + "<dsn>"
		}
		parts = append(parts, a)
	}
	// A DSN given as a separate argument is hidden too.
	for i := range parts {
		if (parts[i] == "-pg" || parts[i] == "--pg") && i+1 < len(parts) {
			parts[i+1] = "<dsn>"
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return " " + strings.Join(parts, " ")
}

func nproc() string {
	if s := cmdOutput("nproc"); s != "" && !strings.HasPrefix(s, "(") {
		return s
	}
	return fmt.Sprint(runtime.NumCPU())
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func cmdOutput(name string, args ...string) string {
	out, err := exec.Command(name, args...).Output()
	if err != nil {
		return "(" + err.Error() + ")"
	}
	return strings.TrimSpace(string(out))
}

// pgSettings reads the durability settings of the server at dsn.
func pgSettings(dsn string) string {
	var parts []string
	for _, name := range []string{"server_version", "fsync", "synchronous_commit", "full_page_writes"} {
		out, err := exec.Command("psql", dsn, "-Atc", "SHOW "+name).Output()
		if err != nil {
			return "unknown (psql: " + err.Error() + ")"
		}
		parts = append(parts, name+" = "+strings.TrimSpace(string(out)))
	}
	return strings.Join(parts, ", ")
}

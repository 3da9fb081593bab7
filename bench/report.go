package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"
)

func (b *bench) report(total time.Duration) string {
	var w strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&w, format, args...) }

	smoke := *flagDuration < 10*time.Second
	p("# Benchmarks\n\n")
	if smoke {
		p("> **SMOKE RUN** (`-duration %s`, on a machine busy with other work): these figures only show\n"+
			"> that the driver works. They are not the benchmark; rerun with the defaults on a quiet machine.\n\n", *flagDuration)
	}
	p("- Date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	p("- Cores (`nproc`): %s; CPU: %s\n", nproc(), cpuModel())
	p("- Go: %s; kernel %s\n", cmdOutput("go", "version"), cmdOutput("uname", "-r"))
	p("- Command: `go run ./bench%s` (whole run: %s, Caddy build excluded)\n", argsString(), total.Round(time.Second))
	p("- Load: [vegeta](https://github.com/tsenart/vegeta) v12.13.0 as a library, HTTP/1.1 keep-alive.\n"+
		"  Scenarios 1-5: closed loop, %d requests in flight, %s measured after a %s warm-up;\n"+
		"  booking ids cycle over %d bookings. Every request is a POST with `X-Api-Key`,\n"+
		"  `Content-Type: application/json` and `{\"booking_id\":\"<n>\",\"event_type\":\"booking.updated\",\"organization_id\":\"org-1\"}`.\n",
		*flagConcurrency, *flagDuration, b.warmup(), bookingsCycled)
	p("- The load generator, the stub import-bookings (in the driver's process, on loopback) and Caddy\n"+
		"  **share the same %s cores**, so every figure is lower than on a dedicated server and the\n"+
		"  ratios between scenarios are what matters. One Caddy process per scenario, no `log` directive,\n"+
		"  `grace_period 1s`; its stderr goes to a file.\n\n", nproc())

	sc3 := b.find("3")
	p("| # | Scenario | req/s (2xx) | p50 | p99 | non-2xx | × sc. 3 | Upstream calls | Memory |\n")
	p("|---|---|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range b.rows {
		rps, p50, p99, errs, ratio := "—", "—", "—", "—", "—"
		if r.load != nil {
			p50, p99, errs = ms(r.load.p50), ms(r.load.p99), fmt.Sprint(r.load.nonOK())
			if !strings.HasPrefix(r.key, "6") && !strings.HasPrefix(r.key, "7") {
				rps = fmt.Sprintf("%.0f", r.load.okPerSec())
				if sc3 != nil && sc3.load != nil && sc3.load.okPerSec() > 0 {
					ratio = fmt.Sprintf("%.2f×", r.load.okPerSec()/sc3.load.okPerSec())
				}
			}
		}
		up := "—"
		if r.upstream >= 0 {
			up = fmt.Sprint(r.upstream)
			if r.bound != "" {
				up += " (" + r.bound + ")"
			}
		}
		mem := "—"
		if r.peakKB > 0 {
			mem = fmt.Sprintf("peak − idle **%.1f MiB** (idle %.1f, peak %.1f)", mib(r.peakKB-min(r.idleKB, r.peakKB)), mib(r.idleKB), mib(r.peakKB))
		}
		name := r.name
		if r.note != "" {
			name += " — " + strings.ReplaceAll(r.note, "|", "\\|")
		}
		p("| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", r.key, name, rps, p50, p99, errs, ratio, up, mem)
	}
	p("\nScenarios 6 and 7 are bursts, not throughput runs: %d webhooks sent at %d/s (6) or within 0.1 s (7);\n"+
		"p50/p99 are the senders' latencies during the burst. Scenario 6 counts upstream calls until none has\n"+
		"been made for 3 s; the stub takes 200 ms per sync. In scenarios 3-5 the upstream calls are those made\n"+
		"during the measured window (in async mode, by the queue's workers in the background).\n",
		burstWebhooks, burstWebhooks)
	for _, k := range []string{"6-async", "6-sync", "7", "7-stock"} {
		if r := b.find(k); r != nil && r.inflight > 0 {
			p("Scenario %s: at most %d calls were in flight at the stub at once.\n", k, r.inflight)
		}
	}
	if r := b.find("4"); r != nil && r.load != nil && r.logLines > 0 {
		p("\nScenario 4: Caddy wrote %d log lines during the measured window (%.2f per request): "+
			"receive_booking logs one INFO line per webhook through Caddy's default logger even without a `log` directive; "+
			"stock `reverse_proxy` (scenario 3) logs none.\n", r.logLines, float64(r.logLines)/float64(max(r.load.requests, 1)))
	}

	if s8s, s8a := b.find("8-sync"), b.find("8-auto"); s8s != nil && s8a != nil && s8s.load != nil && s8a.load != nil {
		p("\nScenario 8: at one request in flight, `mode auto` (record the webhook, then wait for the queued sync's\n"+
			"first attempt) adds **%s at p50 and %s at p99** over `mode sync` (%s / %s vs %s / %s).\n",
			ms(s8a.load.p50-s8s.load.p50), ms(s8a.load.p99-s8s.load.p99), ms(s8a.load.p50), ms(s8a.load.p99), ms(s8s.load.p50), ms(s8s.load.p99))
	}
	if s4a := b.find("4-auto"); s4a != nil && s4a.load != nil {
		if s1 := b.find("1"); s1 != nil && s1.load != nil && s1.load.okPerSec() > 0 {
			p("Scenario 4-auto: %.0f synced answers/s in `mode auto` = %.2f× the `respond` ceiling.\n",
				s4a.load.okPerSec(), s4a.load.okPerSec()/s1.load.okPerSec())
		}
	}

	p("\n## Targets\n\n")
	p("| Target | Measured | Result |\n|---|---|---|\n")
	s2, s4, s5, s6, s7 := b.find("2"), b.find("4"), b.find("5-sqlite"), b.find("6-async"), b.find("7")
	have := func(r *row) bool { return r != nil && r.load != nil && r.note == "" }
	verdict := func(ok bool) string {
		if ok {
			return "PASS"
		}
		return "MISS"
	}
	if have(s4) && have(sc3) {
		ratio := s4.load.okPerSec() / sc3.load.okPerSec()
		p("| 4 throughput ≥ 1.0× scenario 3 | %.0f vs %.0f req/s = %.2f× | %s |\n", s4.load.okPerSec(), sc3.load.okPerSec(), ratio, verdict(ratio >= 1.0))
	} else {
		p("| 4 throughput ≥ 1.0× scenario 3 | not measured | n/a |\n")
	}
	if have(s4) && have(s2) {
		limit := s2.load.p99 + time.Millisecond
		p("| 4 p99 ≤ scenario 2 p99 + 1 ms | %s vs %s + 1 ms = %s | %s |\n", ms(s4.load.p99), ms(s2.load.p99), ms(limit), verdict(s4.load.p99 <= limit))
	} else {
		p("| 4 p99 ≤ scenario 2 p99 + 1 ms | not measured | n/a |\n")
	}
	if have(s5) {
		p("| 5 SQLite ≥ 1,000 durable acks/s | %.0f/s | %s |\n", s5.load.okPerSec(), verdict(s5.load.okPerSec() >= 1000))
	} else {
		p("| 5 SQLite ≥ 1,000 durable acks/s | not measured | n/a |\n")
	}
	if s6 != nil && s6.upstream >= 0 {
		ok := s6.upstream <= burstBound && s6.load != nil && s6.load.nonOK() == 0
		p("| 6 upstream calls ≤ %d (async) | %d calls, %d non-2xx | %s |\n", burstBound, s6.upstream, s6.load.nonOK(), verdict(ok))
	} else {
		p("| 6 upstream calls ≤ %d (async) | not measured | n/a |\n", burstBound)
	}
	if s7 != nil && s7.peakKB > 0 {
		d := mib(s7.peakKB - min(s7.idleKB, s7.peakKB))
		ok := d < 64 && s7.load != nil && s7.load.nonOK() == 0
		ref := ""
		if st := b.find("7-stock"); st != nil && st.peakKB > 0 {
			ref = fmt.Sprintf(" (stock Caddy, 7-stock: %.1f MiB)", mib(st.peakKB-min(st.idleKB, st.peakKB)))
		}
		p("| 7 peak RSS < 64 MiB above idle | %.1f MiB%s | %s |\n", d, ref, verdict(ok))
	} else {
		p("| 7 peak RSS < 64 MiB above idle | not measured | n/a |\n")
	}
	p("\nA scenario with non-2xx answers fails its target whatever its figure.\n")
	return w.String()
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

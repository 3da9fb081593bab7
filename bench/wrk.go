package main

// wrk: the load generator of the throughput scenarios, its Lua script
// and its result line.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The closed-loop scenarios run wrk (one thread, -concurrency
// connections) with a generated Lua script. The script builds each
// request itself and defines no response() callback: that callback makes
// wrk parse every answer in Lua and costs it more CPU than the server
// under test. Its done() prints one line the driver parses.

const wrkResultPrefix = "RB-WRK "

// wrkStopLine is what the script prints when it has sent -stop requests;
// the driver then interrupts wrk (whose main thread otherwise sleeps out
// -d whatever its threads do).
const wrkStopLine = "RB-WRK-STOP"

const wrkScript = `-- Written by the receive_booking bench driver.
-- args (after --): cycle|distinct <bookings> <first id> <stop after, 0: never>
local cycle, bookings, first, stop_after, i = true, 10000, 1, 0, 0
local body = '{"booking_id":"%%d","event_type":"booking.updated","organization_id":"org-1"}'

wrk.method = "POST"
wrk.headers["X-Api-Key"] = "%s"
wrk.headers["Content-Type"] = "application/json"

function init(args)
  cycle = args[1] ~= "distinct"
  bookings = tonumber(args[2] or "10000")
  first = tonumber(args[3] or "1")
  stop_after = tonumber(args[4] or "0")
end

function request()
  local id
  if cycle then id = i %% bookings + 1 else id = first + i end
  i = i + 1
  if i == stop_after then
    io.write("` + wrkStopLine + `\n")
    io.flush()
    wrk.thread:stop()
  end
  return wrk.format(nil, nil, nil, string.format(body, id))
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("` + wrkResultPrefix + `requests=%%d duration_us=%%d connect=%%d read=%%d write=%%d timeout=%%d status=%%d p50_us=%%d p90_us=%%d p99_us=%%d max_us=%%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
`

// wrkRun is one wrk invocation.
type wrkRun struct {
	url         string
	connections int
	duration    time.Duration // -d; a limit only when stopAfter is set
	distinct    bool          // booking ids first, first+1, …; else cycling over bookingsCycled
	first       uint64
	stopAfter   int // stop once this many requests were sent (0: run for duration)
}

// wrkTool is the wrk binary and the script it runs.
type wrkTool struct {
	bin, script, version string
}

func findWrk(dir string) (*wrkTool, error) {
	bin := *flagWrk
	if bin == "" {
		var err error
		if bin, err = exec.LookPath("wrk"); err != nil {
			return nil, errors.New("wrk not found: install it (apt-get install wrk) or pass -wrk <path>")
		}
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("wrk not found at %s: install it (apt-get install wrk) or pass -wrk <path>", bin)
	}
	// wrk -v prints its version and usage, and exits 1.
	out, _ := exec.Command(bin, "-v").CombinedOutput()
	w := &wrkTool{bin: bin, script: filepath.Join(dir, "webhook.lua"), version: firstLine(strings.TrimSpace(string(out)))}
	if !strings.HasPrefix(w.version, "wrk ") {
		return nil, fmt.Errorf("%s -v: unexpected output %q", bin, oneLine(string(out)))
	}
	if err := os.WriteFile(w.script, fmt.Appendf(nil, wrkScript, apiKey), 0o644); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *wrkTool) args(r wrkRun) []string {
	secs := max(int((r.duration+time.Second-1)/time.Second), 1)
	ids, mode := strconv.Itoa(bookingsCycled), "cycle"
	if r.distinct {
		mode = "distinct"
	}
	return []string{"-t1", fmt.Sprintf("-c%d", r.connections), fmt.Sprintf("-d%ds", secs),
		"--timeout", "30s", "--latency", "-s", w.script, r.url,
		"--", mode, ids, strconv.FormatUint(max(r.first, 1), 10), strconv.Itoa(r.stopAfter)}
}

// run runs wrk and returns what it measured, with the CPU time wrk used
// as a share of one core over its wall time.
func (w *wrkTool) run(r wrkRun) (*loadResult, error) {
	cmd := exec.Command(w.bin, w.args(r)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	var result string
	var out strings.Builder
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == wrkStopLine:
			_ = cmd.Process.Signal(syscall.SIGINT)
		case strings.HasPrefix(line, wrkResultPrefix):
			result = strings.TrimPrefix(line, wrkResultPrefix)
		default:
			out.WriteString(line + "\n")
		}
	}
	err = cmd.Wait()
	wall := time.Since(start)
	if result == "" {
		return nil, fmt.Errorf("wrk printed no result (%v): %s %s", err, oneLine(out.String()), oneLine(stderr.String()))
	}
	res, perr := parseWrk(result)
	if perr != nil {
		return nil, perr
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && wall > 0 {
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		res.wrkCPU = 100 * cpu.Seconds() / wall.Seconds()
	}
	return res, nil
}

func parseWrk(line string) (*loadResult, error) {
	v := map[string]uint64{}
	for f := range strings.FieldsSeq(line) {
		k, s, _ := strings.Cut(f, "=")
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("wrk result %q: %w", line, err)
		}
		v[k] = n
	}
	us := func(k string) time.Duration { return time.Duration(v[k]) * time.Microsecond }
	r := &loadResult{
		requests: v["requests"],
		status:   v["status"],
		sockErrs: v["connect"] + v["read"] + v["write"] + v["timeout"],
		elapsed:  us("duration_us"),
		p50:      us("p50_us"), p90: us("p90_us"), p99: us("p99_us"), max: us("max_us"),
		wrkCPU: -1,
	}
	r.ok = r.requests - min(r.status, r.requests)
	return r, nil
}

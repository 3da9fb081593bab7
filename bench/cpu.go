package main

// CPU accounting from /proc: a process's utime+stime and the machine's
// busy time, over a measured window.

import (
	"os"
	"strconv"
	"strings"
	"time"
)

// cpuMeter measures CPU use over a window: Caddy's (utime+stime from
// /proc/<pid>/stat), the driver's own (its stub, and the senders of a
// burst) and the whole machine's (/proc/stat, every core).
type cpuMeter struct {
	c                    *caddyProc
	start                time.Time
	caddy0, self0, host0 time.Duration
}

// cpuUse is a window's CPU use in % of one core; caddy is -1 without
// Caddy, and any figure is -1 when /proc could not be read.
type cpuUse struct{ caddy, driver, host float64 }

func (c *caddyProc) startCPU() *cpuMeter {
	m := &cpuMeter{c: c, start: time.Now()}
	if c != nil {
		m.caddy0, _ = c.cpuTime()
	}
	m.self0, _ = procCPUTime(os.Getpid())
	m.host0, _ = hostBusy()
	return m
}

func (m *cpuMeter) stop() cpuUse {
	wall := time.Since(m.start).Seconds()
	pct := func(d, d0 time.Duration, err error) float64 {
		if err != nil || wall <= 0 {
			return -1
		}
		return 100 * (d - d0).Seconds() / wall
	}
	u := cpuUse{caddy: -1}
	if m.c != nil {
		d, err := m.c.cpuTime()
		u.caddy = pct(d, m.caddy0, err)
	}
	d, err := procCPUTime(os.Getpid())
	u.driver = pct(d, m.self0, err)
	d, err = hostBusy()
	u.host = pct(d, m.host0, err)
	return u
}

// setCPU records a window's CPU use; other is what the machine spent
// beyond Caddy, the driver and wrk: other processes, and kernel work
// (loopback networking) not charged to a process.
func (r *row) setCPU(u cpuUse, wrk float64) {
	r.caddyCPU, r.driverCPU, r.otherCPU = u.caddy, u.driver, -1
	if u.host >= 0 && u.driver >= 0 {
		r.otherCPU = max(u.host-max(u.caddy, 0)-u.driver-max(wrk, 0), 0)
	}
}

// hostBusy is the CPU time all cores have spent not idle since boot, from
// the first line of /proc/stat (user nice system idle iowait irq softirq
// steal ...).
func hostBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	var ticks uint64
	for i, s := range f[1:min(len(f), 9)] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / time.Duration(clockTicks()), nil
}

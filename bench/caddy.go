package main

// Caddy for each scenario: the binary (built as the tests build it, or
// given), a fresh process per scenario with its own ports and data
// directory, its RSS and CPU read from /proc, its CPU profile.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// buildCaddy builds Caddy with this module into dir, as the tests do
// (testkit.BuildCaddy: xcaddy at the Makefile's versions).
func buildCaddy(dir string) (string, error) {
	repo, err := testkit.RepoRoot()
	if err != nil {
		return "", fmt.Errorf("run from the repository (make bench): %w", err)
	}
	v, err := testkit.ReadVersions(repo)
	if err != nil {
		return "", err
	}
	logf("building Caddy %s with %s (xcaddy %s)", v.Caddy, repo, v.Xcaddy)
	start := time.Now()
	bin, err := testkit.BuildCaddy(dir)
	if err != nil {
		return "", err
	}
	logf("built in %s", time.Since(start).Round(time.Second))
	return bin, nil
}

// copyCaddy copies the Caddy binary at src into dir, so that the whole
// run (and the profiles' symbols) use one binary even if src is rebuilt
// meanwhile. A missing or unrunnable src (being rebuilt) is waited for.
func copyCaddy(src, dir string) (string, error) {
	dst := filepath.Join(dir, "caddy")
	deadline := time.Now().Add(5 * time.Minute)
	for {
		err := copyFile(src, dst)
		if err == nil {
			if err = exec.Command(dst, "version").Run(); err == nil {
				return dst, nil
			}
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("caddy binary %s: %w", src, err)
		}
		logf("caddy binary %s not usable yet (%v): retrying in 5s", src, err)
		time.Sleep(5 * time.Second)
	}
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// caddyProc is one running Caddy, serving one scenario's site.
type caddyProc struct {
	cmd     *exec.Cmd
	dir     string
	port    int
	admin   int
	logPath string
	exited  chan struct{}
}

func (c *caddyProc) siteURL() string { return fmt.Sprintf("http://127.0.0.1:%d/", c.port) }

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// startCaddy runs bin with a Caddyfile whose site block holds site, in its
// own data directory and with its own admin port, and waits until the site
// answers.
func startCaddy(bin, dir, site string) (*caddyProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	admin, err := freePort()
	if err != nil {
		return nil, err
	}
	caddyfile := fmt.Sprintf(`{
	admin 127.0.0.1:%d
	http_port %d
	grace_period 1s
	persist_config off
	auto_https off
}

http://127.0.0.1:%d {
%s
}
`, admin, port, port, indent(site))
	cfgPath := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(cfgPath, []byte(caddyfile), 0o600); err != nil {
		return nil, err
	}
	logPath := filepath.Join(dir, "caddy.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run", "--config", cfgPath, "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	c := &caddyProc{cmd: cmd, dir: dir, port: port, admin: admin, logPath: logPath, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(c.exited)
	}()
	if err := c.waitReady(60 * time.Second); err != nil {
		c.stop()
		return nil, fmt.Errorf("%w\n--- %s (tail) ---\n%s", err, logPath, tail(logPath, 20))
	}
	return c, nil
}

func indent(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i, l := range lines {
		lines[i] = "\t" + l
	}
	return strings.Join(lines, "\n")
}

// waitReady polls the site until it answers anything (every scenario's
// site answers a bare GET without calling the stub).
func (c *caddyProc) waitReady(limit time.Duration) error {
	client := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-c.exited:
			return errors.New("caddy exited during startup")
		default:
		}
		resp, err := client.Get(c.siteURL())
		if err == nil {
			resp.Body.Close()
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("caddy did not answer in time")
}

// stop asks Caddy to stop through its admin API, and kills it if it has
// not exited in time.
func (c *caddyProc) stop() {
	if c == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("http://127.0.0.1:%d/stop", c.admin), nil)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	} else {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-c.exited:
	case <-time.After(20 * time.Second):
		logf("caddy (pid %d) did not stop in 20s: killing it", c.cmd.Process.Pid)
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// procStatus reads a kB field (VmRSS, VmHWM) of /proc/<pid>/status.
func (c *caddyProc) procStatus(field string) (uint64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || name != field {
			continue
		}
		v := strings.TrimSuffix(strings.TrimSpace(rest), " kB")
		return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	}
	return 0, fmt.Errorf("%s not found in /proc/%d/status", field, c.cmd.Process.Pid)
}

// cpuTime is the CPU time (user and system) Caddy has used so far, from
// /proc/<pid>/stat.
func (c *caddyProc) cpuTime() (time.Duration, error) {
	return procCPUTime(c.cmd.Process.Pid)
}

func procCPUTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command name (which may hold spaces), from the
	// third: utime and stime are the 14th and 15th.
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / time.Duration(clockTicks()), nil
}

// clockTicks is USER_HZ, the unit of /proc/<pid>/stat's times.
var clockTicks = sync.OnceValue(func() int64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if n, perr := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil && perr == nil && n > 0 {
		return n
	}
	return 100
})

// resetPeak resets VmHWM to the current RSS (clear_refs 5, Linux 4.0+),
// so that the peak read after a load is the load's, not Caddy's startup's.
func (c *caddyProc) resetPeak() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", c.cmd.Process.Pid), []byte("5"), 0o200)
}

// adminGet GETs path from Caddy's admin endpoint and times the call.
func (c *caddyProc) adminGet(path string) (int, []byte, time.Duration, error) {
	client := &http.Client{Timeout: 60 * time.Second}
	start := time.Now()
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", c.admin, path))
	if err != nil {
		return 0, nil, time.Since(start), err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, b, time.Since(start), err
}

// logLines counts the lines Caddy wrote to its log.
func (c *caddyProc) logLines() int {
	if c == nil {
		return 0
	}
	b, err := os.ReadFile(c.logPath)
	if err != nil {
		return 0
	}
	return bytes.Count(b, []byte("\n"))
}

// logContains reports whether Caddy's log holds s.
func (c *caddyProc) logContains(s string) bool {
	b, err := os.ReadFile(c.logPath)
	return err == nil && bytes.Contains(b, []byte(s))
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cpuProfile saves a CPU profile of Caddy taken over d through its admin
// API's /debug/pprof endpoint.
func (c *caddyProc) cpuProfile(path string, d time.Duration) error {
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	return c.fetch(fmt.Sprintf("/debug/pprof/profile?seconds=%d", secs), path, d+30*time.Second)
}

// fetch saves an admin API answer (a profile) to path.
func (c *caddyProc) fetch(uri, path string, timeout time.Duration) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	client := &http.Client{Timeout: timeout}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d%s", c.admin, uri))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("admin %s: status %d", uri, resp.StatusCode)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// goroutines is Caddy's goroutine count, from the admin API (0 if it
// cannot tell).
func (c *caddyProc) goroutines() int {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/pprof/goroutine?debug=1", c.admin))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var n int
	_, _ = fmt.Fscanf(resp.Body, "goroutine profile: total %d", &n)
	return n
}

// memStats are the Go runtime's memory figures (admin /debug/vars), in
// bytes.
type memStats struct {
	HeapInuse, StackInuse, Sys uint64
}

func (c *caddyProc) memStats() memStats {
	client := &http.Client{Timeout: 10 * time.Second}
	var v struct{ Memstats memStats }
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/debug/vars", c.admin))
	if err != nil {
		return v.Memstats
	}
	defer resp.Body.Close()
	_ = json.NewDecoder(resp.Body).Decode(&v)
	return v.Memstats
}

package receivebooking

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// isolatedEnv marks the test process that runs the tests (see TestMain).
const isolatedEnv = "RB_TEST_ISOLATED"

// TestMain keeps every Caddy state the tests make (autosave.json, the
// local CA, last_clean.json, the default SQLite queue, and those of the
// Caddy binaries they start) in a temporary directory, never the user's.
// Caddy computes its config and storage paths from XDG_CONFIG_HOME,
// XDG_DATA_HOME or HOME when its package loads, before TestMain runs
// (caddy.ConfigAutosavePath, caddy.DefaultStorage, and certmagic's own
// default storage, which cannot be reset): so the test binary runs itself
// again with both set, and every path any package computes at load time
// is computed inside the temporary directory.
func TestMain(m *testing.M) {
	if os.Getenv(isolatedEnv) == "" {
		os.Exit(runIsolated())
	}
	code := m.Run()
	testkit.RemoveBuilt()
	os.Exit(code)
}

// runIsolated runs this test binary again, with the same arguments and
// output, in a fresh Caddy environment, and returns its exit code. Signals
// are passed on (SIGQUIT too: go test sends it on a timeout, for the
// goroutine dump).
func runIsolated() int {
	dir, err := os.MkdirTemp("", "receive-booking-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), isolatedEnv+"=1",
		"XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "config"))
	if goEnv := goEnvFile(); goEnv != "" {
		// The go command finds its settings (`go env -w`) under
		// XDG_CONFIG_HOME: a test that builds Caddy keeps the user's.
		cmd.Env = append(cmd.Env, "GOENV="+goEnv)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(signals)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	go func() {
		for s := range signals {
			_ = cmd.Process.Signal(s)
		}
	}()
	err = cmd.Wait()
	var exit *exec.ExitError
	switch {
	case errors.As(err, &exit):
		if code := exit.ExitCode(); code >= 0 {
			return code
		}
		return 1 // ended by a signal
	case err != nil:
		fmt.Fprintln(os.Stderr, "TestMain:", err)
		return 1
	}
	return 0
}

// goEnvFile is the go command's settings file as it finds it now: GOENV,
// or go/env in the user's config directory.
func goEnvFile() string {
	if f := os.Getenv("GOENV"); f != "" {
		return f
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return ""
	}
	return filepath.Join(dir, "go", "env")
}

// TestTestsLeaveHomeAlone runs tests that make Caddy state (caddytest's
// in-process Caddy: autosave.json, the local CA, last_clean.json; the
// binary, and its CLI) through this same test binary, as go test would,
// with HOME an empty directory and no XDG_* variable: HOME stays empty.
// The Caddy binary is handed over (RB_CADDY_BIN), so that no go command
// runs under that HOME.
func TestTestsLeaveHomeAlone(t *testing.T) {
	if testing.Short() {
		t.Skip("runs Caddy")
	}
	// Once a caddytest test has run, caddytest's Caddy runs in this
	// process, its admin endpoint on the port all of them use: the tests
	// below would load their configs into it. It is stopped (no admin, no
	// apps) while they run, and its admin endpoint comes back after.
	if caddy.ActiveContext().Context != nil {
		require.NoError(t, caddy.Load([]byte(`{"admin":{"disabled":true}}`), true))
		t.Cleanup(func() {
			assert.NoError(t, caddy.Load([]byte(`{"admin":{"listen":"localhost:2999"}}`), true))
		})
	}
	self, err := os.Executable()
	require.NoError(t, err)
	home := t.TempDir()
	cmd := exec.Command(self, "-test.run", "^("+homeProofTests+")$", "-test.count=1", "-test.v")
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "HOME" && k != isolatedEnv && !strings.HasPrefix(k, "XDG_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "HOME="+home, "RB_CADDY_BIN="+caddyBinary(t))
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
	for _, name := range strings.Split(homeProofTests, "|") {
		require.Contains(t, string(out), "--- PASS: "+name+" ", "%s ran", name)
	}
	var left []string
	require.NoError(t, filepath.WalkDir(home, func(path string, d fs.DirEntry, err error) error {
		if path != home {
			left = append(left, path)
		}
		return err
	}))
	assert.Empty(t, left, "the tests wrote into HOME")
}

// homeProofTests are the tests TestTestsLeaveHomeAlone runs.
const homeProofTests = "TestE2EContract|TestCommands|TestDashboardInBrowser"

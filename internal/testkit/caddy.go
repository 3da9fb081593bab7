package testkit

// The Caddy binary the tests run.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// The Caddy binary the tests run: RB_CADDY_BIN when set (.ci/run builds it
// once, as users do, and hands it over), else built here once per test
// binary with xcaddy, as `make build` does.
var (
	caddyOnce sync.Once
	caddyBin  string
	caddyErr  error
	// builtDir is the temporary directory of a binary built here.
	builtDir string
)

const (
	xcaddyVersion = "v0.4.5"
	caddyVersion  = "v2.11.9"
	modulePath    = "github.com/bookingwebhook/caddy-receive-booking"
)

// CaddyBinary returns the path of a Caddy binary with this module.
func CaddyBinary(t testing.TB) string {
	t.Helper()
	caddyOnce.Do(func() { caddyBin, caddyErr = buildCaddy() })
	if caddyErr != nil {
		t.Fatalf("building Caddy: %v", caddyErr)
	}
	return caddyBin
}

func buildCaddy() (string, error) {
	if bin := os.Getenv("RB_CADDY_BIN"); bin != "" {
		return bin, nil
	}
	repo, err := goCmd("list", "-m", "-f", "{{.Dir}}", modulePath)
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "rb-caddy-")
	if err != nil {
		return "", err
	}
	builtDir = dir
	gopath, err := goCmd("env", "GOPATH")
	if err != nil {
		return "", err
	}
	xcaddy := filepath.Join(strings.Split(gopath, string(os.PathListSeparator))[0], "bin", "xcaddy")
	if _, err := os.Stat(xcaddy); err != nil {
		if _, err := goCmd("install", "github.com/caddyserver/xcaddy/cmd/xcaddy@"+xcaddyVersion); err != nil {
			return "", fmt.Errorf("installing xcaddy: %w", err)
		}
	}
	bin := filepath.Join(dir, "caddy")
	// The module is unpublished: its local copy gets a version that cannot
	// clash with a real one.
	cmd := exec.Command(xcaddy, "build", caddyVersion, "--output", bin,
		"--with", modulePath+"@v0.0.0-00010101000000-000000000000="+repo)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("xcaddy build: %v: %s", err, out)
	}
	return bin, nil
}

func goCmd(args ...string) (string, error) {
	out, err := exec.Command("go", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out)), nil
}

// RemoveBuilt removes a binary CaddyBinary built; call it from TestMain.
func RemoveBuilt() {
	if builtDir != "" {
		_ = os.RemoveAll(builtDir)
	}
}

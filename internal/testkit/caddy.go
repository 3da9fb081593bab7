package testkit

// The Caddy binary the tests and the bench run, built as `make build`
// builds it, at the versions the Makefile pins.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// The Caddy binary the tests run: RB_CADDY_BIN when set (.ci/run builds it
// once, as users do, and hands it over), else built here once per test
// binary.
var (
	caddyOnce sync.Once
	caddyBin  string
	caddyErr  error
	// builtDir is the temporary directory of a binary built here.
	builtDir string
)

const (
	modulePath = "github.com/bookingwebhook/caddy-receive-booking"
	// moduleVersion is what the checkout is given: the module is
	// unpublished, and xcaddy needs a version to replace.
	moduleVersion = "v0.0.0-00010101000000-000000000000"
)

// CaddyBinary returns the path of a Caddy binary with this module.
func CaddyBinary(t testing.TB) string {
	t.Helper()
	caddyOnce.Do(func() { caddyBin, caddyErr = testBinary() })
	if caddyErr != nil {
		t.Fatalf("building Caddy: %v", caddyErr)
	}
	return caddyBin
}

func testBinary() (string, error) {
	if bin := os.Getenv("RB_CADDY_BIN"); bin != "" {
		return bin, nil
	}
	dir, err := os.MkdirTemp("", "rb-caddy-")
	if err != nil {
		return "", err
	}
	builtDir = dir
	return BuildCaddy(dir)
}

// RemoveBuilt removes a binary CaddyBinary built; call it from TestMain.
func RemoveBuilt() {
	if builtDir != "" {
		_ = os.RemoveAll(builtDir)
	}
}

// BuildCaddy builds Caddy with this checkout into dir/caddy as `make
// build` does, and returns the binary's path: xcaddy from PATH, else from
// GOBIN or the first GOPATH entry's bin (installed there at the Makefile's
// XCADDY_VERSION when missing), builds the Makefile's CADDY_VERSION with
// the checkout standing in for the unpublished module.
func BuildCaddy(dir string) (string, error) {
	repo, err := RepoRoot()
	if err != nil {
		return "", err
	}
	v, err := ReadVersions(repo)
	if err != nil {
		return "", err
	}
	xcaddy, err := findXcaddy(v.Xcaddy)
	if err != nil {
		return "", err
	}
	bin, err := filepath.Abs(filepath.Join(dir, "caddy"))
	if err != nil {
		return "", err
	}
	cmd := exec.Command(xcaddy, "build", v.Caddy, "--output", bin,
		"--with", modulePath+"@"+moduleVersion+"="+repo)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("xcaddy build %s: %v: %s", v.Caddy, err, out)
	}
	return bin, nil
}

// Versions are the Caddy and xcaddy versions the Makefile pins.
type Versions struct {
	Caddy, Xcaddy string
}

// ReadVersions reads CADDY_VERSION and XCADDY_VERSION from the Makefile in
// repo: the one place they are named for the build, CI, the tests and the
// bench (scripts/recipes.sh holds the Dockerfile and the docs to them).
func ReadVersions(repo string) (Versions, error) {
	b, err := os.ReadFile(filepath.Join(repo, "Makefile"))
	if err != nil {
		return Versions{}, err
	}
	get := func(name string) (string, error) {
		m := regexp.MustCompile(`(?m)^` + name + `[ \t]*:=[ \t]*(\S+)[ \t]*$`).FindSubmatch(b)
		if m == nil {
			return "", fmt.Errorf("the Makefile has no line %s := <version>", name)
		}
		return string(m[1]), nil
	}
	var v Versions
	if v.Caddy, err = get("CADDY_VERSION"); err != nil {
		return Versions{}, err
	}
	if v.Xcaddy, err = get("XCADDY_VERSION"); err != nil {
		return Versions{}, err
	}
	return v, nil
}

// RepoRoot is the directory of this module's checkout: the main module of
// the go command run in the working directory (a test's package, or the
// repository for the bench).
func RepoRoot() (string, error) {
	return goCmd("list", "-m", "-f", "{{.Dir}}", modulePath)
}

// findXcaddy finds xcaddy where the Makefile does, installing version
// when it is missing.
func findXcaddy(version string) (string, error) {
	if path, err := exec.LookPath("xcaddy"); err == nil {
		return path, nil
	}
	gobin, err := goCmd("env", "GOBIN")
	if err != nil {
		return "", err
	}
	if gobin == "" {
		gopath, err := goCmd("env", "GOPATH")
		if err != nil {
			return "", err
		}
		gobin = filepath.Join(filepath.SplitList(gopath)[0], "bin")
	}
	xcaddy := filepath.Join(gobin, "xcaddy")
	if _, err := os.Stat(xcaddy); err == nil {
		return xcaddy, nil
	}
	if _, err := goCmd("install", "github.com/caddyserver/xcaddy/cmd/xcaddy@"+version); err != nil {
		return "", fmt.Errorf("installing xcaddy: %w", err)
	}
	return xcaddy, nil
}

// goCmd runs the go command and returns its standard output, trimmed
// (what it says on stderr, such as "go: downloading", is only for errors).
func goCmd(args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.Command("go", args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("go %s: %v: %s", strings.Join(args, " "), err, stderr.Bytes())
	}
	return strings.TrimSpace(string(out)), nil
}

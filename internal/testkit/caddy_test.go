package testkit

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestReadVersions(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, "Makefile"), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# XCADDY_VERSION := v9 in a comment\nXCADDY_VERSION := v0.4.5\nCADDY_VERSION  := v2.11.9 \nMODULE := x\n")
	v, err := ReadVersions(dir)
	if err != nil {
		t.Fatal(err)
	}
	if v != (Versions{Caddy: "v2.11.9", Xcaddy: "v0.4.5"}) {
		t.Fatalf("got %+v", v)
	}
	write("XCADDY_VERSION := v0.4.5\nCADDY_VERSION ?= v2.11.9\n")
	if _, err := ReadVersions(dir); err == nil || !strings.Contains(err.Error(), "CADDY_VERSION") {
		t.Fatalf("a Makefile without CADDY_VERSION := …: got %v", err)
	}
}

// TestVersionsAreTheMakefiles: where the docs and go.mod name a Caddy or
// xcaddy version (a reader's recipe, the dependency the in-process tests
// run), it is the Makefile's. scripts/recipes.sh checks the Dockerfile.
func TestVersionsAreTheMakefiles(t *testing.T) {
	repo, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	v, err := ReadVersions(repo)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := filepath.Glob(filepath.Join(repo, "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		pattern string
		want    string
	}{
		{`xcaddy build (\S+)`, v.Caddy},
		{`caddy:(\d[^\s\x60-]*)`, strings.TrimPrefix(v.Caddy, "v")}, // image tags
		{"`github.com/caddyserver/caddy/v2` (\\S+)", v.Caddy},
		{"`github.com/caddyserver/xcaddy` (\\S+)", v.Xcaddy},
		{`(?m)^\s*github.com/caddyserver/caddy/v2 (\S+)`, v.Caddy}, // go.mod
	}
	found := 0
	for _, f := range append([]string{"README.md", "bench/README.md", "go.mod"}, docs...) {
		if !filepath.IsAbs(f) {
			f = filepath.Join(repo, f)
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		name, _ := filepath.Rel(repo, f)
		for _, c := range checks {
			for _, m := range regexp.MustCompile(c.pattern).FindAllStringSubmatch(string(b), -1) {
				found++
				if m[1] != c.want {
					t.Errorf("%s: %q names %s, the Makefile %s", name, m[0], m[1], c.want)
				}
			}
		}
	}
	if found == 0 {
		t.Fatal("no version found in the docs or go.mod: the patterns are stale")
	}
}

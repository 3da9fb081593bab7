package testkit

// A throwaway PostgreSQL database per test.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresDSN is the DSN of the test PostgreSQL server, which
// scripts/test.sh (make test) starts and exports as RB_TEST_POSTGRES_DSN.
// Without it the PostgreSQL tests fail rather than skip: a run that
// silently left out PostgreSQL would look green while testing less.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("RB_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Fatalf("RB_TEST_POSTGRES_DSN is not set: run the tests with `make test` " +
			"(scripts/test.sh starts a throwaway PostgreSQL), or set it to a server's DSN")
	}
	return dsn
}

// FreshPostgresDSN creates an empty database rb_<random> on the test
// server, owned by the DSN's role, and returns its DSN, so that each test
// has a database of its own. It is dropped when the test ends, WITH
// (FORCE) so that connections a test left open do not keep it; cleanups
// run last-registered first, so those registered after this call (pools,
// queues) have run by then.
func FreshPostgresDSN(t testing.TB) string {
	t.Helper()
	base := PostgresDSN(t)
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parsing RB_TEST_POSTGRES_DSN: %v", err)
	}
	// Lower case letters and digits only: no quoting needed in SQL.
	name := fmt.Sprintf("rb_%016x", rand.Uint64())
	exec := func(sql string) error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			return err
		}
		defer conn.Close(context.Background())
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := exec("CREATE DATABASE " + name); err != nil {
		t.Fatalf("creating test database %s: %v", name, err)
	}
	t.Cleanup(func() {
		// Only logged: the server is thrown away after the run anyway.
		if err := exec("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			t.Logf("dropping test database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}

// NoDSNPiece fails the test if text quotes dsn or any word of it (its
// user, password, hosts, database or values, split at punctuation; the
// scheme, key names and one-letter words aside), as a whole word: an error
// may say "password", not a password's "ss" or "word".
func NoDSNPiece(t testing.TB, text, dsn string) {
	t.Helper()
	if strings.Contains(text, dsn) {
		t.Errorf("%q quotes the whole DSN", text)
	}
	for _, w := range strings.FieldsFunc(dsn, func(r rune) bool {
		return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9')
	}) {
		switch strings.ToLower(w) {
		case "postgres", "postgresql", "host", "port", "user", "password", "dbname", "sslmode", "disable":
			continue
		}
		if len(w) >= 2 && regexp.MustCompile(`\b`+regexp.QuoteMeta(w)+`\b`).MatchString(text) {
			t.Errorf("%q quotes %q, a piece of the DSN", text, w)
		}
	}
}

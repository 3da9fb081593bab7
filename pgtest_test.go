package receivebooking

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// postgresDSN is the test server's DSN, set by scripts/test.sh (make
// test). Without it the PostgreSQL tests fail: they must not be skipped
// silently.
func postgresDSN(t testing.TB) string {
	t.Helper()
	dsn := os.Getenv("RB_TEST_POSTGRES_DSN")
	if dsn == "" {
		t.Fatal("RB_TEST_POSTGRES_DSN is not set: run the suite with `make test`, which starts PostgreSQL")
	}
	return dsn
}

// freshPostgresDSN creates an empty database for one test and drops it
// when the test ends, so tests never see each other's jobs.
func freshPostgresDSN(t testing.TB) string {
	t.Helper()
	base := postgresDSN(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatalf("connecting to the test PostgreSQL: %v", err)
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("rb_test_%d", rand.Uint64())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("creating test database: %v", err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			return
		}
		defer c.Close(ctx)
		_, _ = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parsing RB_TEST_POSTGRES_DSN: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// freshPG creates an empty database for a scenario on the -pg server and
// returns its DSN: no job another scenario left behind runs in it, and
// its own jobs do not slow the next scenario. The databases are dropped
// at the end of the run (dropPGs).
func (b *bench) freshPG(key string) (string, error) {
	u, err := url.Parse(*flagPG)
	if err != nil {
		return "", fmt.Errorf("parsing -pg: %w", err)
	}
	// Lower case letters, digits and _ only: no quoting in SQL.
	name := fmt.Sprintf("rb_bench_%s_%08x", strings.NewReplacer("-", "_").Replace(key), rand.Uint32())
	if err := pgExec(*flagPG, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("creating database for %s: %w", key, err)
	}
	u.Path = "/" + name
	dsn := u.String()
	b.pgDBs = append(b.pgDBs, pgDB{name: name, dsn: dsn})
	return dsn, nil
}

// pgDB is a database freshPG made.
type pgDB struct{ name, dsn string }

// dropPGs drops the databases freshPG made (WITH (FORCE): a Caddy that
// did not stop in time keeps none).
func (b *bench) dropPGs() {
	for _, d := range b.pgDBs {
		if err := pgExec(*flagPG, "DROP DATABASE IF EXISTS "+d.name+" WITH (FORCE)"); err != nil {
			logf("dropping database %s: %v", d.name, err)
		}
	}
}

func pgExec(dsn, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}

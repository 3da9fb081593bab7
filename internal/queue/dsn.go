package queue

// A PostgreSQL DSN is checked where it is configured (CheckDSN, at
// provisioning, so that `caddy validate` refuses it) and parsed again, the
// same way, where the queue opens: no DSN that parses into something else
// than was meant reaches a connection, a log line or the health answer.
// Nothing here connects, and no error quotes any part of the DSN: it holds
// a password.

import (
	"errors"
	"net/url"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var (
	errDSNSyntax = errors.New("the DSN is not a valid connection string: expected " +
		"postgres://user:password@host:port/database (the password URL-encoded) or key=value pairs separated by spaces")
	errDSNUnencoded = errors.New("the DSN's password must be URL-encoded (@ as %40, / as %2F); " +
		"so must an @ in the user or database name")
)

// CheckDSN tells whether dsn is a PostgreSQL connection string that pgx
// parses as it reads, without connecting.
func CheckDSN(dsn string) error {
	_, err := parseDSN(dsn)
	return err
}

func parseDSN(dsn string) (*pgxpool.Config, error) {
	if misparsedURL(dsn) {
		return nil, errDSNUnencoded
	}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors can quote pieces of the DSN: say only what
		// is wrong.
		return nil, errDSNSyntax
	}
	return cfg, nil
}

// misparsedURL tells whether a URL DSN has a raw '@' after its user info,
// in a host or the database name: pgx, like libpq, ends the user info at
// the first '@' that comes before any '/', so a password with an unencoded
// '@' leaves its tail in the host (postgres://u:p@ss@db/rb connects to
// host "ss@db"), and one with an unencoded '/' leaves its tail in the host
// and the database (postgres://u:p@ss/word@db/rb: host "ss", database
// "word@db/rb"); either way pieces of the password would show up in
// errors, logs and the health answer. An '@' in the query (a value such as
// application_name=me@host) is read as meant; a percent-encoded one (%40)
// is never an '@' here.
func misparsedURL(dsn string) bool {
	rest, ok := strings.CutPrefix(dsn, "postgresql://")
	if !ok {
		rest, ok = strings.CutPrefix(dsn, "postgres://")
	}
	if !ok {
		return false // key=value pairs: nothing needs encoding
	}
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		rest = rest[i+1:]
	}
	hostsAndDatabase, _, _ := strings.Cut(rest, "?")
	return strings.Contains(hostsAndDatabase, "@")
}

// DSNSecrets finds the password in a URL or key=value DSN, in the forms it
// may be printed in, for the scrubber.
func DSNSecrets(dsn string) []string {
	var out []string
	if u, err := url.Parse(dsn); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok {
			out = append(out, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	for _, f := range strings.Fields(dsn) {
		if v, ok := strings.CutPrefix(f, "password="); ok {
			out = append(out, strings.Trim(v, "'"))
		}
	}
	if cfg, err := pgx.ParseConfig(dsn); err == nil && cfg.Password != "" {
		out = append(out, cfg.Password)
	}
	return out
}

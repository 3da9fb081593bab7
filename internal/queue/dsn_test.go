package queue

import (
	"strings"
	"testing"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"

	"github.com/stretchr/testify/assert"
)

// TestCheckDSN: a DSN that pgx would read as something else than was
// written (a password's tail taken for a host or a database) is refused
// like one that does not parse, and no error holds any piece of it.
func TestCheckDSN(t *testing.T) {
	cases := []struct {
		name, dsn string
		err       error // nil: accepted
	}{
		{"url", "postgres://rb:pw@127.0.0.1:5432/rb?sslmode=disable", nil},
		{"postgresql scheme", "postgresql://rb:pw@127.0.0.1/rb", nil},
		{"encoded @ and /", "postgres://rb:p%40ss%2Fword@127.0.0.1:5432/rb", nil},
		{"? and # in the password", "postgres://rb:p?ss#word@127.0.0.1:5432/rb", nil},
		{"colon in the password", "postgres://rb:p:ss@127.0.0.1:5432/rb", nil},
		{"@ in a query value", "postgres://rb:pw@127.0.0.1:5432/rb?application_name=me@host", nil},
		{"no user info, @ in a query value", "postgres://127.0.0.1/rb?application_name=me@host", nil},
		{"encoded @ in the database", "postgres://rb:pw@127.0.0.1/r%40b", nil},
		{"several hosts", "postgres://rb:pw@h1:5432,h2:5433/rb", nil},
		{"ipv6 host", "postgres://rb:pw@[::1]:5432/rb", nil},
		{"key=value", "host=127.0.0.1 port=5432 user=rb password=p@ss/word dbname=rb", nil},
		{"key=value quoted", "host=127.0.0.1 user=rb password='p@ss word' dbname=rb", nil},

		{"unencoded @ and /", "postgres://rb:p@ss/word@127.0.0.1:5432/rb", errDSNUnencoded},
		{"unencoded @", "postgres://rb:p@ss@127.0.0.1:5432/rb", errDSNUnencoded},
		{"unencoded /", "postgres://rb:12/word@127.0.0.1:5432/rb", errDSNUnencoded},
		{"unencoded @ in the user", "postgres://r@b:pass@127.0.0.1/rb", errDSNUnencoded},
		{"unencoded @ in the database", "postgres://rb:pw@127.0.0.1/r@b", errDSNUnencoded},

		{"not a DSN", "notadsn", errDSNSyntax},
		{"unencoded space", "postgres://rb:p ss%zz@127.0.0.1/rb", errDSNSyntax},
		{"key=value with an unquoted space", "host=127.0.0.1 password=p ss word", errDSNSyntax},
		{"bad port", "postgres://rb:pw@127.0.0.1:word/rb", errDSNSyntax},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckDSN(tc.dsn)
			assert.Equal(t, tc.err, err)
			if err == nil {
				return
			}
			testkit.NoDSNPiece(t, err.Error(), tc.dsn)
		})
	}
}

// TestOpenRefusesWhatCheckRefuses: the queue opens a DSN only through the
// same check, so one accepted by an older config is never misread.
func TestOpenRefusesWhatCheckRefuses(t *testing.T) {
	rq := &Config{Driver: Postgres, Location: "postgres://rb:p@ss/word@127.0.0.1:1/rb",
		Settings: Settings{Workers: 1, MaxAttempts: 1, WorkerTimeout: DefaultWorkerTimeout}}
	_, err := openPostgres(t.Context(), rq, nil)
	if assert.Error(t, err) {
		assert.True(t, strings.HasPrefix(err.Error(), "queue postgres: the DSN's password must be URL-encoded"), err.Error())
	}
}

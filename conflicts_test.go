package receivebooking

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// validateLogged validates a Caddyfile site holding one receive_booking
// handler with the given lines, as `caddy validate` does, and returns the
// warnings logged and the error.
func validateLogged(t *testing.T, lines string) (string, error) {
	t.Helper()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "caddy.log")
	err := validateCaddyfile(t, fmt.Sprintf(`{
	admin off
	log {
		output file %s
		level WARN
	}
}
:18090 {
	receive_booking {
		target http://127.0.0.1:1/import
		%s
	}
}
`, logFile, strings.ReplaceAll(lines, "DB", filepath.Join(dir, "q.sqlite3"))))
	logged, _ := os.ReadFile(logFile)
	return string(logged), err
}

// TestContradictions: settings that contradict each other are refused
// (when the handler would not do what they say) or logged (when one is
// ignored), by `caddy validate`, with what to change.
func TestContradictions(t *testing.T) {
	cases := []struct {
		name, lines string
		err, warn   string // substrings; "" for none
	}{
		{"defaults", "secret k\nqueue sqlite DB", "", ""},
		{"auto: timeout reaches worker_timeout", "secret k\nqueue sqlite DB\ntimeout 30s\nworker_timeout 30s",
			"timeout (30s) must be shorter than worker_timeout (30s) in mode auto", ""},
		{"async: timeout only bounds the record", "secret k\nqueue sqlite DB\nmode async\ntimeout 30s\nworker_timeout 10s", "", ""},
		{"auto: coalesce_window reaches timeout", "secret k\nqueue sqlite DB\ncoalesce_window 12s",
			"coalesce_window (12s) must be shorter than timeout (12s) in mode auto", ""},
		{"auto: both", "secret k\nqueue sqlite DB\ntimeout 20s\ncoalesce_window 25s\nworker_timeout 15s",
			"worker_timeout (15s) in mode auto: a sender would be kept waiting for a sync that a worker has given up on; " +
				"lower timeout, or raise worker_timeout above import-bookings' own limit; coalesce_window (25s)", ""},
		{"async: coalesce_window past timeout", "secret k\nqueue sqlite DB\nmode async\ncoalesce_window 30s", "", ""},
		{"sqlite: max_in_flight above workers", "secret k\nqueue sqlite DB\nworkers 2\nmax_in_flight 5", "",
			"max_in_flight (5) has no effect above workers (2) on SQLite"},
		{"sqlite: max_in_flight below workers", "secret k\nqueue sqlite DB\nworkers 4\nmax_in_flight 2", "", ""},
		{"postgres: max_in_flight above workers", "secret k\nqueue postgres postgres://rb:pw@127.0.0.1:1/rb\nworkers 2\nmax_in_flight 5", "", ""},
		{"no queue: coalesce_window", "secret k\ncoalesce_window 2s", "", "coalesce_window has no effect without a queue"},
		{"no queue: route", "secret k\nroute other", "", "route has no effect without a queue"},
		{"auth key with signing secrets", "secret k\nsigning_secret " + testSigningSecret + "\nauth key", "",
			"auth key: the signing secrets are never checked"},
		{"tolerance without signatures", "secret k\ntolerance 1m", "", "tolerance has no effect without signatures"},
		{"auth signature with keys", "secret k\nsigning_secret " + testSigningSecret + "\nauth signature", "",
			"auth signature: the API keys are never checked"},
		{"auth both", "secret k\nsigning_secret " + testSigningSecret + "\ntolerance 1m", "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			logged, err := validateLogged(t, tc.lines)
			if tc.err == "" {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tc.err)
			}
			if tc.warn == "" {
				assert.NotContains(t, logged, "receive_booking", "no warning")
			} else {
				assert.Contains(t, logged, tc.warn)
			}
		})
	}
}

package receivebooking

// `caddy validate` through the built binary: configuration mistakes are
// refused before anything runs, without connecting to anything, and the
// refusal quotes no piece of a DSN.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// caddyValidate runs `caddy validate` on a site holding the given
// receive_booking lines, with env added to the environment, and returns
// its output and exit code.
func caddyValidate(t *testing.T, env []string, lines ...string) (string, int) {
	t.Helper()
	dir := t.TempDir()
	config := fmt.Sprintf("{\n\tadmin off\n}\nhttp://127.0.0.1:%d {\n\treceive_booking {\n\t\tsecret %s\n\t\ttarget %s\n\t\t%s\n\t}\n}\n",
		freePort(t), e2eSecret, testkit.ClosedPortURL(t), strings.Join(lines, "\n\t\t"))
	file := filepath.Join(dir, "Caddyfile")
	require.NoError(t, os.WriteFile(file, []byte(config), 0o600))
	cmd := exec.Command(caddyBinary(t), "validate", "--config", file, "--adapter", "caddyfile")
	cmd.Env = append(os.Environ(), env...)
	return runExit(t, cmd)
}

func TestValidateRefusesBadDSNs(t *testing.T) {
	// Nothing listens there: validating never connects.
	closed := strings.TrimPrefix(testkit.ClosedPortURL(t), "http://")
	unencoded := "postgres://rb:p@ss/word@" + closed + "/rb"
	cases := []struct {
		name, dsn, env, says string
	}{
		{"not a DSN", "notadsn", "", "queue postgres: the DSN is not a valid connection string"},
		{"unencoded password", unencoded, "", "queue postgres: the DSN's password must be URL-encoded"},
		{"unencoded password from the environment", "{env.RB_TEST_DSN}", unencoded,
			"queue postgres: the DSN's password must be URL-encoded"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, code := caddyValidate(t, []string{"RB_TEST_DSN=" + tc.env}, "queue postgres "+tc.dsn)
			assert.NotEqual(t, 0, code, "refused: %s", out)
			assert.Contains(t, out, tc.says)
			dsn := tc.dsn
			if tc.env != "" {
				dsn = tc.env
			}
			// Only the DSN's own pieces (user, password, database) are
			// looked for: its address's digits could turn up in a log
			// line's timestamp.
			testkit.NoDSNPiece(t, out, strings.ReplaceAll(dsn, closed, ""))
			t.Logf("caddy validate (exit %d):\n%s", code, out)
		})
	}

	out, code := caddyValidate(t, nil, "queue postgres postgres://rb:p%40ss%2Fword@"+closed+"/rb")
	assert.Equal(t, 0, code, "an encoded password is valid, and nothing is connected to: %s", out)
	assert.Contains(t, out, "Valid configuration")
}

func TestValidateRefusesContradictions(t *testing.T) {
	db := filepath.Join(t.TempDir(), "q.sqlite3")
	out, code := caddyValidate(t, nil, "queue sqlite "+db, "timeout 30s", "worker_timeout 20s")
	assert.NotEqual(t, 0, code, "refused: %s", out)
	assert.Contains(t, out, "timeout (30s) must be shorter than worker_timeout (20s) in mode auto")

	out, code = caddyValidate(t, nil, "queue sqlite "+db, "workers 2", "max_in_flight 4")
	assert.Equal(t, 0, code, "a setting without effect is only a warning: %s", out)
	assert.Contains(t, out, "max_in_flight (4) has no effect above workers (2) on SQLite")
}

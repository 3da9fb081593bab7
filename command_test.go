package receivebooking

// `caddy receive-booking …` against a running binary: each command's output
// and exit code.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// runCLI runs `caddy receive-booking args… --address <admin>` and returns
// its output and exit code.
func runCLI(t *testing.T, p *caddyProcess, args ...string) (string, int) {
	t.Helper()
	args = append([]string{"receive-booking"}, args...)
	args = append(args, "--address", strings.TrimPrefix(p.admin, "http://"))
	return runExit(t, exec.Command(caddyBinary(t), args...))
}

// runExit runs cmd and returns its output (stdout and stderr) and exit
// code; a command that cannot run fails the test.
func runExit(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return string(out), exit.ExitCode()
	}
	require.NoError(t, err)
	return string(out), 0
}

func TestCommands(t *testing.T) {
	stand := testkit.NewStandIn(t)
	stand.Answer(func(c *testkit.Call) (int, string) {
		if c.Booking == "cli-ok" {
			return 200, testkit.Envelope(c, "applied")
		}
		return 200, testkit.Envelope(c, "not_found")
	})
	p := startQueued(t, stand.Target())
	status, _, _ := sendOne(http.DefaultClient, p.url, "cli-ok")
	require.Equal(t, 200, status)
	// A sync that ends for good is still a recorded webhook: 200, not
	// "success", with the outcome and the job to look at.
	status, body, _ := sendOne(http.DefaultClient, p.url, "cli-gone")
	require.Equal(t, 200, status, "%v", body)
	assert.Equal(t, true, body["accepted"], "%v", body)
	assert.NotContains(t, body, "success")
	assert.Equal(t, "not_found", body["outcome"])
	assert.Contains(t, body["sync_error"], "outcome not_found")
	gone := int64(body["job_id"].(float64))
	require.Eventually(t, func() bool {
		out, _ := runCLI(t, p, "jobs", "--state", "cancelled")
		return strings.Contains(out, "cli-gone")
	}, 10*time.Second, 100*time.Millisecond)

	out, code := runCLI(t, p, "jobs", "--state", "cancelled")
	assert.Equal(t, 0, code)
	assert.Regexp(t, `(?m)^ID\s+STATE\s+BOOKING\s+ORGANIZATION\s+ATTEMPTS\s+NEXT RUN\s+LAST ERROR$`, out)
	assert.Regexp(t, fmt.Sprintf(`(?m)^%d\s+cancelled\s+cli-gone\s+org-1\s+1/10\s+-\s+JobCancelError: upstream status 200: outcome not_found`, gone), out)
	t.Logf("CLI jobs --state cancelled:\n%s", out)

	out, code = runCLI(t, p, "jobs", "--state", "completed", "--booking", "cli-ok", "--json")
	assert.Equal(t, 0, code)
	var listed struct {
		Jobs []map[string]any `json:"jobs"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &listed), out)
	require.Len(t, listed.Jobs, 1)
	assert.Equal(t, "cli-ok", listed.Jobs[0]["booking_key"])

	out, code = runCLI(t, p, "job", fmt.Sprint(gone))
	assert.Equal(t, 0, code)
	assert.Regexp(t, `(?m)^state\s+cancelled$`, out)
	assert.Regexp(t, `(?m)^attempt 1\s+\S+\s+JobCancelError`, out)

	out, code = runCLI(t, p, "job", "999999")
	assert.Equal(t, exitNotFound, code, out)

	out, code = runCLI(t, p, "stats")
	assert.Equal(t, 0, code)
	assert.Regexp(t, `(?m)^cancelled\s+1$`, out)
	assert.Regexp(t, `(?m)^completed\s+1$`, out)

	out, code = runCLI(t, p, "health")
	assert.Equal(t, 0, code, out)
	assert.Regexp(t, `(?m)^status\s+ok$`, out)
	out, code = runCLI(t, p, "health", "--json")
	assert.Equal(t, 0, code, out)
	assert.Contains(t, out, `"status":"ok"`)

	stand.Answer(func(c *testkit.Call) (int, string) { return 200, testkit.Envelope(c, "applied") })
	out, code = runCLI(t, p, "retry", fmt.Sprint(gone))
	assert.Equal(t, 0, code, out)
	assert.Regexp(t, fmt.Sprintf(`(?m)^job_id\s+%d$`, gone), out)
	require.Eventually(t, func() bool {
		out, _ := runCLI(t, p, "job", fmt.Sprint(gone))
		return regexp.MustCompile(`(?m)^state\s+completed$`).MatchString(out)
	}, 10*time.Second, 100*time.Millisecond, "the replayed job syncs")

	out, code = runCLI(t, p, "retry", "--state", "cancelled")
	assert.Equal(t, 0, code, out)
	assert.Regexp(t, `(?m)^replayed\s+0$`, out)

	out, code = runCLI(t, p, "delete", fmt.Sprint(gone))
	assert.Equal(t, 0, code, out)
	assert.Regexp(t, `(?m)^deleted\s+true$`, out)

	out, code = runCLI(t, p, "frobnicate")
	assert.Equal(t, exitUsage, code, out)
	out, code = runCLI(t, p, "retry", "--state", "completed")
	assert.Equal(t, exitFailed, code, out)
	assert.Contains(t, out, "state: expected discarded, cancelled or retryable")

	// A queue that cannot open: unhealthy, exit code 3, with the reason.
	badDir := t.TempDir()
	bad := startCaddy(t, t.TempDir(), fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		queue sqlite %s
	}`, e2eSecret, stand.Target(), badDir))
	out, code = runCLI(t, bad, "health")
	assert.Equal(t, exitUnhealthy, code, out)
	assert.Regexp(t, `(?m)^status\s+unhealthy$`, out)
	assert.Contains(t, out, "queue unavailable")
	t.Logf("CLI health of a queue that cannot open (exit %d):\n%s", code, out)

	cmd := exec.Command(caddyBinary(t), "receive-booking", "health", "--address", "127.0.0.1:1")
	outB, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.True(t, errors.As(err, &exit), string(outB))
	assert.Equal(t, exitFailed, exit.ExitCode(), "unreachable admin API: %s", outB)
}

package receivebooking

// `caddy receive-booking …` against a running binary: each command's output
// and exit code.

import (
	"bytes"
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
// its output (stdout and stderr) and exit code.
func runCLI(t *testing.T, p *caddyProcess, args ...string) (string, int) {
	t.Helper()
	stdout, stderr, code := runCLIAt(t, strings.TrimPrefix(p.admin, "http://"), args...)
	return stdout + stderr, code
}

// runCLIAt runs `caddy receive-booking args… --address admin` and returns
// its stdout, its stderr and its exit code.
func runCLIAt(t *testing.T, admin string, args ...string) (string, string, int) {
	t.Helper()
	args = append([]string{"receive-booking", "--address", admin}, args...)
	return runSplit(t, exec.Command(caddyBinary(t), args...))
}

// runExit runs cmd and returns its output (stdout, then stderr) and exit
// code; a command that cannot run fails the test.
func runExit(t *testing.T, cmd *exec.Cmd) (string, int) {
	t.Helper()
	stdout, stderr, code := runSplit(t, cmd)
	return stdout + stderr, code
}

// runSplit runs cmd and returns its stdout, its stderr and its exit code.
func runSplit(t *testing.T, cmd *exec.Cmd) (string, string, int) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		code = exit.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return stdout.String(), stderr.String(), code
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
	assert.Regexp(t, fmt.Sprintf(`(?m)^%d\s+cancelled\s+cli-gone\s+org-1\s+1/10\s+-\s+upstream status 200: outcome not_found`, gone), out)
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
	assert.Regexp(t, `(?m)^attempt 1\s+\S+\s+upstream status 200: outcome not_found: `, out)

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
}

// TestCommandExitCodes: every exit code of the help, against running
// binaries (a healthy one, one whose queue cannot open) and an address
// nobody answers. An error is one JSON log line on stderr, as Caddy's own
// commands print theirs, and nothing on stdout.
func TestCommandExitCodes(t *testing.T) {
	stand := testkit.NewStandIn(t)
	stand.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		switch c.Booking {
		case "exit-gone":
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "not_found"))
		case "exit-pending": // import-bookings down: retried later
			bootFailure(w, r, c)
		default:
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
		}
	})
	p := startQueued(t, stand.Target())
	for _, b := range []string{"exit-ok", "exit-gone", "exit-pending"} {
		status, body, _ := sendOne(http.DefaultClient, p.url, b)
		require.Contains(t, []int{200, 202}, status, "%s: %v", b, body)
	}
	idOf := func(booking string) string {
		var id string
		require.Eventually(t, func() bool {
			j := jobOf(t, p, booking)
			if j != nil {
				id = fmt.Sprint(num(j["id"]))
			}
			return j != nil
		}, 10*time.Second, 50*time.Millisecond)
		return id
	}
	ok, gone := idOf("exit-ok"), idOf("exit-gone")
	// A queue that cannot open (its file is a directory): unhealthy.
	bad := startCaddy(t, t.TempDir(), fmt.Sprintf(`receive_booking {
		secret %s
		target %s
		queue sqlite %s
	}`, e2eSecret, stand.Target(), t.TempDir()))
	up, down := strings.TrimPrefix(p.admin, "http://"), strings.TrimPrefix(bad.admin, "http://")
	const nobody = "127.0.0.1:1"

	for _, tc := range []struct {
		admin string
		args  []string
		code  int
		out   string // a regexp stdout matches
		err   string // what stderr's error line says
	}{
		// 0: done.
		{up, []string{"jobs"}, exitOK, `(?m)^\d+\s+\S+\s+exit-pending\s`, ""},
		{up, []string{"jobs", "--state", "cancelled", "--booking", "exit-gone"}, exitOK, `(?m)^` + gone + `\s+cancelled\s+exit-gone`, ""},
		{up, []string{"job", gone}, exitOK, `(?m)^state\s+cancelled$`, ""},
		{up, []string{"booking", "exit-gone"}, exitOK, `(?m)^state\s+cancelled$`, ""},
		{up, []string{"stats"}, exitOK, `(?m)^cancelled\s+1$`, ""},
		{up, []string{"health"}, exitOK, `(?m)^status\s+ok$`, ""},
		{up, []string{"health", "--max-age", "1h", "--json"}, exitOK, `"status":"ok"`, ""},
		{up, []string{"retry", "--state", "discarded"}, exitOK, `(?m)^replayed\s+0$`, ""},

		// 1: the admin API unreachable (health too: it could not ask),
		// or an error answer.
		{nobody, []string{"health"}, exitFailed, `^$`, "is Caddy running"},
		{nobody, []string{"stats"}, exitFailed, `^$`, "is Caddy running"},
		{up, []string{"retry", ok}, exitFailed, `^$`, "the admin API answered 409: job "},

		// 2: usage.
		{up, nil, exitUsage, `^$`, "say what to do"},
		{up, []string{"frobnicate"}, exitUsage, `^$`, `unknown command "frobnicate"`},
		{up, []string{"jobs", "--state", "bogus"}, exitUsage, `^$`, "state: expected one or more"},
		{up, []string{"jobs", "--state", "pending,bogus"}, exitUsage, `^$`, "state: expected one or more"},
		{up, []string{"retry", "--state", "completed"}, exitUsage, `^$`, "state: expected discarded, cancelled or retryable"},
		{up, []string{"retry", "--state", "bogus"}, exitUsage, `^$`, "state: expected one or more"},
		{up, []string{"stats", "--queue", "nope"}, exitUsage, `^$`, "--queue nope: no such queue"},
		{up, []string{"health", "--queue", "nope"}, exitUsage, `^$`, "--queue nope: no such queue"},
		{up, []string{"job", gone, "--queue", "nope"}, exitUsage, `^$`, "--queue nope: no such queue"},
		{up, []string{"job"}, exitUsage, `^$`, "job takes one job id"},
		{up, []string{"delete"}, exitUsage, `^$`, "delete takes one job id"},
		{up, []string{"job", "1", "2"}, exitUsage, `^$`, "job takes one job id"},
		{up, []string{"job", "abc"}, exitUsage, `^$`, "job id: expected a positive whole number"},
		{up, []string{"delete", "0"}, exitUsage, `^$`, "job id: expected a positive whole number"},
		{up, []string{"job", "-1"}, exitUsage, `^$`, "unknown shorthand flag"},
		{up, []string{"retry"}, exitUsage, `^$`, "retry takes a job id, or --state"},
		{up, []string{"retry", gone, "--state", "discarded"}, exitUsage, `^$`, "not both"},
		{up, []string{"retry", gone, "--booking", "exit-gone"}, exitUsage, `^$`, "not both"},
		{up, []string{"stats", "extra"}, exitUsage, `^$`, "stats takes no arguments"},
		{up, []string{"stats", "--booking", "exit-gone"}, exitUsage, `^$`, "stats does not take --booking"},
		{up, []string{"job", gone, "--state", "cancelled"}, exitUsage, `^$`, "job does not take --state"},
		{up, []string{"jobs", "--max-age", "1m"}, exitUsage, `^$`, "jobs does not take --max-age"},
		{up, []string{"booking"}, exitUsage, `^$`, "booking takes one booking id"},
		{up, []string{"booking", "a", "b"}, exitUsage, `^$`, "booking takes one booking id"},
		{up, []string{"jobs", "--organization", "org-1"}, exitUsage, `^$`, "jobs does not take --organization"},
		{up, []string{"health", "--max-age", "soon"}, exitUsage, `^$`, "--max-age: expected a positive duration"},
		{up, []string{"health", "--max-age", "0s"}, exitUsage, `^$`, "--max-age: expected a positive duration"},
		{up, []string{"health", "--frobnicate"}, exitUsage, `^$`, "unknown flag: --frobnicate"},
		{up, []string{"health", "--json=maybe"}, exitUsage, `^$`, `invalid argument "maybe"`},
		{up, []string{"health", "--max-age"}, exitUsage, `^$`, "flag needs an argument"},
		{nobody, []string{"jobs", "--state", "bogus"}, exitUsage, `^$`, "state: expected one or more"},

		// 3: Caddy answered "unhealthy".
		{down, []string{"health"}, exitUnhealthy, `(?ms)^status\s+unhealthy$.*queue unavailable`, ""},
		{down, []string{"health", "--json"}, exitUnhealthy, `"status":"unhealthy"`, ""},
		{up, []string{"health", "--max-age", "1ms"}, exitUnhealthy, `(?m)^reason\s+oldest pending job is .* old \(max_age 1ms\)$`, ""},

		// 4: no such job.
		{up, []string{"job", "999999"}, exitNotFound, `^$`, "no such job"},
		{up, []string{"delete", "999999"}, exitNotFound, `^$`, "no such job"},
		{up, []string{"retry", "999999"}, exitNotFound, `^$`, "no such job"},
		{up, []string{"booking", "no-such-booking"}, exitNotFound, `^$`, "no such booking"},
		{up, []string{"booking", "exit-gone", "--organization", "org-2"}, exitNotFound, `^$`, "no such booking"},
	} {
		name := strings.Join(tc.args, " ")
		if tc.admin == nobody {
			name += " (admin API unreachable)"
		} else if tc.admin == down {
			name += " (queue cannot open)"
		}
		t.Run(name, func(t *testing.T) {
			stdout, stderr, code := runCLIAt(t, tc.admin, tc.args...)
			assert.Equal(t, tc.code, code, "exit code; stdout %q, stderr %q", stdout, stderr)
			assert.Regexp(t, tc.out, stdout, "stdout")
			if tc.err == "" {
				assert.Empty(t, stderr, "stderr")
				return
			}
			var line struct{ Level, Msg string }
			require.NoError(t, json.Unmarshal([]byte(stderr), &line), "one JSON log line, as Caddy prints errors: %q", stderr)
			assert.Equal(t, "error", line.Level)
			assert.Contains(t, line.Msg, tc.err)
			t.Logf("exit %d: %s", code, line.Msg)
		})
	}

	// The help says the same.
	stdout, _, code := runCLIAt(t, nobody, "--help")
	assert.Equal(t, exitOK, code)
	for _, s := range []string{"--max-age", "1  the admin API was unreachable (health included", "2  usage", "3  unhealthy", "4  no such job, no such booking, or no such pause", "pause    stops syncing", "resume   ends the pause", "pauses   the pauses in effect", "booking  a booking's timeline"} {
		assert.Contains(t, stdout, s)
	}
}

package receivebooking

// `caddy receive-booking …`: the queue of a running Caddy from the command
// line, through its admin API (found as `caddy reload` finds it).

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// Exit codes of `caddy receive-booking`.
const (
	exitOK        = 0
	exitFailed    = 1 // the admin API could not be reached, or answered an error
	exitUsage     = 2
	exitUnhealthy = 3 // health: webhooks cannot be recorded, or a job is too old
	exitNotFound  = 4 // no such job
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "receive-booking",
		Usage: "jobs [--state <states>] [--booking <id>] | job <id> | retry <id> | retry --state <state> [--booking <id>] | delete <id> | stats | health [--json] [--address <admin>] [--config <file> [--adapter <name>]]",
		Short: "Shows and steers the receive_booking queue of a running Caddy",
		Long: `
Talks to the admin API of a running Caddy (found as "caddy reload" finds it:
--address, else the admin address of --config or the Caddyfile in the
current directory, else localhost:2019).

  jobs     lists jobs (default state: pending,discarded,cancelled; states
           are pending, available, scheduled, retryable, running,
           discarded, cancelled, completed, comma-separated)
  job      one job with its attempt history
  retry    replays a job now, or every job in a failed state (discarded,
           cancelled or retryable); a replay gets a fresh attempt budget
  delete   drops a job
  stats    job counts by state, oldest pending job, last successful sync
  health   whether webhooks can be recorded and nothing waits too long

A readable table by default; --json prints the admin API's JSON. Exit
codes: 0 done, 1 the admin API was unreachable or answered an error, 2
usage, 3 unhealthy, 4 no such job.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("address", "", "The address of the admin API")
			cmd.Flags().StringP("config", "c", "", "Configuration file, to find the admin API's address")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().String("state", "", "Job states, comma-separated (jobs, retry)")
			cmd.Flags().String("booking", "", "Only this booking_id (jobs, retry)")
			cmd.Flags().String("queue", "", "The queue's key, when several are configured")
			cmd.Flags().Bool("json", false, "Print JSON")
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdReceiveBooking)
		},
	})
}

// cliError carries an exit code.
type cliError struct {
	code int
	err  error
}

func (e cliError) Error() string { return e.err.Error() }

func cmdReceiveBooking(fl caddycmd.Flags) (int, error) {
	code, err := runReceiveBooking(fl, fl.Args(), os.Stdout)
	var ce cliError
	if errors.As(err, &ce) {
		return ce.code, ce.err
	}
	if err != nil && code == exitOK {
		code = exitFailed
	}
	return code, err
}

func runReceiveBooking(fl caddycmd.Flags, args []string, out io.Writer) (int, error) {
	usage := func(msg string) (int, error) { return exitUsage, cliError{exitUsage, errors.New(msg)} }
	if len(args) == 0 {
		return usage("say what to do: jobs, job, retry, delete, stats or health")
	}
	q := url.Values{}
	if v := fl.String("queue"); v != "" {
		q.Set("queue", v)
	}
	if v := fl.String("booking"); v != "" {
		q.Set("booking_id", v)
	}
	var method, path string
	switch verb, rest := args[0], args[1:]; {
	case verb == "jobs" && len(rest) == 0:
		method, path = http.MethodGet, "/receive_booking/jobs"
		q.Set("state", cmp(fl.String("state"), "pending,discarded,cancelled"))
		q.Set("limit", "500")
	case (verb == "job" || verb == "delete") && len(rest) == 1:
		method, path = http.MethodGet, "/receive_booking/jobs/"+url.PathEscape(rest[0])
		if verb == "delete" {
			method = http.MethodDelete
		}
	case verb == "retry" && len(rest) == 1 && fl.String("state") == "":
		method, path = http.MethodPost, "/receive_booking/jobs/"+url.PathEscape(rest[0])+"/retry"
	case verb == "retry" && len(rest) == 0 && fl.String("state") != "":
		method, path = http.MethodPost, "/receive_booking/retry"
		q.Set("state", fl.String("state"))
	case verb == "stats" && len(rest) == 0:
		method, path = http.MethodGet, "/receive_booking/stats"
	case verb == "health" && len(rest) == 0:
		method, path = http.MethodGet, "/receive_booking/health"
	default:
		return usage(fmt.Sprintf("unknown or incomplete command %q: see caddy help receive-booking", strings.Join(args, " ")))
	}
	adminAddr, err := adminAddress(fl)
	if err != nil {
		return exitFailed, err
	}
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	resp, err := caddycmd.AdminAPIRequest(adminAddr, method, path, nil, nil)
	code := exitOK
	var body []byte
	switch {
	case err != nil && args[0] == "health" && exitCodeOf(err) == exitUnhealthy:
		// An unhealthy answer is an answer: print it.
		_, after, _ := strings.Cut(err.Error(), "HTTP 503: ")
		body, code = []byte(after), exitUnhealthy
	case err != nil:
		// AdminAPIRequest turns an error answer into an error, with what
		// the API said.
		return exitCodeOf(err), err
	default:
		defer resp.Body.Close()
		if body, err = io.ReadAll(io.LimitReader(resp.Body, 64<<20)); err != nil {
			return exitFailed, err
		}
	}
	if fl.Bool("json") {
		_, err := out.Write(body)
		return code, err
	}
	return code, printAnswer(out, args[0], body)
}

// exitCodeOf maps an admin API error to an exit code.
func exitCodeOf(err error) int {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "HTTP 404"), strings.Contains(msg, "no such job"):
		return exitNotFound
	case strings.Contains(msg, `"status":"unhealthy"`):
		return exitUnhealthy
	}
	return exitFailed
}

func cmp(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// adminAddress finds the admin API as `caddy reload` does.
func adminAddress(fl caddycmd.Flags) (string, error) {
	if a := fl.String("address"); a != "" {
		return a, nil
	}
	config, configFile, _, err := caddycmd.LoadConfig(fl.String("config"), fl.String("adapter"))
	if err != nil {
		return "", err
	}
	return caddycmd.DetermineAdminAPIAddress("", config, configFile, fl.String("adapter"))
}

// printAnswer prints an admin API answer for people.
func printAnswer(out io.Writer, verb string, body []byte) error {
	var v map[string]any
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("the admin API's answer is not JSON: %w", err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	defer tw.Flush()
	switch verb {
	case "jobs":
		jobs, _ := v["jobs"].([]any)
		fmt.Fprintln(tw, "ID\tSTATE\tBOOKING\tORGANIZATION\tATTEMPTS\tNEXT RUN\tLAST ERROR")
		for _, j := range jobs {
			job := j.(map[string]any)
			fmt.Fprintf(tw, "%v\t%v\t%v\t%v\t%v/%v\t%s\t%s\n", num(job["id"]), job["state"], job["booking_key"],
				str(job["organization_id"]), num(job["attempts"]), num(job["max_attempts"]), nextRun(job), cut(str(job["last_error"]), 80))
		}
		if len(jobs) == 0 {
			fmt.Fprintln(tw, "(none)")
		}
	case "job", "delete":
		job := v
		if j, ok := v["job"].(map[string]any); ok {
			job = j
			fmt.Fprintln(tw, "deleted\ttrue")
		}
		for _, k := range []string{"id", "state", "booking_key", "organization_id", "event_type", "attempts", "max_attempts",
			"created_at", "scheduled_at", "attempted_at", "finalized_at", "last_error"} {
			if val, ok := job[k]; ok && val != nil && val != "" {
				fmt.Fprintf(tw, "%s\t%v\n", k, num(val))
			}
		}
		if errs, ok := job["errors"].([]any); ok {
			for _, e := range errs {
				a := e.(map[string]any)
				fmt.Fprintf(tw, "attempt %v\t%v  %v\n", num(a["attempt"]), a["at"], a["error"])
			}
		}
	case "stats", "health":
		if s, ok := v["status"]; ok {
			fmt.Fprintf(tw, "status\t%v\n", s)
		}
		if r, ok := v["reason"]; ok {
			fmt.Fprintf(tw, "reason\t%v\n", r)
		}
		if counts, ok := v["counts"].(map[string]any); ok {
			for _, st := range []string{"available", "scheduled", "retryable", "running", "discarded", "cancelled", "completed"} {
				fmt.Fprintf(tw, "%s\t%v\n", st, num(counts[st]))
			}
		}
		for _, k := range []string{"oldest_pending_seconds", "last_sync_at", "queue"} {
			if val, ok := v[k]; ok {
				fmt.Fprintf(tw, "%s\t%v\n", k, num(val))
			}
		}
	default: // retry
		for _, k := range []string{"job_id", "coalesced", "replayed", "skipped"} {
			if val, ok := v[k]; ok {
				fmt.Fprintf(tw, "%s\t%v\n", k, num(val))
			}
		}
	}
	return nil
}

// num prints JSON numbers without an exponent.
func num(v any) any {
	if f, ok := v.(float64); ok && f == float64(int64(f)) {
		return int64(f)
	}
	return v
}

// nextRun is when a job that is not done will run (its scheduled time),
// or "-".
func nextRun(job map[string]any) string {
	switch job["state"] {
	case "available", "scheduled", "retryable":
		if t, err := time.Parse(time.RFC3339Nano, str(job["scheduled_at"])); err == nil {
			return t.UTC().Format("15:04:05") + " UTC"
		}
	}
	return "-"
}

func str(v any) string {
	if v == nil {
		return ""
	}
	return fmt.Sprint(v)
}

func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

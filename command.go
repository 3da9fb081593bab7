package receivebooking

// `caddy receive-booking …`: the queue of a running Caddy from the command
// line, through its admin API (found as `caddy reload` finds it).

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// Exit codes of `caddy receive-booking`.
const (
	exitOK = 0
	// exitFailed: the admin API could not be reached, or answered an
	// error not listed below. health too: it could not ask, which is not
	// the same as Caddy answering "unhealthy" (a probe that only needs
	// non-zero fails either way).
	exitFailed = 1
	// exitUsage: an unknown command or flag, a missing or malformed
	// argument, a flag the command does not take, an unknown state or
	// queue (a mistyped --queue must not pass for "no such job").
	exitUsage     = 2
	exitUnhealthy = 3 // health: webhooks cannot be recorded, or a job waits longer than --max-age
	exitNotFound  = 4 // no such job, booking or pause
)

// verb is a command: its synopsis, and the flags it takes besides the
// common ones (--queue, --json, --address, --config, --adapter).
type verb struct {
	name, synopsis string
	flags          []string
}

// verbs are the commands, in the help's order.
var verbs = []verb{
	{"jobs", "jobs [--state <states>] [--booking <id>]", []string{"state", "booking"}},
	{"job", "job <id>", nil},
	{"booking", "booking <booking_id> [--organization <id>]", []string{"organization"}},
	{"retry", "retry <id> | retry --state <states> [--booking <id>]", []string{"state", "booking"}},
	{"delete", "delete <id>", nil},
	{"stats", "stats", nil},
	{"health", "health [--max-age <duration>]", []string{"max-age"}},
	{"pause", "pause [--route <name>] [--organization <id>] [--reason <text>]", []string{"route", "organization", "reason"}},
	{"resume", "resume [--route <name>] [--organization <id>]", []string{"route", "organization"}},
	{"pauses", "pauses", nil},
}

// verbFlags are the flags only some commands take.
var verbFlags = []string{"state", "booking", "max-age", "organization", "route", "reason"}

func init() {
	synopses := make([]string, len(verbs))
	for i, v := range verbs {
		synopses[i] = v.synopsis
	}
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "receive-booking",
		Usage: strings.Join(synopses, " | ") + " [--queue <key>] [--json] [--address <admin> | --config <file> [--adapter <name>]]",
		Short: "Shows and steers the receive_booking queue of a running Caddy",
		Long: `
Talks to the admin API of a running Caddy (found as "caddy reload" finds it:
--address, else the admin address of --config or the Caddyfile in the
current directory, else localhost:2019).

  jobs     lists jobs (default state: pending,discarded,cancelled; states
           are pending, available, scheduled, retryable, running,
           discarded, cancelled, completed, comma-separated)
  job      one job with its attempt history
  booking  a booking's timeline, newest first: every webhook recorded for
           it (when, event type, which key), the answer it got, every
           attempt (duration, upstream status, outcome, next run) and
           replay, and the state of its jobs; --organization when the id
           is known in several organizations
  retry    replays a job now, or every job in a failed state (discarded,
           cancelled or retryable; --state, not with a job id); a replay
           gets a fresh attempt budget
  delete   drops a job
  stats    job counts by state, oldest pending job, last successful sync
  health   whether webhooks can be recorded and no job has waited longer
           than --max-age (default 5m)
  pause    stops syncing for --route, --organization, both, or (neither
           given) everything, on every instance sharing the queue, until
           resume; webhooks are still recorded and answered 202
  resume   ends the pause of exactly that --route and --organization;
           the syncs it held run at once, most urgent first
  pauses   the pauses in effect

--queue picks the queue by its key (see stats) when the config has
several. A readable table by default; --json prints the admin API's JSON.

Exit codes:
  0  done (health: healthy)
  1  the admin API was unreachable (health included: it could not ask)
     or answered an error
  2  usage: an unknown command or flag, a missing or malformed argument,
     an unknown state or queue
  3  unhealthy: Caddy answered that webhooks cannot be recorded, or a
     job waited longer than --max-age
  4  no such job, no such booking, or no such pause`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().String("address", "", "The address of the admin API")
			cmd.Flags().StringP("config", "c", "", "Configuration file, to find the admin API's address")
			cmd.Flags().StringP("adapter", "a", "", "Name of config adapter to apply")
			cmd.Flags().String("state", "", "Job states, comma-separated (jobs, retry)")
			cmd.Flags().String("booking", "", "Only this booking_id (jobs, retry --state)")
			cmd.Flags().String("max-age", "", "The longest a pending job may wait, e.g. 10m (health; default 5m)")
			cmd.Flags().String("organization", "", "The booking's organization (booking), the organization to pause or resume")
			cmd.Flags().String("route", "", "The route to pause or resume (pause, resume; default every route)")
			cmd.Flags().String("reason", "", "Why syncing is paused, shown by pauses and stats (pause)")
			cmd.Flags().String("queue", "", "The queue's key, when several are configured")
			cmd.Flags().Bool("json", false, "Print JSON")
			// Every error is logged as Caddy logs a command's errors
			// (WrapCommandFuncForCobra); without this cobra would add
			// "Error: exiting with status 3" under an unhealthy answer.
			cmd.SilenceErrors = true
			// A bad flag is a usage error too (cobra would exit 1).
			cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
				return caddycmd.WrapCommandFuncForCobra(func(caddycmd.Flags) (int, error) {
					return exitUsage, fmt.Errorf("%w: see caddy help receive-booking", err)
				})(c, nil)
			})
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdReceiveBooking)
		},
	})
}

func cmdReceiveBooking(fl caddycmd.Flags) (int, error) {
	return runReceiveBooking(fl, fl.Args(), os.Stdout)
}

func runReceiveBooking(fl caddycmd.Flags, args []string, out io.Writer) (int, error) {
	req, err := parseCommand(fl, args)
	if err != nil {
		return exitUsage, fmt.Errorf("%w: see caddy help receive-booking", err)
	}
	adminAddr, err := adminAddress(fl)
	if err != nil {
		return exitFailed, err
	}
	resp, err := caddycmd.AdminAPIRequest(adminAddr, req.method, req.uri(), nil, nil)
	if err != nil && !errorAnswer.MatchString(err.Error()) {
		return exitFailed, fmt.Errorf("asking the admin API at %s (is Caddy running, with this admin address?): %w", adminAddr, err)
	}
	body, code, err := readAnswer(req, resp, err)
	if err != nil {
		return code, err
	}
	if fl.Bool("json") {
		_, err := out.Write(body)
		return code, err
	}
	return code, printAnswer(out, req.verb, body)
}

// request is what a command asks the admin API.
type request struct {
	verb, method, path string
	query              url.Values
}

func (r *request) uri() string {
	if len(r.query) == 0 {
		return r.path
	}
	return r.path + "?" + r.query.Encode()
}

// parseCommand checks the command line and makes its request, or says
// what is wrong with it (a usage error).
func parseCommand(fl caddycmd.Flags, args []string) (*request, error) {
	if len(args) == 0 {
		return nil, errors.New("say what to do: " + verbNames())
	}
	name, rest := args[0], args[1:]
	i := slices.IndexFunc(verbs, func(v verb) bool { return v.name == name })
	if i < 0 {
		return nil, fmt.Errorf("unknown command %q: expected %s", name, verbNames())
	}
	for _, flag := range verbFlags {
		if fl.Changed(flag) && !slices.Contains(verbs[i].flags, flag) {
			return nil, fmt.Errorf("%s does not take --%s (usage: %s)", name, flag, verbs[i].synopsis)
		}
	}
	req := &request{verb: name, method: http.MethodGet, query: url.Values{}}
	if v := fl.String("queue"); v != "" {
		req.query.Set("queue", v)
	}
	var err error
	switch name {
	case "jobs":
		err = req.jobs(fl, rest)
	case "retry":
		err = req.retry(fl, rest)
	case "health":
		err = req.health(fl, rest)
	case "stats":
		req.path, err = "/receive_booking/stats", noArgs(name, rest)
	case "booking":
		err = req.booking(fl, rest)
	case "pause", "resume":
		err = req.pauseRequest(fl, rest)
	case "pauses":
		req.path, err = "/receive_booking/pauses", noArgs(name, rest)
	default: // job, delete
		err = req.job(rest)
	}
	return req, err
}

func (r *request) jobs(fl caddycmd.Flags, rest []string) error {
	states := cmp.Or(fl.String("state"), "pending,discarded,cancelled")
	if _, err := parseStates(states); err != nil {
		return err
	}
	r.path = "/receive_booking/jobs"
	r.query.Set("state", states)
	r.query.Set("limit", "500")
	r.setBooking(fl)
	return noArgs(r.verb, rest)
}

func (r *request) retry(fl caddycmd.Flags, rest []string) error {
	r.method = http.MethodPost
	switch states := fl.String("state"); {
	case len(rest) > 0 && (states != "" || fl.String("booking") != ""):
		return errors.New("retry takes a job id, or --state <states> [--booking <id>], not both")
	case len(rest) > 0:
		return r.job(rest)
	case states == "":
		return errors.New("retry takes a job id, or --state <states> [--booking <id>]")
	default:
		parsed, err := parseStates(states)
		if err == nil {
			err = replayableOnly(parsed)
		}
		r.path = "/receive_booking/retry"
		r.query.Set("state", states)
		r.setBooking(fl)
		return err
	}
}

func (r *request) health(fl caddycmd.Flags, rest []string) error {
	r.path = "/receive_booking/health"
	if v := fl.String("max-age"); v != "" {
		if d, err := caddy.ParseDuration(v); err != nil || d <= 0 {
			return fmt.Errorf("--max-age: expected a positive duration, e.g. 10m, got %q", v)
		}
		r.query.Set("max_age", v)
	}
	return noArgs(r.verb, rest)
}

// job makes the request of a command on one job: job, delete or retry.
func (r *request) job(rest []string) error {
	if len(rest) != 1 {
		return fmt.Errorf("%s takes one job id", r.verb)
	}
	if id, err := strconv.ParseInt(rest[0], 10, 64); err != nil || id <= 0 {
		return fmt.Errorf("job id: expected a positive whole number, got %q", rest[0])
	}
	r.path = "/receive_booking/jobs/" + rest[0]
	switch r.verb {
	case "delete":
		r.method = http.MethodDelete
	case "retry":
		r.path += "/retry"
	}
	return nil
}

func (r *request) booking(fl caddycmd.Flags, rest []string) error {
	if len(rest) != 1 || rest[0] == "" {
		return errors.New("booking takes one booking id")
	}
	r.path = "/receive_booking/" + bookingsPath + url.PathEscape(rest[0])
	if v := fl.String("organization"); v != "" {
		r.query.Set("organization", v)
	}
	return nil
}

// verbNames lists the commands for a usage error.
func verbNames() string {
	names := make([]string, len(verbs))
	for i, v := range verbs {
		names[i] = v.name
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}

func (r *request) setBooking(fl caddycmd.Flags) {
	if v := fl.String("booking"); v != "" {
		r.query.Set("booking_id", v)
	}
}

func noArgs(verb string, rest []string) error {
	if len(rest) > 0 {
		return fmt.Errorf("%s takes no arguments, got %q", verb, strings.Join(rest, " "))
	}
	return nil
}

// errorAnswer matches the error AdminAPIRequest makes of an answer of 400
// or more: its status and body.
var errorAnswer = regexp.MustCompile(`^caddy responded with error: HTTP (\d{3}): `)

// readAnswer reads the admin API's answer to req: the body to print and
// the exit code it means. An error answer is an error, except health's
// "unhealthy" (503), which is printed.
func readAnswer(req *request, resp *http.Response, err error) ([]byte, int, error) {
	if err == nil {
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err != nil {
			return nil, exitFailed, err
		}
		return body, exitOK, nil
	}
	m := errorAnswer.FindStringSubmatchIndex(err.Error())
	if m == nil {
		return nil, exitFailed, err
	}
	status, _ := strconv.Atoi(err.Error()[m[2]:m[3]])
	body := []byte(err.Error()[m[1]:])
	var v struct{ Error, Status, Reason string }
	_ = json.Unmarshal(body, &v)
	// The admin API's own words, on one line: Caddy's error quotes the
	// body with its newline.
	err = fmt.Errorf("the admin API answered %d: %s", status, cmp.Or(v.Error, v.Reason, strings.TrimSpace(string(body))))
	switch {
	case v.Error == msgNoSuchQueue || req.verb == "health" && v.Reason == msgNoSuchQueue:
		return nil, exitUsage, fmt.Errorf("--queue %s: %s in the running config (stats names its queue)", req.query.Get("queue"), msgNoSuchQueue)
	case status == http.StatusBadRequest:
		return nil, exitUsage, err
	case status == http.StatusNotFound && (v.Error == msgNoSuchJob || v.Error == msgNoSuchBooking || v.Error == msgNoSuchPause):
		return nil, exitNotFound, err
	case req.verb == "health" && status == http.StatusServiceUnavailable && v.Status == "unhealthy":
		return body, exitUnhealthy, nil
	}
	return nil, exitFailed, err
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
	switch verb {
	case "booking":
		return printTimeline(out, body)
	case "pause", "resume", "pauses":
		printPauses(out, verb, v)
		return nil
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
			for _, st := range queue.States {
				fmt.Fprintf(tw, "%s\t%v\n", st, num(counts[st]))
			}
		}
		for _, k := range []string{"held", "oldest_pending_seconds", "last_sync_at", "queue"} {
			if val, ok := v[k]; ok {
				fmt.Fprintf(tw, "%s\t%v\n", k, num(val))
			}
		}
		if ps, ok := v["paused"].([]any); ok {
			for _, p := range ps {
				m := p.(map[string]any)
				fmt.Fprintf(tw, "paused\troute %s, organization %s, since %s: %s\n", cmp.Or(str(m["route"]), "*"),
					cmp.Or(str(m["organization_id"]), "*"), inSeconds(m["paused_at"]), cmp.Or(str(m["reason"]), "(no reason given)"))
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
	case queue.StateAvailable, queue.StateScheduled, queue.StateRetryable:
		if t, err := time.Parse(time.RFC3339Nano, str(job["scheduled_at"])); err == nil {
			return t.UTC().Format("15:04:05") + " UTC"
		}
	}
	return "-"
}

// inSeconds is a JSON time to the second, as a table shows it.
func inSeconds(v any) string {
	t, err := time.Parse(time.RFC3339Nano, str(v))
	if err != nil {
		return str(v)
	}
	return t.UTC().Format(time.RFC3339)
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

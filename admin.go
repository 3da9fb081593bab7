package receivebooking

// The admin API (admin.api.receive_booking) under Caddy's admin endpoint:
// list, inspect, replay and delete queued syncs, queue stats and health.
// It finds the running config's app per request.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"

	"github.com/caddyserver/caddy/v2"
)

// The admin API's answers for a queue or a job that does not exist (404;
// health says "unhealthy" with msgNoSuchQueue as its reason): the command
// tells them apart by these.
const (
	msgNoSuchQueue = "no such queue"
	msgNoSuchJob   = "no such job"
)

const (
	adminPrefix      = "/receive_booking/"
	defaultListLimit = 50
	maxListLimit     = 500
	defaultHealthAge = 5 * time.Minute
	// adminQueryTimeout bounds one database call of the admin API (one
	// query, one replay); a bulk replay makes many, each bounded.
	adminQueryTimeout = 15 * time.Second
)

func init() {
	caddy.RegisterModule(new(AdminAPI))
}

// AdminAPI is the operator's view of the durable queue, under Caddy's
// admin endpoint (so it has the admin endpoint's access controls: it
// listens on localhost by default). It lists failed deliveries, replays
// them, and answers health checks. Every answer is JSON; errors are
// caddy.APIError, which Caddy writes as {"error": "..."}.
//
// Caddy instantiates every admin.api.* module itself: it needs no config.
type AdminAPI struct {
	// engines lists the queues to serve; nil: the running config's
	// (tests set it to serve queues without a running Caddy).
	engines func() []*queue.Engine
}

// CaddyModule returns the Caddy module information.
func (*AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.receive_booking",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes: one prefix, routed by serve, so that
// every answer (405s and 404s included) is JSON.
func (a *AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

func (a *AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	parts := strings.Split(strings.Trim(strings.TrimPrefix(r.URL.Path, adminPrefix), "/"), "/")
	// is matches the path's segments; "*" matches any one.
	is := func(pattern ...string) bool {
		if len(parts) != len(pattern) {
			return false
		}
		for i, p := range pattern {
			if p != "*" && p != parts[i] {
				return false
			}
		}
		return true
	}
	switch {
	case is("health"):
		return a.health(w, r)
	case is("stats"):
		return a.serveQueue(w, r, a.stats, http.MethodGet)
	case is("retry"):
		return a.serveQueue(w, r, a.retryMany, http.MethodPost)
	case is("jobs"):
		return a.serveQueue(w, r, a.listJobs, http.MethodGet)
	case is("jobs", "*"):
		fn := a.getJob
		if r.Method == http.MethodDelete {
			fn = a.deleteJob
		}
		return a.serveQueue(w, r, withJobID(parts[1], fn), http.MethodGet, http.MethodDelete)
	case is("pauses"):
		return a.serveQueue(w, r, a.listPauses, http.MethodGet)
	case is("pause"):
		return a.serveQueue(w, r, a.pause, http.MethodPost)
	case is("resume"):
		return a.serveQueue(w, r, a.resume, http.MethodPost)
	case is("jobs", "*", "retry"):
		return a.serveQueue(w, r, withJobID(parts[1], a.retryOne), http.MethodPost)
	case parts[0] == "bookings":
		if booking, ok := bookingFromPath(r); ok {
			return a.serveQueue(w, r, a.serveTimeline(booking), http.MethodGet)
		}
	}
	return apiError(http.StatusNotFound, "no such receive_booking admin route")
}

type queueFunc func(ctx context.Context, q *adminQueue, r *http.Request) (any, error)

// serveQueue checks the method, finds the queue, calls fn and writes its answer
// as JSON, or its error as a scrubbed APIError.
func (a *AdminAPI) serveQueue(w http.ResponseWriter, r *http.Request, fn queueFunc, methods ...string) error {
	if !slices.Contains(methods, r.Method) {
		w.Header().Set("Allow", strings.Join(methods, ", "))
		return apiError(http.StatusMethodNotAllowed, "method not allowed: use "+strings.Join(methods, " or "))
	}
	e, err := a.pickQueue(r)
	if err != nil {
		return err
	}
	b, err := e.Jobs()
	if err != nil {
		return apiError(http.StatusServiceUnavailable, err.Error()) // scrubbed by the engine
	}
	q := &adminQueue{e: e, backend: b}
	out, err := fn(r.Context(), q, r)
	if err != nil {
		return adminErr(err, q)
	}
	return writeJSON(w, http.StatusOK, out)
}

// adminCtx gives one database call of the admin API its deadline.
func adminCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, adminQueryTimeout)
}

// adminQueue is one engine and its reachable database, for one request.
type adminQueue struct {
	e       *queue.Engine
	backend queue.JobStore
}

// pickQueue returns the running config's queue named by ?queue=, or else
// its first one.
func (a *AdminAPI) pickQueue(r *http.Request) (*queue.Engine, error) {
	var qs []*queue.Engine
	if a.engines != nil {
		qs = a.engines()
	} else if app := activeApp(); app != nil {
		qs = app.engines()
	}
	if len(qs) == 0 {
		return nil, apiError(http.StatusServiceUnavailable, "no queue is configured")
	}
	name := r.URL.Query().Get("queue")
	if name == "" {
		return qs[0], nil
	}
	for _, q := range qs {
		if q.ID() == name {
			return q, nil
		}
	}
	return nil, apiError(http.StatusNotFound, msgNoSuchQueue)
}

// jobView is a job as the admin API shows it: the args an operator needs,
// never the target or any other arg.
type jobView struct {
	ID             int64           `json:"id"`
	State          string          `json:"state"`
	BookingID      json.RawMessage `json:"booking_id,omitempty"`
	BookingKey     string          `json:"booking_key"`
	OrganizationID string          `json:"organization_id,omitempty"`
	EventType      string          `json:"event_type,omitempty"`
	Attempts       int             `json:"attempts"`
	MaxAttempts    int             `json:"max_attempts"`
	LastError      string          `json:"last_error,omitempty"`
	CreatedAt      time.Time       `json:"created_at"`
	ScheduledAt    time.Time       `json:"scheduled_at"`
	AttemptedAt    *time.Time      `json:"attempted_at,omitempty"`
	FinalizedAt    *time.Time      `json:"finalized_at,omitempty"`
	Errors         []attemptView   `json:"errors,omitempty"`
}

// attemptView is one failed attempt (River's stack trace is left out).
type attemptView struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error"`
}

func newJobView(job *queue.Job, q *adminQueue, withHistory bool) jobView {
	v := jobView{
		ID: job.ID, State: job.State, BookingID: job.BookingID, BookingKey: job.BookingKey,
		OrganizationID: job.OrganizationID, EventType: job.EventType,
		Attempts: job.Attempt, MaxAttempts: job.MaxAttempts,
		CreatedAt: job.CreatedAt, ScheduledAt: job.ScheduledAt, AttemptedAt: job.AttemptedAt, FinalizedAt: job.FinalizedAt,
	}
	if n := len(job.Errors); n > 0 {
		v.LastError = adminScrub(q, job.Errors[n-1].Error)
	}
	if withHistory {
		for _, e := range job.Errors {
			v.Errors = append(v.Errors, attemptView{Attempt: e.Attempt, At: e.At, Error: adminScrub(q, e.Error)})
		}
	}
	return v
}

// adminScrub removes every secret the engine knows from a text the admin
// API returns.
func adminScrub(q *adminQueue, s string) string { return q.e.Scrub(s) }

// listJobs answers a page of jobs in the given states, in ascending id
// order.
// next_after (the last id) is present when the page is full.
func (a *AdminAPI) listJobs(ctx context.Context, q *adminQueue, r *http.Request) (any, error) {
	states, err := stateParam(r)
	if err != nil {
		return nil, err
	}
	limit, err := intParam(r, "limit", defaultListLimit, 1, maxListLimit)
	if err != nil {
		return nil, err
	}
	after, err := intParam(r, "after", 0, 0, 1<<63-1)
	if err != nil {
		return nil, err
	}
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	jobs, err := q.backend.ListJobs(ctx, queue.ListParams{States: states, Limit: int(limit), After: after, Booking: bookingParam(r)})
	if err != nil {
		return nil, err
	}
	out := struct {
		Jobs      []jobView `json:"jobs"`
		NextAfter int64     `json:"next_after,omitempty"`
	}{Jobs: make([]jobView, 0, len(jobs))}
	for _, j := range jobs {
		out.Jobs = append(out.Jobs, newJobView(j, q, false))
	}
	if len(jobs) > 0 && len(jobs) == int(limit) {
		out.NextAfter = jobs[len(jobs)-1].ID
	}
	return out, nil
}

type jobFunc func(ctx context.Context, q *adminQueue, id int64) (any, error)

// withJobID parses the job id of the path (400 if it is not a positive
// integer) before fn runs.
func withJobID(raw string, fn jobFunc) queueFunc {
	return func(ctx context.Context, q *adminQueue, _ *http.Request) (any, error) {
		id, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || id <= 0 {
			return nil, apiError(http.StatusBadRequest, "job id: expected a positive whole number")
		}
		ctx, cancel := adminCtx(ctx)
		defer cancel()
		return fn(ctx, q, id)
	}
}

func (a *AdminAPI) getJob(ctx context.Context, q *adminQueue, id int64) (any, error) {
	job, err := q.backend.GetJob(ctx, id)
	if err != nil {
		return nil, err
	}
	return newJobView(job, q, true), nil
}

// retryOne replays one failed job now, by the coalescing rule.
func (a *AdminAPI) retryOne(ctx context.Context, q *adminQueue, id int64) (any, error) {
	job, err := q.backend.GetJob(ctx, id)
	if err != nil {
		return nil, err
	}
	if !queue.ReplayableStates[job.State] {
		return nil, apiError(http.StatusConflict,
			fmt.Sprintf("job %d is %s: only discarded, cancelled or retryable jobs are replayed", id, job.State))
	}
	return q.backend.ReplayJob(ctx, id)
}

// retryMany replays every job in a replayable state (of one booking, with
// booking_id), a page at a time. A job that left the state meanwhile (it
// started, or was deleted) is skipped. Each database call has its own
// deadline; the whole replay stops if the client goes away (what was
// replayed stays replayed: calling again picks up the rest).
func (a *AdminAPI) retryMany(ctx context.Context, q *adminQueue, r *http.Request) (any, error) {
	states, err := stateParam(r)
	if err != nil {
		return nil, err
	}
	if err := replayableOnly(states); err != nil {
		return nil, apiError(http.StatusBadRequest, err.Error())
	}
	var out struct {
		Replayed  int `json:"replayed"`
		Coalesced int `json:"coalesced"`
		Skipped   int `json:"skipped,omitempty"`
	}
	booking := bookingParam(r)
	partial := func(err error) error {
		if out.Replayed == 0 {
			return err
		}
		return fmt.Errorf("replayed %d jobs (%d coalesced), then failed: %w", out.Replayed, out.Coalesced, err)
	}
	for after := int64(0); ; {
		lctx, cancel := adminCtx(ctx)
		jobs, err := q.backend.ListJobs(lctx, queue.ListParams{States: states, Limit: maxListLimit, After: after, Booking: booking})
		cancel()
		if err != nil {
			return nil, partial(err)
		}
		for _, j := range jobs {
			after = j.ID
			res, err := replayIfReplayable(ctx, q, j.ID)
			switch {
			case errors.Is(err, queue.ErrNotReplayable), errors.Is(err, queue.ErrJobNotFound), errors.Is(err, queue.ErrJobRunning):
				out.Skipped++
			case err != nil:
				return nil, partial(err)
			default:
				out.Replayed++
				if res.Coalesced {
					out.Coalesced++
				}
			}
		}
		if len(jobs) < maxListLimit {
			return out, nil
		}
	}
}

// replayIfReplayable reads the job's state again just before replaying
// it: a retryable job may have started since the page was listed.
func replayIfReplayable(ctx context.Context, q *adminQueue, id int64) (*queue.ReplayResult, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	job, err := q.backend.GetJob(ctx, id)
	if err != nil {
		return nil, err
	}
	if !queue.ReplayableStates[job.State] {
		return nil, queue.ErrNotReplayable
	}
	return q.backend.ReplayJob(ctx, id)
}

// deleteJob drops a job; a running one cannot be (409).
func (a *AdminAPI) deleteJob(ctx context.Context, q *adminQueue, id int64) (any, error) {
	job, err := q.backend.DeleteJob(ctx, id)
	if errors.Is(err, queue.ErrJobRunning) {
		return nil, apiError(http.StatusConflict, fmt.Sprintf("job %d is running and cannot be deleted", id))
	}
	if err != nil {
		return nil, err
	}
	return struct {
		Deleted bool    `json:"deleted"`
		Job     jobView `json:"job"`
	}{true, newJobView(job, q, false)}, nil
}

func (a *AdminAPI) stats(ctx context.Context, q *adminQueue, _ *http.Request) (any, error) {
	ctx, cancel := adminCtx(ctx)
	defer cancel()
	s, err := q.e.Stats(ctx)
	if err != nil {
		return nil, err
	}
	return struct {
		Queue string `json:"queue"`
		*queue.Stats
	}{q.e.ID(), s}, nil
}

// health answers 200 when the queue can record webhooks (its database is
// reached and a write commits) and its oldest pending job is younger than
// max_age (default 5m), 503 with the reason otherwise.
func (a *AdminAPI) health(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return apiError(http.StatusMethodNotAllowed, "method not allowed: use GET or HEAD")
	}
	maxAge := defaultHealthAge
	if v := r.URL.Query().Get("max_age"); v != "" {
		d, err := caddy.ParseDuration(v)
		if err != nil || d <= 0 {
			return apiError(http.StatusBadRequest, "max_age: expected a positive duration, e.g. 5m")
		}
		maxAge = d
	}
	unhealthy := func(reason string) error {
		return writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unhealthy", "reason": reason})
	}
	q, err := a.pickQueue(r)
	if err != nil {
		return unhealthy(err.Error()) // our own message, nothing to scrub
	}
	ctx, cancel := adminCtx(r.Context())
	defer cancel()
	// Unhealthy whenever a webhook could not be recorded now: the
	// database is away, or a write does not commit (a full disk).
	if err := q.Health(ctx); err != nil {
		return unhealthy(err.Error()) // scrubbed by the engine
	}
	s, err := q.Stats(ctx)
	if err != nil {
		return unhealthy("queue unreachable: " + err.Error())
	}
	if age := time.Duration(s.OldestPendingSeconds * float64(time.Second)); age >= maxAge {
		return unhealthy(fmt.Sprintf("oldest pending job is %s old (max_age %s)", age.Round(time.Millisecond), maxAge))
	}
	return writeJSON(w, http.StatusOK, struct {
		Status string `json:"status"`
		Queue  string `json:"queue"`
		*queue.Stats
	}{"ok", q.ID(), s})
}

// stateParam reads ?state=, discarded by default.
func stateParam(r *http.Request) ([]string, error) {
	v := r.URL.Query().Get("state")
	if v == "" {
		return []string{queue.StateDiscarded}, nil
	}
	states, err := parseStates(v)
	if err != nil {
		return nil, apiError(http.StatusBadRequest, err.Error())
	}
	return states, nil
}

// parseStates reads comma-separated job states; "pending" stands for the
// jobs not done yet. The admin API and the command check states alike.
func parseStates(v string) ([]string, error) {
	var out []string
	for name := range strings.SplitSeq(v, ",") {
		if name == "pending" {
			out = append(out, queue.PendingStates...)
			continue
		}
		if !slices.Contains(queue.States, name) {
			return nil, errors.New("state: expected one or more (comma-separated) of pending, discarded, cancelled, retryable, available, scheduled, running, completed")
		}
		out = append(out, name)
	}
	return out, nil
}

// replayableOnly refuses the states a replay does not take.
func replayableOnly(states []string) error {
	for _, st := range states {
		if !queue.ReplayableStates[st] {
			return errors.New("state: expected discarded, cancelled or retryable")
		}
	}
	return nil
}

// bookingParam reads ?booking_id= as the booking's key (see bookingKey).
func bookingParam(r *http.Request) string { return bookingKey(r.URL.Query().Get("booking_id")) }

func intParam(r *http.Request, name string, def, lo, hi int64) (int64, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, apiError(http.StatusBadRequest, fmt.Sprintf("%s: expected a whole number from %d to %d", name, lo, hi))
	}
	return n, nil
}

// apiError is an error as Caddy's admin endpoint writes it: the status,
// and {"error": msg}. It must be returned unwrapped: Caddy type-asserts.
func apiError(status int, msg string) error {
	return caddy.APIError{HTTPStatus: status, Err: errors.New(msg)}
}

// adminErr maps River's not-found to 404 and any other error to a 500
// whose text is scrubbed.
func adminErr(err error, q *adminQueue) error {
	var apiErr caddy.APIError
	switch {
	case errors.As(err, &apiErr):
		return apiErr
	case errors.Is(err, queue.ErrJobNotFound):
		return apiError(http.StatusNotFound, msgNoSuchJob)
	case errors.Is(err, context.DeadlineExceeded):
		return apiError(http.StatusGatewayTimeout, "the queue did not answer in time: "+adminScrub(q, err.Error()))
	}
	return apiError(http.StatusInternalServerError, adminScrub(q, err.Error()))
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := payload.MarshalJSON(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(append(body, '\n'))
	return err
}

// Interface guard
var _ caddy.AdminRouter = (*AdminAPI)(nil)

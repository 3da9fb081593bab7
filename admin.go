package receivebooking

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/riverqueue/river/rivertype"
)

const (
	adminPrefix       = "/receive_booking/"
	defaultListLimit  = 50
	maxListLimit      = 500
	defaultHealthAge  = 5 * time.Minute
	adminQueryTimeout = 15 * time.Second
)

func init() {
	caddy.RegisterModule(AdminAPI{})
}

// AdminAPI is the operator's view of the durable queue, under Caddy's
// admin endpoint (so it has the admin endpoint's access controls: it
// listens on localhost by default). It lists failed deliveries, replays
// them, and answers health checks. Every answer is JSON.
type AdminAPI struct{}

// CaddyModule returns the Caddy module information.
func (AdminAPI) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "admin.api.receive_booking",
		New: func() caddy.Module { return new(AdminAPI) },
	}
}

// Routes returns the admin routes.
func (a AdminAPI) Routes() []caddy.AdminRoute {
	return []caddy.AdminRoute{{Pattern: adminPrefix, Handler: caddy.AdminHandlerFunc(a.serve)}}
}

// jobStates are the states an operator may list.
var jobStates = map[string]rivertype.JobState{
	"available": rivertype.JobStateAvailable, "cancelled": rivertype.JobStateCancelled,
	"completed": rivertype.JobStateCompleted, "discarded": rivertype.JobStateDiscarded,
	"retryable": rivertype.JobStateRetryable, "running": rivertype.JobStateRunning,
	"scheduled": rivertype.JobStateScheduled,
}

// replayableStates are the states of jobs that may be replayed.
var replayableStates = map[rivertype.JobState]bool{
	rivertype.JobStateDiscarded: true, rivertype.JobStateCancelled: true, rivertype.JobStateRetryable: true,
}

func (a AdminAPI) serve(w http.ResponseWriter, r *http.Request) error {
	path := strings.Trim(strings.TrimPrefix(r.URL.Path, adminPrefix), "/")
	parts := strings.Split(path, "/")
	route := func(n int, name string) bool { return len(parts) == n && parts[0] == name }
	switch {
	case route(1, "health"):
		return a.health(w, r)
	case route(1, "stats"):
		return withQueue(w, r, http.MethodGet, a.stats)
	case route(1, "retry"):
		return withQueue(w, r, http.MethodPost, a.retryMany)
	case route(1, "jobs"):
		return withQueue(w, r, http.MethodGet, a.listJobs)
	case route(2, "jobs") && r.Method == http.MethodDelete:
		return withQueue(w, r, http.MethodDelete, a.deleteJob(parts[1]))
	case route(2, "jobs"):
		return withQueue(w, r, http.MethodGet, a.getJob(parts[1]))
	case route(3, "jobs") && parts[2] == "retry":
		return withQueue(w, r, http.MethodPost, a.retryOne(parts[1]))
	}
	return apiError(http.StatusNotFound, "no such receive_booking admin route")
}

type queueFunc func(ctx context.Context, q *sharedQueue, r *http.Request) (any, error)

// withQueue checks the method, finds the queue and writes fn's answer.
func withQueue(w http.ResponseWriter, r *http.Request, method string, fn queueFunc) error {
	if r.Method != method {
		w.Header().Set("Allow", method)
		return apiError(http.StatusMethodNotAllowed, "method not allowed")
	}
	q, err := pickQueue(r)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(r.Context(), adminQueryTimeout)
	defer cancel()
	out, err := fn(ctx, q, r)
	if err != nil {
		return scrubAPIError(err, q)
	}
	return writeJSON(w, http.StatusOK, out)
}

// pickQueue returns the queue named by ?queue=, or the only (first) one.
func pickQueue(r *http.Request) (*sharedQueue, error) {
	qs := runningQueues()
	if len(qs) == 0 {
		return nil, apiError(http.StatusServiceUnavailable, "no queue is configured")
	}
	name := r.URL.Query().Get("queue")
	if name == "" {
		return qs[0], nil
	}
	for _, q := range qs {
		if q.key == name {
			return q, nil
		}
	}
	return nil, apiError(http.StatusNotFound, "no such queue")
}

// jobView is a job as the admin API shows it: the args an operator needs,
// never the target or any key.
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

type attemptView struct {
	Attempt int       `json:"attempt"`
	At      time.Time `json:"at"`
	Error   string    `json:"error"`
}

func newJobView(job *rivertype.JobRow, q *sharedQueue, withHistory bool) jobView {
	var args syncArgs
	_ = json.Unmarshal(job.EncodedArgs, &args)
	v := jobView{
		ID: job.ID, State: string(job.State), BookingID: args.BookingID, BookingKey: args.BookingKey,
		OrganizationID: args.OrganizationID, EventType: args.EventType,
		Attempts: job.Attempt, MaxAttempts: job.MaxAttempts,
		CreatedAt: job.CreatedAt, ScheduledAt: job.ScheduledAt, AttemptedAt: job.AttemptedAt, FinalizedAt: job.FinalizedAt,
	}
	if n := len(job.Errors); n > 0 {
		v.LastError = q.scrub(job.Errors[n-1].Error)
	}
	if withHistory {
		for _, e := range job.Errors {
			v.Errors = append(v.Errors, attemptView{Attempt: e.Attempt, At: e.At, Error: q.scrub(e.Error)})
		}
	}
	return v
}

// scrub removes the DSN and every live upstream key from a text.
func (q *sharedQueue) scrub(s string) string {
	s = scrubDSN(s, q.config)
	q.mu.RLock()
	defer q.mu.RUnlock()
	for _, ups := range q.targets {
		for _, u := range ups {
			s = u.scrub(s)
		}
	}
	return s
}

func (a AdminAPI) listJobs(ctx context.Context, q *sharedQueue, r *http.Request) (any, error) {
	state, err := stateParam(r, "discarded")
	if err != nil {
		return nil, err
	}
	limit, err := intParam(r, "limit", defaultListLimit, 1, maxListLimit)
	if err != nil {
		return nil, err
	}
	after, err := intParam(r, "after", 0, 0, 1<<62)
	if err != nil {
		return nil, err
	}
	jobs, err := q.backend.listJobs(ctx, []rivertype.JobState{state}, limit, int64(after), r.URL.Query().Get("booking_id"))
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
	if len(jobs) == limit {
		out.NextAfter = jobs[len(jobs)-1].ID
	}
	return out, nil
}

func (a AdminAPI) getJob(rawID string) queueFunc {
	return func(ctx context.Context, q *sharedQueue, _ *http.Request) (any, error) {
		id, err := jobID(rawID)
		if err != nil {
			return nil, err
		}
		job, err := q.backend.getJob(ctx, id)
		if err != nil {
			return nil, err
		}
		return newJobView(job, q, true), nil
	}
}

func (a AdminAPI) retryOne(rawID string) queueFunc {
	return func(ctx context.Context, q *sharedQueue, _ *http.Request) (any, error) {
		id, err := jobID(rawID)
		if err != nil {
			return nil, err
		}
		job, err := q.backend.getJob(ctx, id)
		if err != nil {
			return nil, err
		}
		if !replayableStates[job.State] {
			return nil, apiError(http.StatusConflict, fmt.Sprintf("job %d is %s: only discarded, cancelled or retryable jobs are replayed", id, job.State))
		}
		return q.backend.replayJob(ctx, id)
	}
}

// retryMany replays every job in a state (optionally of one booking).
func (a AdminAPI) retryMany(ctx context.Context, q *sharedQueue, r *http.Request) (any, error) {
	state, err := stateParam(r, "discarded")
	if err != nil {
		return nil, err
	}
	if !replayableStates[state] {
		return nil, apiError(http.StatusBadRequest, "state must be discarded, cancelled or retryable")
	}
	var out struct {
		Replayed  int `json:"replayed"`
		Coalesced int `json:"coalesced"`
	}
	booking := r.URL.Query().Get("booking_id")
	for after := int64(0); ; {
		jobs, err := q.backend.listJobs(ctx, []rivertype.JobState{state}, maxListLimit, after, booking)
		if err != nil {
			return nil, err
		}
		for _, j := range jobs {
			res, err := q.backend.replayJob(ctx, j.ID)
			if err != nil {
				return nil, err
			}
			out.Replayed++
			if res.Coalesced {
				out.Coalesced++
			}
			after = j.ID
		}
		if len(jobs) < maxListLimit {
			return out, nil
		}
	}
}

func (a AdminAPI) deleteJob(rawID string) queueFunc {
	return func(ctx context.Context, q *sharedQueue, _ *http.Request) (any, error) {
		id, err := jobID(rawID)
		if err != nil {
			return nil, err
		}
		job, err := q.backend.deleteJob(ctx, id)
		if errors.Is(err, rivertype.ErrJobRunning) {
			return nil, apiError(http.StatusConflict, fmt.Sprintf("job %d is running and cannot be deleted", id))
		}
		if err != nil {
			return nil, err
		}
		return map[string]any{"deleted": true, "job": newJobView(job, q, false)}, nil
	}
}

func (a AdminAPI) stats(ctx context.Context, q *sharedQueue, _ *http.Request) (any, error) {
	s, err := q.stats(ctx)
	if err != nil {
		return nil, err
	}
	return struct {
		Queue string `json:"queue"`
		*queueStats
	}{q.key, s}, nil
}

// health answers 200 when the queue is reachable and its oldest pending
// job is younger than max_age (default 5m), 503 with the reason otherwise.
func (a AdminAPI) health(w http.ResponseWriter, r *http.Request) error {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		return apiError(http.StatusMethodNotAllowed, "method not allowed")
	}
	maxAge := defaultHealthAge
	if v := r.URL.Query().Get("max_age"); v != "" {
		d, err := caddy.ParseDuration(v)
		if err != nil || d <= 0 {
			return apiError(http.StatusBadRequest, "max_age: not a positive duration")
		}
		maxAge = d
	}
	unhealthy := func(reason string) error {
		return writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unhealthy", "reason": reason})
	}
	q, err := pickQueue(r)
	if err != nil {
		return unhealthy("no queue is configured")
	}
	ctx, cancel := context.WithTimeout(r.Context(), adminQueryTimeout)
	defer cancel()
	s, err := q.stats(ctx)
	if err != nil {
		return unhealthy("queue unreachable: " + q.scrub(err.Error()))
	}
	if age := time.Duration(s.OldestPendingSeconds * float64(time.Second)); age >= maxAge {
		return unhealthy(fmt.Sprintf("oldest pending job is %s old (max_age %s)", age.Round(time.Second), maxAge))
	}
	return writeJSON(w, http.StatusOK, struct {
		Status string `json:"status"`
		*queueStats
	}{"ok", s})
}

func stateParam(r *http.Request, def string) (rivertype.JobState, error) {
	v := r.URL.Query().Get("state")
	if v == "" {
		v = def
	}
	s, ok := jobStates[v]
	if !ok {
		return "", apiError(http.StatusBadRequest, "state: expected one of available, cancelled, completed, discarded, retryable, running, scheduled")
	}
	return s, nil
}

func intParam(r *http.Request, name string, def, lo, hi int) (int, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, apiError(http.StatusBadRequest, fmt.Sprintf("%s: expected a whole number from %d to %d", name, lo, hi))
	}
	return n, nil
}

func jobID(raw string) (int64, error) {
	id, err := strconv.ParseInt(raw, 10, 64)
	if err != nil || id <= 0 {
		return 0, apiError(http.StatusBadRequest, "job id: expected a positive whole number")
	}
	return id, nil
}

func apiError(status int, msg string) error {
	return caddy.APIError{HTTPStatus: status, Err: errors.New(msg)}
}

// scrubAPIError maps River's not-found to 404 and scrubs any other error.
func scrubAPIError(err error, q *sharedQueue) error {
	var apiErr caddy.APIError
	switch {
	case errors.As(err, &apiErr):
		return err
	case errors.Is(err, rivertype.ErrNotFound):
		return apiError(http.StatusNotFound, "no such job")
	}
	return apiError(http.StatusInternalServerError, q.scrub(err.Error()))
}

func writeJSON(w http.ResponseWriter, status int, v any) error {
	body, err := marshalJSON(v)
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, err = w.Write(body)
	return err
}

// Interface guard
var _ caddy.AdminRouter = AdminAPI{}

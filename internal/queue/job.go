package queue

// A job: what the queue keeps of one booking sync (Args, River's job
// args), and the engine's own view of it for the admin API and the
// commands (Job, its states, a replay's result), so that River stays
// inside this package.

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// riverQueueName keeps our jobs apart from any other River user of the
// same database (the Supabase project's own database, say).
const riverQueueName = "receive_booking"

// Args is one queued booking sync. Webhooks for the same booking that
// arrive before it starts merge into it.
type Args struct {
	// Route names the handler route whose target the sync calls (jobs
	// recorded before routes existed have none: the default route).
	Route          string          `json:"route,omitempty"`
	BookingID      json.RawMessage `json:"booking_id"`
	BookingKey     string          `json:"booking_key"`
	OrganizationID string          `json:"organization_id,omitempty"`
	// OrganizationIDJSON is organization_id as received, forwarded as is.
	OrganizationIDJSON json.RawMessage `json:"organization_id_json,omitempty"`
	EventType          string          `json:"event_type,omitempty"`
	// AcceptedAt is when the first webhook this job carries was accepted.
	AcceptedAt time.Time `json:"accepted_at"`
	// NotBefore is the end of the coalescing window.
	NotBefore time.Time `json:"not_before,omitzero"`
	// Trace is the W3C trace context of the webhook that made the job:
	// every attempt continues it, on whichever instance, however late.
	Trace tracing.Context `json:"trace,omitzero"`
}

// route is the job's route, the default one for older jobs.
func (a *Args) route() string {
	if a.Route == "" {
		return DefaultRoute
	}
	return a.Route
}

// Kind is the River job kind.
func (Args) Kind() string { return "receive_booking_sync" }

// InsertOpts puts every sync on our own River queue.
func (Args) InsertOpts() river.InsertOpts { return river.InsertOpts{Queue: riverQueueName} }

// ReplayResult says what a replay of a failed job came to.
type ReplayResult struct {
	JobID     int64 `json:"job_id"`
	Coalesced bool  `json:"coalesced"`
}

// The states of a job, as the engine reports them (River's own names).
const (
	StateAvailable = "available"
	StateScheduled = "scheduled"
	StateRetryable = "retryable"
	StateRunning   = "running"
	StateDiscarded = "discarded"
	StateCancelled = "cancelled"
	StateCompleted = "completed"
)

// PendingStates are the states of a job not done yet: the "pending"
// shorthand of the admin API and the commands.
var PendingStates = []string{StateAvailable, StateScheduled, StateRetryable, StateRunning}

// FinishedStates are the states of a job that is done: kept for its
// retention period, then deleted.
var FinishedStates = []string{StateDiscarded, StateCancelled, StateCompleted}

// States is every job state, pending ones first: the one list the admin
// API, the commands, the metrics and the counts use.
var States = append(append([]string(nil), PendingStates...), FinishedStates...)

// ReplayableStates are the states of jobs that may be replayed: failed,
// or waiting for their next attempt (a replay runs it now).
var ReplayableStates = map[string]bool{StateDiscarded: true, StateCancelled: true, StateRetryable: true}

// pendingStatesSQL is PendingStates in SQL, as the partial index of
// pending jobs (tally.go) was made with it: a query uses the index only
// with the same list.
const pendingStatesSQL = `'available', 'retryable', 'scheduled', 'running'`

// Job is a job as the admin API and the commands see it.
type Job struct {
	ID    int64
	State string
	// The booking the job syncs.
	Route, BookingKey, OrganizationID, EventType string
	// BookingID is booking_id as received (JSON).
	BookingID json.RawMessage
	// Attempt is the attempts made so far (the running one included).
	Attempt, MaxAttempts     int
	CreatedAt, ScheduledAt   time.Time
	AttemptedAt, FinalizedAt *time.Time
	// Errors are the failed attempts, oldest first; their texts were
	// scrubbed when they were recorded.
	Errors []AttemptError
}

// AttemptError is one failed attempt of a job.
type AttemptError struct {
	Attempt int
	At      time.Time
	Error   string
}

// ListParams select jobs: in States (every state when empty), with ids
// after After, of one booking (its key) if Booking is set, at most Limit.
type ListParams struct {
	States  []string
	Booking string
	After   int64
	Limit   int
}

// Errors of the job store.
var (
	// ErrJobNotFound says no job of the queue has the id.
	ErrJobNotFound = errors.New("job not found")
	// ErrJobRunning says the job runs and cannot be deleted.
	ErrJobRunning = errors.New("job is running")
	// ErrNotReplayable says a job left the replayable states.
	ErrNotReplayable = errors.New("job not in a replayable state")
)

// jobOf is River's job row as the engine shows it.
func jobOf(row *rivertype.JobRow) *Job {
	var a Args
	_ = json.Unmarshal(row.EncodedArgs, &a) // a job of ours; a damaged one shows its row alone
	j := &Job{ID: row.ID, State: string(row.State), Route: a.route(), BookingKey: a.BookingKey,
		OrganizationID: a.OrganizationID, EventType: a.EventType, Attempt: row.Attempt, MaxAttempts: row.MaxAttempts,
		CreatedAt: row.CreatedAt, ScheduledAt: row.ScheduledAt, AttemptedAt: row.AttemptedAt, FinalizedAt: row.FinalizedAt}
	if json.Valid(a.BookingID) {
		j.BookingID = a.BookingID
	}
	for _, e := range row.Errors {
		j.Errors = append(j.Errors, AttemptError{Attempt: e.Attempt, At: e.At, Error: withoutCancelPrefix(e.Error)})
	}
	return j
}

// cancelPrefix is what River's JobCancelError puts before the error of a
// job given up for good; the job's state says as much.
const cancelPrefix = "JobCancelError: "

// withoutCancelPrefix is an attempt's error as the sender, the log, the
// commands, the admin API and the dashboard show it: without River's
// cancelPrefix (which jobs cancelled before finalError existed recorded).
func withoutCancelPrefix(err string) string { return strings.TrimPrefix(err, cancelPrefix) }

// jobsOf is jobOf for a list.
func jobsOf(rows []*rivertype.JobRow) []*Job {
	out := make([]*Job, len(rows))
	for i, r := range rows {
		out[i] = jobOf(r)
	}
	return out
}

// storeErr is River's error as the job store's.
func storeErr(err error) error {
	switch {
	case errors.Is(err, rivertype.ErrNotFound):
		return ErrJobNotFound
	case errors.Is(err, rivertype.ErrJobRunning):
		return ErrJobRunning
	}
	return err
}

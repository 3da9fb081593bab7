package receivebooking

// A booking's timeline on the admin API (GET /receive_booking/bookings/<id>)
// and from the command line (`caddy receive-booking booking <id>`): every
// webhook recorded for the booking, what its sender was answered, every
// attempt and replay of its syncs, newest first, and where it stands now.

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
)

const (
	// msgNoSuchBooking is the admin API's 404 for a booking without
	// events or jobs (the command tells it apart by this).
	msgNoSuchBooking       = "no such booking"
	defaultTimelineEvents  = 100
	bookingsPath           = "bookings/"
	timelineTimeFormat     = "2006-01-02 15:04:05.000"
	timelineDetailsMaxText = 100
)

// timelineView is a booking's timeline as the admin API answers it.
type timelineView struct {
	BookingID      string `json:"booking_id"`
	OrganizationID string `json:"organization_id"`
	// State is where the booking stands: the state of its newest job not
	// yet done, else of its newest job kept; "unknown" when no job is
	// kept (deleted by an operator).
	State  string        `json:"state"`
	Jobs   []timelineJob `json:"jobs"`
	Events []queue.Event `json:"events"`
}

// timelineJob is one of the booking's jobs still kept, newest first.
type timelineJob struct {
	ID          int64      `json:"id"`
	State       string     `json:"state"`
	Attempts    int        `json:"attempts"`
	MaxAttempts int        `json:"max_attempts"`
	NextRun     *time.Time `json:"next_run,omitempty"`
	FinalizedAt *time.Time `json:"finalized_at,omitempty"`
}

// bookingFromPath reads the booking id of /receive_booking/bookings/<id>
// from the escaped path, so that an id with a slash (%2F) is one id. A
// JSON string literal ("abc", quotes included) is accepted too, as
// booking_id= is.
func bookingFromPath(r *http.Request) (string, bool) {
	path := r.URL.EscapedPath()
	if path == adminPrefix+strings.TrimSuffix(bookingsPath, "/") {
		return "", true // no id: 400
	}
	raw, ok := strings.CutPrefix(path, adminPrefix+bookingsPath)
	if !ok || strings.Contains(strings.TrimSuffix(raw, "/"), "/") {
		return "", false
	}
	id, err := url.PathUnescape(strings.TrimSuffix(raw, "/"))
	if err != nil {
		return "", false
	}
	return bookingKey(id), true
}

// serveTimeline answers GET /receive_booking/bookings/<id>[?organization=][&limit=].
func (a *AdminAPI) serveTimeline(booking string) queueFunc {
	return func(ctx context.Context, q *adminQueue, r *http.Request) (any, error) {
		if booking == "" {
			return nil, apiError(http.StatusBadRequest, "booking id: required, as /receive_booking/bookings/<booking_id>")
		}
		limit, err := intParam(r, "limit", defaultTimelineEvents, 1, queue.MaxTimelineEvents)
		if err != nil {
			return nil, err
		}
		ctx, cancel := adminCtx(ctx)
		defer cancel()
		org, err := timelineOrganization(ctx, q, booking, r.URL.Query().Get("organization"))
		if err != nil {
			return nil, err
		}
		events, err := q.backend.BookingEvents(ctx, org, booking, int(limit))
		if err != nil {
			return nil, err
		}
		jobs, err := q.backend.JobsByID(ctx, jobIDsOf(events))
		if err != nil {
			return nil, err
		}
		if len(events) == 0 && len(jobs) == 0 {
			return nil, apiError(http.StatusNotFound, msgNoSuchBooking)
		}
		return newTimelineView(booking, org, events, jobs), nil
	}
}

// timelineOrganization is the organization asked for, or the only one
// that has events for the booking. A booking id known in several
// organizations is a different booking in each: the caller must choose
// (400, naming them).
func timelineOrganization(ctx context.Context, q *adminQueue, booking, org string) (string, error) {
	if org != "" {
		return org, nil
	}
	orgs, err := q.backend.BookingOrganizations(ctx, booking)
	switch {
	case err != nil:
		return "", err
	case len(orgs) == 0:
		return "", apiError(http.StatusNotFound, msgNoSuchBooking)
	case len(orgs) > 1:
		return "", apiError(http.StatusBadRequest, fmt.Sprintf(
			"organization: booking %s is known in several organizations (%s): name one", booking, strings.Join(orgs, ", ")))
	}
	return orgs[0], nil
}

// jobIDsOf lists the jobs the events name, once each.
func jobIDsOf(events []queue.Event) []int64 {
	seen := map[int64]bool{}
	var ids []int64
	for _, ev := range events {
		for _, id := range []int64{ev.JobID, ev.ReplayedJob} {
			if id != 0 && !seen[id] {
				seen[id] = true
				ids = append(ids, id)
			}
		}
	}
	return ids
}

func newTimelineView(booking, org string, events []queue.Event, jobs []*queue.Job) *timelineView {
	v := &timelineView{BookingID: booking, OrganizationID: org, State: "unknown", Events: events, Jobs: []timelineJob{}}
	if v.Events == nil {
		v.Events = []queue.Event{}
	}
	pending := ""
	for _, j := range jobs { // newest first
		tj := timelineJob{ID: j.ID, State: string(j.State), Attempts: j.Attempt, MaxAttempts: j.MaxAttempts, FinalizedAt: j.FinalizedAt}
		if j.FinalizedAt == nil {
			if pending == "" {
				pending = tj.State
			}
			if j.State != queue.StateRunning {
				at := j.ScheduledAt.UTC()
				tj.NextRun = &at
			}
		}
		v.Jobs = append(v.Jobs, tj)
	}
	switch {
	case pending != "":
		v.State = pending
	case len(v.Jobs) > 0:
		v.State = v.Jobs[0].State
	}
	return v
}

// printTimeline prints a timeline for people: the booking, its state and
// jobs, then its events newest first.
func printTimeline(out io.Writer, body []byte) error {
	var v timelineView
	if err := json.Unmarshal(body, &v); err != nil {
		return fmt.Errorf("the admin API's answer is not a timeline: %w", err)
	}
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "booking\t%s\n", v.BookingID)
	fmt.Fprintf(tw, "organization\t%s\n", v.OrganizationID)
	fmt.Fprintf(tw, "state\t%s\n", v.State)
	for _, j := range v.Jobs {
		line := fmt.Sprintf("%d %s, %d/%d attempts", j.ID, j.State, j.Attempts, j.MaxAttempts)
		if j.NextRun != nil {
			line += ", next run " + j.NextRun.UTC().Format(timelineTimeFormat)
		}
		fmt.Fprintf(tw, "job\t%s\n", line)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "TIME (UTC)\tKIND\tJOB\tDETAILS")
	for _, ev := range v.Events {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", ev.At.UTC().Format(timelineTimeFormat), ev.Kind, ev.JobID, eventDetails(&ev))
	}
	if len(v.Events) == 0 {
		fmt.Fprintln(tw, "(no events kept)")
	}
	return tw.Flush()
}

// eventDetails is one line about an event.
func eventDetails(ev *queue.Event) string {
	switch ev.Kind {
	case queue.EventWebhook:
		s := cmp.Or(ev.EventType, "no event_type")
		if ev.Credential != "" {
			s += " by " + ev.Credential
		}
		if ev.Coalesced != nil && *ev.Coalesced {
			s += ", merged into the waiting job"
		} else {
			s += ", new job"
		}
		if ev.Status != 0 {
			s += fmt.Sprintf("; answered %d %s", ev.Status, ev.Answer)
		}
		return s
	case queue.EventAnswer:
		if ev.Status == 0 {
			return "no answer: the sender had left (the sync goes on)"
		}
		s := fmt.Sprintf("answered %d %s", ev.Status, ev.Answer)
		if ev.Reason != "" {
			s += " (" + ev.Reason + ")"
		}
		if ev.Error != "" {
			s += ": " + cut(ev.Error, timelineDetailsMaxText)
		}
		return s
	case queue.EventAttempt:
		return attemptDetails(ev)
	case queue.EventReplay:
		if ev.ReplayedJob != 0 {
			return fmt.Sprintf("job %d replayed: merged into job %d, which was waiting (a fresh attempt budget)", ev.ReplayedJob, ev.JobID)
		}
		return "replayed: runs again now, with a fresh attempt budget"
	}
	return ""
}

// attemptResults say what came of the job after an attempt.
var attemptResults = map[string]string{
	queue.ResultSynced:     "synced",
	queue.ResultRetry:      "retry",
	queue.ResultFinal:      "final: job cancelled",
	queue.ResultExhausted:  "out of attempts: job discarded",
	queue.ResultSuperseded: "superseded: a newer job syncs the booking",
	queue.ResultStale:      "stale: a newer attempt holds the booking",
}

func attemptDetails(ev *queue.Event) string {
	s := fmt.Sprintf("attempt %d: ", ev.Attempt)
	if ev.UpstreamStatus != 0 {
		s += fmt.Sprintf("upstream %d", ev.UpstreamStatus)
	} else {
		s += "no answer"
	}
	if ev.Outcome != "" {
		s += ", outcome " + ev.Outcome
	}
	s += fmt.Sprintf(", %s → %s", time.Duration(ev.DurationMS*float64(time.Millisecond)).Round(time.Millisecond/10), attemptResults[ev.Result])
	if ev.NextRun != nil {
		s += ", next run " + ev.NextRun.UTC().Format(timelineTimeFormat)
	}
	if ev.Error != "" {
		s += ": " + cut(ev.Error, timelineDetailsMaxText)
	}
	return s
}

// bookingKey reads a booking id as the queue keys it: the string's value
// or the integer's digits; a JSON string literal ("abc", quotes included)
// is accepted too.
func bookingKey(v string) string {
	var s string
	if strings.HasPrefix(v, `"`) && json.Unmarshal([]byte(v), &s) == nil {
		return s
	}
	return v
}

package queue

// The job path: a worker claims the booking, calls import-bookings, records
// the outcome with the booking row, answers the senders waiting for that
// attempt, and chooses when to retry.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"strconv"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"
)

const (
	retryBase = 5 * time.Second
	retryCap  = 15 * time.Minute
	// busySnooze is how long a sync waits when another sync of the same
	// booking is running (on this or another instance).
	busySnooze = time.Second
	// maxErrorDetails bounds the upstream answer kept in a job's error.
	maxErrorDetails = 512
)

// syncWorker runs queued syncs.
type syncWorker[TDriver riverdriver.Driver[TTx], TTx any] struct {
	river.WorkerDefaults[Args]
	b       *riverBackend[TDriver, TTx]
	timeout time.Duration
}

// Timeout bounds one sync; River cancels the context after it.
func (w *syncWorker[TDriver, TTx]) Timeout(*river.Job[Args]) time.Duration { return w.timeout }

// Work syncs one booking. Inside the coalescing window it snoozes until
// the window ends (the job stays in the booking's waiting slot, so
// webhooks keep merging into it, and no worker is held); then it claims
// the booking, calls import-bookings and records the outcome in one
// transaction with the booking row.
func (w *syncWorker[TDriver, TTx]) Work(ctx context.Context, job *river.Job[Args]) error {
	if d := time.Until(job.Args.NotBefore); d > 0 {
		// River keeps a job snoozed for less than its scheduler interval
		// (5 s) available, so it runs as soon as the window ends.
		return river.JobSnooze(d)
	}
	e := w.b.q
	eventType, ok, err := w.b.claim(ctx, job)
	if err != nil {
		return e.scrubErr(err)
	}
	if !ok {
		return river.JobSnooze(busySnooze)
	}
	// The senders waiting for this job are answered by this attempt.
	waiting := e.waiters.take(job.ID)
	up := e.upstreamFor(job.Args.Route)
	var res *upstream.Result
	var jobErr error
	if up == nil {
		res = &upstream.Result{Err: errors.New("no receive_booking handler has this job's route")}
		jobErr = fmt.Errorf("no receive_booking handler is configured for route %q", job.Args.route())
	} else {
		req := upstream.Request{BookingID: job.Args.BookingID, OrganizationID: job.Args.OrganizationIDJSON, EventType: eventType}
		res = up.Sync(ctx, req, "job-"+strconv.FormatInt(job.ID, 10))
		jobErr = jobError(res, &e.scrub)
	}
	// Record the outcome even if the job's own deadline just passed.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	riverErr, err := w.b.finish(fctx, job, res, jobErr)
	if err != nil {
		deliver(waiting, &Outcome{Result: res, Err: "recording the sync's outcome failed"})
		return e.scrubErr(err)
	}
	deliver(waiting, outcomeOf(job, res, jobErr))
	w.logOutcome(job, res, jobErr)
	if o := e.observe(); jobErr == nil && o != nil {
		o.Synced(job.Args.AcceptedAt)
	}
	return riverErr
}

// outcomeOf is what a waiting sender is told of an attempt.
func outcomeOf(job *river.Job[Args], res *upstream.Result, jobErr error) *Outcome {
	out := &Outcome{Result: res}
	switch {
	case jobErr == nil:
		out.Final = true
	case isCancel(jobErr) || job.Attempt >= job.MaxAttempts:
		out.Final, out.Err = true, jobErr.Error()
	default:
		out.Err = jobErr.Error()
	}
	return out
}

func (w *syncWorker[TDriver, TTx]) logOutcome(job *river.Job[Args], res *upstream.Result, jobErr error) {
	fields := []zap.Field{
		zap.Int64("job_id", job.ID), zap.Int("attempt", job.Attempt),
		zap.String("booking_id", job.Args.BookingKey), zap.String("organization_id", job.Args.OrganizationID),
		zap.Int("upstream_status", res.Status), zap.Duration("upstream_duration", res.Duration),
	}
	if jobErr == nil {
		w.b.q.logger.Info("booking synced", fields...)
		return
	}
	w.b.q.logger.Warn("queued sync failed", append(fields, zap.Error(jobErr))...)
}

// jobError turns a sync result into what River records: nil on success, a
// cancelling error for a permanent rejection (other 4xx: no retry will
// fix it), a plain error (retried) otherwise. The text passes the engine's
// scrubber: an upstream may echo a key, a secret or a password. The
// upstream's Retry-After rides along in the message for the retry policy.
func jobError(res *upstream.Result, s *scrub.Scrubber) error {
	if res.OK() {
		return nil
	}
	msg := s.String(res.Describe())
	if res.Err == nil {
		if d := detailsText(res, s); d != "" {
			msg += ": " + d
		}
	}
	if res.Permanent() {
		return river.JobCancel(errors.New(msg))
	}
	if res.RetryAfter > 0 {
		msg += fmt.Sprintf(" (retry after %ds)", int(res.RetryAfter.Seconds()))
	}
	return errors.New(msg)
}

// detailsText is the start of the upstream's answer, scrubbed before it is
// cut (a secret cut in half would pass the scrubber).
func detailsText(res *upstream.Result, s *scrub.Scrubber) string {
	text := res.Text
	if res.Body != nil {
		text = string(res.Body)
	}
	return upstream.TruncateText([]byte(s.String(text)), maxErrorDetails)
}

// retryPolicy is exponential backoff with jitter: the first retry after
// 2.5–5 s, doubling each time, capped at 15 minutes, and never sooner than
// the upstream's Retry-After asked (also capped).
type retryPolicy struct{}

var retryAfterRe = regexp.MustCompile(`\(retry after (\d+)s\)$`)

// NextRetry implements river.ClientRetryPolicy.
func (retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	d := backoff(job.Attempt)
	if n := len(job.Errors); n > 0 {
		if m := retryAfterRe.FindStringSubmatch(job.Errors[n-1].Error); m != nil {
			secs, _ := strconv.Atoi(m[1])
			d = max(d, min(time.Duration(secs)*time.Second, retryCap))
		}
	}
	return time.Now().Add(d)
}

// backoff is the wait after the given attempt: half fixed, half random.
func backoff(attempt int) time.Duration {
	d := retryCap
	if attempt >= 1 && attempt < 20 {
		d = min(retryBase<<(attempt-1), retryCap)
	}
	return d/2 + rand.N(d/2+1)
}

package queue

// The job path: a worker claims the booking, calls import-bookings, records
// the outcome with the booking row, answers the senders waiting for that
// attempt, and chooses when to retry.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"

	"strconv"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

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
	// slotSnooze is about how long a sync waiting for a max_in_flight
	// slot waits before it looks again, if no release is announced first;
	// slotWaitMax how long it waits in all (at most a twentieth of
	// worker_timeout) before it gives its worker back and snoozes.
	slotSnooze  = 200 * time.Millisecond
	slotWaitMax = 10 * time.Second
	// maxErrorDetails bounds the upstream answer kept in a job's error.
	maxErrorDetails = 512
	// finishAllowance bounds recording an attempt's outcome after its call.
	finishAllowance = 30 * time.Second
	// holdMin and holdMax bound the wait between tries of a held sync.
	holdMin = 5 * time.Second
	holdMax = 5 * time.Minute
)

// syncWorker runs queued syncs.
type syncWorker[TDriver riverdriver.Driver[TTx], TTx any] struct {
	river.WorkerDefaults[Args]
	b           *riverBackend[TDriver, TTx]
	timeout     time.Duration
	maxInFlight int
	// holdBudget is how long a sync is held (see holdFor).
	holdBudget time.Duration
	// notBefore holds, by job ID, the earliest retry an attempt that has
	// just failed asked for (its answer's Retry-After, or the end of an
	// abandoned call's possible run). River asks NextRetry before it
	// records the attempt's error, so the attempt leaves it here.
	notBefore sync.Map
}

// Timeout bounds one sync; River cancels the context after it.
func (w *syncWorker[TDriver, TTx]) Timeout(*river.Job[Args]) time.Duration { return w.timeout }

// Work syncs one booking: it claims the booking (gate.go), calls
// import-bookings, answers the senders waiting for this attempt and
// records the outcome in one transaction with the booking row. A job is
// inserted to become available at the end of its coalescing window
// (windowStart, intake.go); one fetched before it (a replay, a clock
// step) snoozes until then, staying in the booking's waiting slot so that
// webhooks keep merging into it.
func (w *syncWorker[TDriver, TTx]) Work(ctx context.Context, job *river.Job[Args]) error {
	if d := time.Until(job.Args.NotBefore); d > 0 {
		// River keeps a job snoozed for less than its scheduler interval
		// (5 s) available, so it runs as soon as the window ends.
		return river.JobSnooze(d)
	}
	e := w.b.q
	c, ok, err := w.b.claim(ctx, job, w.timeout, w.maxInFlight)
	// Every slot is taken: wait for one to be released (on any instance)
	// and claim again, at once; a slot whose holder died frees up at its
	// until, which only a look now and then finds. After slotWaitMax the
	// worker is given back.
	// The wait comes out of the job's time (River's job timeout runs from
	// the start of Work), so it is bounded by a small share of it.
	waitMax := min(slotWaitMax, w.timeout/20)
	for start := time.Now(); errors.Is(err, errNoSlot) && time.Since(start) < waitMax && ctx.Err() == nil; {
		w.b.db.waitSlot(ctx, slotSnooze/2+rand.N(slotSnooze), job.Priority, start)
		c, ok, err = w.b.claim(ctx, job, w.timeout, w.maxInFlight)
	}
	if errors.Is(err, errPaused) {
		// Recorded, and answered: the senders waiting here hear that it
		// is paused; the job keeps its attempts and its waiting slot.
		deliver(e.waiters.take(job.ID), &Outcome{Result: &upstream.Result{Err: errPaused}, Err: errPaused.Error()})
		return river.JobSnooze(pausedSnooze)
	}
	if errors.Is(err, errNoSlot) || (err != nil && ctx.Err() != nil) {
		return river.JobSnooze(slotSnooze/2 + rand.N(slotSnooze))
	}
	if err != nil {
		return e.scrubErr(err)
	}
	if !ok {
		return river.JobSnooze(busySnooze)
	}
	// The senders waiting for this job are answered by this attempt.
	waiting := e.waiters.take(job.ID)
	up := e.upstreamFor(job.Args.Route)
	started := time.Now()
	actx, span := w.startAttempt(ctx, job)
	var res *upstream.Result
	var jobErr error
	if up == nil {
		res = &upstream.Result{Err: errors.New("no receive_booking handler has this job's route")}
		jobErr = fmt.Errorf("no receive_booking handler is configured for route %q", job.Args.route())
	} else {
		req := upstream.Request{BookingID: job.Args.BookingID, OrganizationID: job.Args.OrganizationIDJSON, EventType: c.eventType,
			Trace: span.Context}
		res = up.Sync(actx, req, "job-"+strconv.FormatInt(job.ID, 10))
		jobErr = jobError(res, &e.scrub)
	}
	endAttempt(span, res, jobErr)
	// The senders waiting for this attempt have their answer now: it is
	// the call's, whatever recording it does (a recording that fails
	// leaves the job to run again, which repeats a sync but loses none).
	// Those waiting on other instances hear it with the recording.
	out := outcomeOf(job, res, jobErr)
	deliver(waiting, out)
	// The retry is planned before the outcome is recorded, so that the
	// booking's timeline says when it comes.
	at := &attempt{started: started, res: res, jobErr: jobErr, held: res.Verdict == upstream.Held}
	if jobErr != nil && !res.Permanent() && (job.Attempt < job.MaxAttempts || at.held) {
		at.next, at.floor = w.planRetry(job, res, ctx.Err() != nil)
	}
	// Record the outcome even if the job's own deadline just passed.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finishAllowance)
	defer cancel()
	riverErr, err := w.finishRetrying(fctx, job, at, w.holdBudget, e.noteOf(job.ID, c.number, out))
	if err != nil {
		w.notBefore.Delete(job.ID) // the attempt runs again; River's policy times it
		return e.scrubErr(err)
	}
	if riverErr == nil {
		w.notBefore.Delete(job.ID) // superseded: no retry
	}
	if isSnooze(riverErr) {
		w.notBefore.Delete(job.ID) // held: the snooze times it
	}
	w.logOutcome(job, res, jobErr, riverErr, at.next)
	if o := e.observe(); o != nil {
		switch {
		case jobErr == nil:
			o.Synced(job.Args.AcceptedAt)
		case riverErr == nil: // superseded by a newer job
		case isSnooze(riverErr):
			o.Held(e.key)
		case res.Permanent():
			o.Failed(w.failure(FailureFinal, job, res))
		case job.Attempt >= job.MaxAttempts:
			o.Failed(w.failure(FailureExhausted, job, res))
		}
	}
	return riverErr
}

// startAttempt ends the job's queue-wait span (from when it became due to
// its claim) and starts the attempt's span, both in the trace of the
// webhook that made the job.
func (w *syncWorker[TDriver, TTx]) startAttempt(ctx context.Context, job *river.Job[Args]) (context.Context, *tracing.Span) {
	due := job.ScheduledAt
	if job.Attempt <= 1 {
		due = job.Args.AcceptedAt
	}
	attrs := trace.WithAttributes(attribute.Int64("job_id", job.ID), attribute.Int("attempt", job.Attempt),
		attribute.String("booking_id", job.Args.BookingKey), attribute.String("organization_id", job.Args.OrganizationID))
	_, wait := tracing.Start(ctx, job.Args.Trace, "receive_booking.queue_wait", tracing.At(due), attrs)
	wait.End()
	return tracing.Start(ctx, job.Args.Trace, "receive_booking.attempt", attrs)
}

// endAttempt records the attempt's outcome on its span.
func endAttempt(span *tracing.Span, res *upstream.Result, jobErr error) {
	span.SetAttributes(attribute.Int("upstream_status", res.Status), attribute.String("verdict", res.Verdict.String()))
	if res.Outcome != "" {
		span.SetAttributes(attribute.String("outcome", res.Outcome))
	}
	if jobErr != nil {
		span.SetStatus(codes.Error, res.Describe())
	}
	span.End()
}

func (w *syncWorker[TDriver, TTx]) failure(kind string, job *river.Job[Args], res *upstream.Result) Failure {
	e := w.b.q
	return Failure{Kind: kind, Queue: e.key, BookingID: job.Args.BookingKey, OrganizationID: job.Args.OrganizationID,
		Outcome: res.Outcome, Reason: e.scrub.String(res.Describe()), JobID: job.ID, Attempt: job.Attempt}
}

// finishRetrying records the attempt's outcome, trying again while the
// database refuses (a full disk, a dropped connection) within ctx: until it
// is recorded, the booking stays claimed by this attempt.
func (w *syncWorker[TDriver, TTx]) finishRetrying(ctx context.Context, job *river.Job[Args], at *attempt, budget time.Duration, note *publication) (error, error) {
	wait := 50 * time.Millisecond
	for {
		riverErr, err := w.b.finish(ctx, job, at, budget, note)
		if err == nil {
			return riverErr, nil
		}
		w.b.q.logger.Warn("recording a sync's outcome failed; retrying", zap.Int64("job_id", job.ID), zap.Error(w.b.q.scrubErr(err)))
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, err
		}
		wait = min(2*wait, 2*time.Second)
	}
}

// outcomeOf is what a waiting sender is told of an attempt.
func outcomeOf(job *river.Job[Args], res *upstream.Result, jobErr error) *Outcome {
	out := &Outcome{Result: res}
	switch {
	case jobErr == nil:
		out.Final = true
	case isCancel(jobErr):
		out.Final, out.Err = true, jobErr.Error()
	case res.Verdict == upstream.Held:
		// Held: tried again without spending an attempt.
		out.Err = jobErr.Error()
	case job.Attempt >= job.MaxAttempts:
		out.Final, out.Err = true, jobErr.Error()
	default:
		out.Err = jobErr.Error()
	}
	return out
}

// logOutcome writes one line per attempt: synced (info), failed and to be
// retried (warn, with the next run), superseded by a newer job (info),
// failed for good or out of attempts (error). No secret: the error text
// was scrubbed.
func (w *syncWorker[TDriver, TTx]) logOutcome(job *river.Job[Args], res *upstream.Result, jobErr, riverErr error, next time.Time) {
	log := w.b.q.logger
	fields := []zap.Field{
		zap.Int64("job_id", job.ID), zap.Int("attempt", job.Attempt), zap.Int("max_attempts", job.MaxAttempts),
		zap.String("booking_id", job.Args.BookingKey), zap.String("organization_id", job.Args.OrganizationID),
		zap.Int("upstream_status", res.Status), zap.Duration("upstream_duration", res.Duration),
	}
	if res.Outcome != "" {
		fields = append(fields, zap.String("outcome", res.Outcome))
	}
	if jobErr == nil {
		log.Info("booking synced", fields...)
		return
	}
	fields = append(fields, zap.String("reason", res.Reason), zap.String("error", jobErr.Error()))
	switch {
	case riverErr == nil:
		log.Info("failed sync superseded by a newer job", fields...)
	case isSnooze(riverErr):
		log.Warn("import-bookings paused syncing; sync held, tried again without spending an attempt",
			append(fields, zap.String("next_run", next.UTC().Format(time.RFC3339)))...)
	case res.Permanent():
		log.Error("sync failed for good; job cancelled", fields...)
	case job.Attempt >= job.MaxAttempts:
		log.Error("sync failed and is out of attempts; job discarded", fields...)
	default:
		log.Warn("sync failed; will retry", append(fields, zap.String("next_run", next.UTC().Format(time.RFC3339)))...)
	}
}

// finalError cancels its job (River finds the JobCancelError it wraps)
// and reads as its cause alone, which is what River records: the
// JobCancelError's own text starts with River's cancelPrefix.
type finalError struct{ cancel error }

func (e finalError) Error() string { return withoutCancelPrefix(e.cancel.Error()) }
func (e finalError) Unwrap() error { return e.cancel }

// jobError turns a sync result into what River records: nil on success, a
// cancelling error for a final failure (no retry will fix it: the job is
// cancelled at once), a plain error (retried) otherwise. The text passes
// the engine's scrubber: an upstream may echo a key, a secret or a
// password.
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
		return finalError{river.JobCancel(errors.New(msg))}
	}
	if res.RetryAfter > 0 {
		msg += fmt.Sprintf(" (Retry-After %s)", res.RetryAfter)
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

// planRetry chooses when a failed attempt's retry comes, and keeps it for
// NextRetry (River asks for it after Work returns, before it records the
// attempt's error; Work drops it if no retry follows): the answer's
// Retry-After (capped) if it sent one, else the backoff; and when the call
// was abandoned (the worker's deadline passed, or Caddy is stopping) while
// import-bookings may still be working on it, not before that run could
// have ended: it keeps running after its caller hangs up, and a retry
// beside it would be a second sync. floor is the part of that an urgent
// webhook may not bring forward (the Retry-After, the abandoned run).
func (w *syncWorker[TDriver, TTx]) planRetry(job *river.Job[Args], res *upstream.Result, abandoned bool) (next, floor time.Time) {
	next = retryPolicy{}.NextRetry(job.JobRow)
	if res.RetryAfter > 0 {
		floor = time.Now().Add(min(res.RetryAfter, retryCap))
		next = floor
	}
	if abandoned && res.Err != nil {
		floor = later(floor, time.Now().Add(-res.Duration).Add(w.timeout))
		next = later(next, floor)
	}
	w.notBefore.Store(job.ID, next)
	return next, floor
}

// NextRetry is the time planRetry chose, or else the retry policy's.
func (w *syncWorker[TDriver, TTx]) NextRetry(job *river.Job[Args]) time.Time {
	if v, ok := w.notBefore.LoadAndDelete(job.ID); ok {
		return v.(time.Time)
	}
	return retryPolicy{}.NextRetry(job.JobRow)
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// holdWait is the wait before a held sync is tried again, from how long
// it has been held: half of that, from holdMin up to holdMax, jittered.
func holdWait(heldFor time.Duration) time.Duration {
	d := min(holdMax, max(holdMin, heldFor/2))
	return d/2 + rand.N(d/2+1)
}

func isSnooze(err error) bool {
	var s *rivertype.JobSnoozeError
	return errors.As(err, &s)
}

// retryPolicy is exponential backoff with jitter: the first retry after
// 2.5–5 s, doubling each time, capped at 15 minutes.
type retryPolicy struct{}

// NextRetry implements river.ClientRetryPolicy.
func (retryPolicy) NextRetry(job *rivertype.JobRow) time.Time {
	return time.Now().Add(backoff(job.Attempt))
}

// backoff is the wait after the given attempt: half fixed, half random.
func backoff(attempt int) time.Duration {
	d := retryCap
	if attempt >= 1 && attempt < 20 {
		d = min(retryBase<<(attempt-1), retryCap)
	}
	return d/2 + rand.N(d/2+1)
}

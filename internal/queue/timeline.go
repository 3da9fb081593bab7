package queue

// A booking's timeline: the answer to "what became of booking 123?". Every
// webhook recorded for it (when, its event type, which credential
// authenticated it: named, never quoted), what its sender was answered,
// every attempt of its syncs (start, duration, upstream status, outcome,
// what came of the job, the next run), and every replay.
//
// Invariant: an event is written in the transaction that makes it true: a
// webhook's with its record, an attempt's with its finish, a replay's with
// the replay. An answer is written just after it is given (it follows a
// commit), in batches that never hold up a sender, and may be lost if the
// process dies first; the others are as durable as what they record.
//
// Events are kept as long as the job that keeps them (job_id): River
// deletes finished jobs after their retention, and the engine's periodic
// prune drops the events of jobs that are gone (pruneEvents). A replay that
// merges a job into the booking's waiting one hands that job's events to
// it. Every text passes the engine's scrubber when it is written, and
// again when it is read.

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
)

// Kinds of timeline events.
const (
	EventWebhook = "webhook"
	EventAnswer  = "answer"
	EventAttempt = "attempt"
	EventReplay  = "replay"
)

// What an attempt came to, in an attempt event's Result.
const (
	ResultSynced     = "synced"
	ResultRetry      = "retry"
	ResultFinal      = "final"      // a final answer: the job is cancelled
	ResultExhausted  = "exhausted"  // the last attempt failed: the job is discarded
	ResultSuperseded = "superseded" // a newer job of the booking carries its sync
	ResultStale      = "stale"      // the booking had passed to a newer attempt
	ResultHeld       = "held"       // import-bookings paused syncing: tried again, no attempt spent
)

// insertEvent writes one event (a finish's, a replay's, a record of one
// webhook): cheaper than insertEvents' arrays for one row.
const insertEvent = `INSERT INTO receive_booking_event (target_id, org, booking, kind, data, at, job_id)
VALUES ($1, $2, $3, $4, $5, $6, $7)`

// Event is one entry of a booking's timeline.
type Event struct {
	// ID orders events written at the same time.
	ID int64 `json:"id"`
	// At is when it happened (an attempt: when it started).
	At   time.Time `json:"at"`
	Kind string    `json:"kind"`
	// Route is the handler route whose target syncs the booking.
	Route string `json:"route"`
	EventData
}

// EventData is what an event says; which fields are set depends on its
// kind.
type EventData struct {
	// JobID is the job the event is about; Attempt an attempt's number.
	JobID   int64 `json:"job_id,omitempty"`
	Attempt int   `json:"attempt,omitempty"`

	// A webhook: its event type, the credential that authenticated it,
	// and whether it merged into a job that was already waiting (a replay:
	// whether it merged into the booking's waiting job).
	EventType  string `json:"event_type,omitempty"`
	Credential string `json:"credential,omitempty"`
	Coalesced  *bool  `json:"coalesced,omitempty"`

	// An answer (or a webhook whose sender was answered when it was
	// recorded): the HTTP status, how the handler counted it (synced,
	// queued, coalesced, failed) and why (final: the sync ended for good;
	// client_gone: the sender left first, and got nothing).
	Status int    `json:"status,omitempty"`
	Answer string `json:"answer,omitempty"`

	// An attempt: how long its call took, what import-bookings answered
	// (0: no answer) and how that was judged (verdict ok, retry, final or hold;
	// its reason), what came of the job (Result*), the failure as the job
	// records it, and when the job runs next. An answer's Outcome and
	// Error are those the sender was given.
	DurationMS     float64    `json:"duration_ms,omitempty"`
	UpstreamStatus int        `json:"upstream_status,omitempty"`
	Outcome        string     `json:"outcome,omitempty"`
	Verdict        string     `json:"verdict,omitempty"`
	Reason         string     `json:"reason,omitempty"`
	Result         string     `json:"result,omitempty"`
	Error          string     `json:"error,omitempty"`
	NextRun        *time.Time `json:"next_run,omitempty"`

	// A replay that merged into the booking's waiting job: the job
	// replayed (JobID is the one that carries it now).
	ReplayedJob int64 `json:"replayed_job,omitempty"`
}

// maxEventText bounds each text of an event (an upstream's answer is cut,
// as in a job's error).
const maxEventText = maxErrorDetails

// scrubbed returns d with every text scrubbed and cut.
func (d EventData) scrubbed(s func(string) string) EventData {
	for _, p := range []*string{&d.EventType, &d.Credential, &d.Answer, &d.Outcome, &d.Verdict, &d.Reason, &d.Result, &d.Error} {
		*p = upstream.TruncateText([]byte(s(*p)), maxEventText)
	}
	return d
}

// eventRow is an event to write: its booking and the job that keeps it.
type eventRow struct {
	at                        time.Time
	route, org, booking, kind string
	keep                      int64
	data                      EventData
}

// writeEvents writes events in tx, their texts scrubbed.
func (b *riverBackend[TDriver, TTx]) writeEvents(ctx context.Context, tx TTx, rows []eventRow) error {
	if len(rows) == 0 {
		return nil
	}
	n := len(rows)
	routes, orgs, bookings, kinds, data := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	ats, keeps := make([]int64, n), make([]int64, n)
	for i, r := range rows {
		raw, err := json.Marshal(r.data.scrubbed(b.q.scrub.String))
		if err != nil {
			return err
		}
		routes[i], orgs[i], bookings[i], kinds[i], data[i] = r.route, r.org, r.booking, r.kind, string(raw)
		ats[i], keeps[i] = r.at.UnixNano(), r.keep
	}
	query, args := insertEvent, []any{routes[0], orgs[0], bookings[0], kinds[0], data[0], ats[0], keeps[0]}
	if n > 1 {
		query = b.db.sql().insertEvents
		var err error
		if args, err = b.db.columns(routes, orgs, bookings, kinds, data, ats, keeps); err != nil {
			return err
		}
	}
	if err := b.db.exec(ctx, tx, query, args...); err != nil {
		return fmt.Errorf("writing the booking timeline: %w", err)
	}
	return nil
}

// webhookEvents are the events of a recorded batch (JobID and Coalesced
// set). A sender that does not wait was answered by the record itself.
func webhookEvents(batch []*Entry) []eventRow {
	rows := make([]eventRow, len(batch))
	for i, r := range batch {
		coalesced := r.Coalesced
		d := EventData{JobID: r.JobID, EventType: r.Webhook.EventType, Credential: r.Credential, Coalesced: &coalesced}
		if r.AnswerOnRecord != 0 {
			d.Status, d.Answer = r.AnswerOnRecord, "queued"
			if coalesced {
				d.Answer = "coalesced"
			}
		}
		rows[i] = eventRow{at: r.AcceptedAt, route: r.Route, org: r.Webhook.OrganizationID, booking: r.Webhook.BookingKey,
			kind: EventWebhook, keep: r.JobID, data: d}
	}
	return rows
}

// attempt is one attempt of a sync, as finish records it.
type attempt struct {
	started time.Time
	res     *upstream.Result
	// jobErr is what River is told (nil: synced); next is the retry
	// planned if it fails and may run again, floor the earliest it may
	// come whatever arrives meanwhile (zero: none).
	jobErr      error
	next, floor time.Time
	// held: import-bookings answered that it paused syncing (finishTx
	// decides whether the sync is held, within the hold budget).
	held bool
}

// attemptEvent is an attempt's event; fate is finishTx's (ResultStale,
// ResultSuperseded or "").
func attemptEvent(job *river.Job[Args], a *attempt, fate string) eventRow {
	res := a.res
	d := EventData{JobID: job.ID, Attempt: job.Attempt, DurationMS: float64(res.Duration.Microseconds()) / 1000,
		UpstreamStatus: res.Status, Outcome: res.Outcome, Verdict: res.Verdict.String(), Reason: res.Reason}
	if a.jobErr != nil {
		d.Error = a.jobErr.Error() // a finalError's is without River's prefix
	}
	switch {
	case fate != "":
		d.Result = fate
	case a.jobErr == nil:
		d.Result = ResultSynced
	case isCancel(a.jobErr):
		d.Result = ResultFinal
	case job.Attempt >= job.MaxAttempts:
		d.Result = ResultExhausted
	default:
		d.Result = ResultRetry
	}
	if (d.Result == ResultRetry || d.Result == ResultHeld) && !a.next.IsZero() {
		next := a.next.UTC()
		d.NextRun = &next
	}
	return eventRow{at: a.started, route: job.Args.route(), org: job.Args.OrganizationID, booking: job.Args.BookingKey,
		kind: EventAttempt, keep: job.ID, data: d}
}

// Answer is what the sender of a recorded webhook was answered, for the
// booking's timeline (see Engine.Answered).
type Answer struct {
	// Status is the HTTP status (0: none, the sender had left).
	Status int
	// Answer is how the handler counted it (synced, queued, coalesced,
	// failed); Reason why (final, client_gone); Outcome and Error the
	// outcome and sync_error the sender was given.
	Answer, Reason, Outcome, Error string
}

const (
	// answerQueue bounds the answers waiting to be written; beyond it
	// they are dropped (counted, and logged with the next batch) rather
	// than hold up a sender.
	answerQueue = 4096
	// answerFlush is how long answers gather before they are written:
	// one transaction for all that came meanwhile, rather than one per
	// sender (a write transaction is most of a webhook's cost on SQLite).
	answerFlush = 250 * time.Millisecond
)

// Answered adds what the sender of req (recorded) was answered to its
// booking's timeline. It never blocks: answers gather for answerFlush and
// are written together, in a transaction that need not reach the disk at
// once (SQLite: see groupCommit).
func (e *Engine) Answered(req *Entry, a Answer) {
	if req.JobID == 0 {
		return
	}
	row := eventRow{at: time.Now(), route: req.Route, org: req.Webhook.OrganizationID, booking: req.Webhook.BookingKey,
		kind: EventAnswer, keep: req.JobID,
		data: EventData{JobID: req.JobID, Status: a.Status, Answer: a.Answer, Reason: a.Reason, Outcome: a.Outcome, Error: a.Error}}
	select {
	case e.answers <- row:
	default:
		e.answersDropped.Add(1)
	}
}

// answerLoop writes the answers in batches, answerFlush after the first
// of each; at stop it writes those still waiting.
func (e *Engine) answerLoop() {
	for {
		var first eventRow
		select {
		case first = <-e.answers:
		case <-e.stop:
			e.flushAnswers()
			return
		}
		select {
		case <-time.After(answerFlush):
		case <-e.stop:
		}
		e.writeAnswers(gather(first, e.answers, answerQueue))
	}
}

// flushAnswers writes every answer waiting.
func (e *Engine) flushAnswers() {
	for {
		select {
		case first := <-e.answers:
			e.writeAnswers(gather(first, e.answers, answerQueue))
		default:
			return
		}
	}
}

func (e *Engine) writeAnswers(rows []eventRow) {
	if n := e.answersDropped.Swap(0); n > 0 {
		e.logger.Warn("answers left out of booking timelines: too many waiting to be written", zap.Int64("dropped", n))
	}
	b, err := e.current()
	if err != nil {
		return // the database is away: webhooks are not recorded either
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.recordAnswers(ctx, rows); err != nil {
		e.logger.Warn("writing answers to booking timelines", zap.Int("answers", len(rows)), zap.Error(e.scrubErr(err)))
	}
}

// recordAnswers writes answers in a transaction of their own, which need
// not reach the disk at once (SQLite; see groupCommit).
func (b *riverBackend[TDriver, TTx]) recordAnswers(ctx context.Context, rows []eventRow) error {
	return b.writeOpts(ctx, true, func(ctx context.Context, tx TTx) error { return b.writeEvents(ctx, tx, rows) })
}

// handOverEvents makes job into keep the events job from kept: a replay
// merged from into the booking's waiting job into, and deleted from.
func (b *riverBackend[TDriver, TTx]) handOverEvents(ctx context.Context, tx TTx, a *Args, from, into int64) error {
	if err := b.db.exec(ctx, tx, `UPDATE receive_booking_event SET job_id = $1 WHERE booking = $2 AND org = $3 AND job_id = $4`,
		into, a.BookingKey, a.OrganizationID, from); err != nil {
		return fmt.Errorf("handing over the booking timeline: %w", err)
	}
	return nil
}

// dropEvents deletes the events a deleted job kept.
func (b *riverBackend[TDriver, TTx]) dropEvents(ctx context.Context, tx TTx, job *rivertype.JobRow) error {
	var a Args
	if err := json.Unmarshal(job.EncodedArgs, &a); err != nil {
		return fmt.Errorf("reading job args: %w", err)
	}
	if err := b.db.exec(ctx, tx, `DELETE FROM receive_booking_event WHERE booking = $1 AND org = $2 AND job_id = $3`,
		a.BookingKey, a.OrganizationID, job.ID); err != nil {
		return fmt.Errorf("dropping the job's timeline: %w", err)
	}
	return nil
}

// replayEvent is a replay's event: job id replayed, carried by into.
func replayEvent(a *Args, id int64, res *ReplayResult) eventRow {
	coalesced := res.Coalesced
	d := EventData{JobID: res.JobID, Coalesced: &coalesced}
	if res.Coalesced {
		d.ReplayedJob = id
	}
	return eventRow{at: time.Now(), route: a.route(), org: a.OrganizationID, booking: a.BookingKey, kind: EventReplay,
		keep: res.JobID, data: d}
}

// Timeline reading (the admin API).

// MaxTimelineEvents bounds the events one read returns.
const MaxTimelineEvents = 1000

// BookingEvents reads a booking's events of one organization, newest
// first, at most limit; their texts pass the scrubber again (a secret
// configured since they were written is not shown either).
func (b *riverBackend[TDriver, TTx]) BookingEvents(ctx context.Context, org, booking string, limit int) ([]Event, error) {
	rows, err := b.db.queryRows(ctx, `SELECT id, at, target_id, kind, data FROM receive_booking_event
		WHERE booking = $1 AND org = $2 ORDER BY at DESC, id DESC LIMIT $3`, booking, org, min(limit, MaxTimelineEvents))
	if err != nil {
		return nil, fmt.Errorf("reading the booking timeline: %w", err)
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var ev Event
		var at int64
		var data string
		if err := rows.Scan(&ev.ID, &at, &ev.Route, &ev.Kind, &data); err != nil {
			return nil, fmt.Errorf("reading the booking timeline: %w", err)
		}
		ev.At = time.Unix(0, at).UTC()
		if err := json.Unmarshal([]byte(data), &ev.EventData); err != nil {
			return nil, fmt.Errorf("reading the booking timeline: event %d: %w", ev.ID, err)
		}
		ev.EventData = ev.EventData.scrubbed(b.q.scrub.String)
		out = append(out, ev)
	}
	return out, rows.Err()
}

// BookingOrganizations names the organizations (at most 20) that have
// events for a booking id.
func (b *riverBackend[TDriver, TTx]) BookingOrganizations(ctx context.Context, booking string) ([]string, error) {
	rows, err := b.db.queryRows(ctx, `SELECT DISTINCT org FROM receive_booking_event WHERE booking = $1 ORDER BY org LIMIT 20`, booking)
	if err != nil {
		return nil, fmt.Errorf("reading the booking timeline: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var org string
		if err := rows.Scan(&org); err != nil {
			return nil, err
		}
		out = append(out, org)
	}
	return out, rows.Err()
}

// JobsByID reads the jobs of the queue with these ids that still exist.
func (b *riverBackend[TDriver, TTx]) JobsByID(ctx context.Context, ids []int64) ([]*Job, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	res, err := b.cl().JobList(ctx, river.NewJobListParams().Queues(riverQueueName).IDs(ids...).
		OrderBy(river.JobListOrderByID, river.SortOrderDesc).First(len(ids)))
	if err != nil {
		return nil, err
	}
	return jobsOf(res.Jobs), nil
}

// Pruning.

const (
	// pruneWindow is how many events one step of pruneEvents reads.
	pruneWindow = 4096
	// pruneSteps bounds the steps of one prune (every statsInterval).
	pruneSteps = 16
)

// pruneEvents drops the events whose job is gone. It walks the events
// written before the horizon (the shortest retention ago: no job River
// removed can have a younger one) in id order, a window at a time, from
// where the previous prune stopped; at the horizon or the table's end it
// starts over with the next prune. Each prune reads at most pruneSteps
// windows, so it holds the database briefly whatever the table's size; a
// long history of kept jobs only makes the walk take several prunes.
func (b *riverBackend[TDriver, TTx]) pruneEvents(ctx context.Context, horizon time.Time) error {
	return b.pruneWalk(ctx, horizon, pruneWindow, pruneSteps)
}

// pruneWalk is pruneEvents in steps of window events.
func (b *riverBackend[TDriver, TTx]) pruneWalk(ctx context.Context, horizon time.Time, window, steps int) error {
	b.pruneMu.Lock()
	defer b.pruneMu.Unlock()
	for range steps {
		last, restart, err := b.pruneWindowEnd(ctx, horizon, window)
		if err != nil {
			return err
		}
		if last > b.pruneFrom {
			if err := b.execPool(ctx, `DELETE FROM receive_booking_event WHERE id > $1 AND id <= $2
				AND NOT EXISTS (SELECT 1 FROM river_job WHERE river_job.id = receive_booking_event.job_id)`, b.pruneFrom, last); err != nil {
				return fmt.Errorf("pruning booking timelines: %w", err)
			}
			b.pruneFrom = last
		}
		if restart {
			b.pruneFrom = 0
			return nil
		}
	}
	return nil
}

// pruneWindowEnd reads the next window after pruneFrom and returns the
// last id in it written before the horizon, and whether the walk reached
// the horizon or the table's end.
func (b *riverBackend[TDriver, TTx]) pruneWindowEnd(ctx context.Context, horizon time.Time, window int) (last int64, restart bool, err error) {
	rows, err := b.db.queryRows(ctx, `SELECT id, at FROM receive_booking_event WHERE id > $1 ORDER BY id LIMIT $2`, b.pruneFrom, window)
	if err != nil {
		return 0, false, fmt.Errorf("pruning booking timelines: %w", err)
	}
	defer rows.Close()
	n, h := 0, horizon.UnixNano()
	for rows.Next() {
		var id, at int64
		if err := rows.Scan(&id, &at); err != nil {
			return 0, false, err
		}
		n++
		if at >= h {
			return last, true, nil
		}
		last = id
	}
	return last, n < window, rows.Err()
}

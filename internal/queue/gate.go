package queue

// The per-booking gate: at most one sync per booking at a time, on every
// instance, whatever the path (a worker, a retry, a rescue, a replay, a
// reload's second client, a restart). It reads top to bottom: the row,
// the claim before a call, the finish after it, the rescue of a claim
// whose holder died.
//
// The invariant. A booking (route, organization, booking id) has one row
// in receive_booking_booking. Its running_job_id and running_attempt name
// the one attempt that may call import-bookings for it, and running_until
// the latest time that call can still be running (its claim's time +
// worker_timeout + claimMargin: River cancels a call at worker_timeout,
// and worker_timeout exceeds the longest an Edge Function runs, so the
// run upstream has stopped by then too). An attempt calls only after its
// claim has committed, durably; a claim is refused while another attempt
// holds the row and its running_until has not passed, however that
// attempt's process fared. Every read and write of the row happens under
// its lock (FOR UPDATE on PostgreSQL; SQLite's one writer), in the same
// transaction as the River rows it decides about.
//
// With it, two more rules:
//   - No accepted change is missed: the row's waiting_job_id names the
//     booking's job that has not started, into which webhooks merge. A
//     claim takes its job out of that slot, so a webhook that arrives
//     after the claim (after the sync read the booking) makes a new job.
//   - At most max_in_flight calls at once across instances: a claim takes
//     one of the slots in the same transaction, held until the same time
//     (PostgreSQL; on SQLite the workers are capped instead: dialect).
//
// River knows none of this: its unique jobs cannot express the rule (the
// states a unique job must cover include running, so a webhook meeting a
// running sync would merge into it and its change could be missed).

import (
	"cmp"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
	"go.uber.org/zap"
)

// bookingRow is a booking's row, as read under its lock.
type bookingRow struct {
	eventType string
	waiting   sql.NullInt64
	running   sql.NullInt64
	// attempt is the running job's attempt; until is when its call may
	// have run at the latest (unix nanoseconds).
	attempt sql.NullInt64
	until   sql.NullInt64
	// heldSince is since when import-bookings' pause has held the
	// booking's sync (unix nanoseconds; see hold).
	heldSince sql.NullInt64
}

// holds reports whether the row's running claim belongs to this attempt.
func (r *bookingRow) holds(job *river.Job[Args]) bool {
	return r.running.Valid && r.running.Int64 == job.ID && r.attempt.Valid && r.attempt.Int64 == int64(job.Attempt)
}

// lockBooking locks a booking's row, making it if it is gone (a job
// replayed by an operator after its row was cleaned up).
func (b *riverBackend[TDriver, TTx]) lockBooking(ctx context.Context, tx TTx, a *Args) (*bookingRow, error) {
	if err := b.db.exec(ctx, tx, `INSERT INTO receive_booking_booking (target_id, org, booking, event_type)
		VALUES ($1, $2, $3, $4) ON CONFLICT (target_id, org, booking) DO NOTHING`,
		a.route(), a.OrganizationID, a.BookingKey, a.EventType); err != nil {
		return nil, fmt.Errorf("recording booking: %w", err)
	}
	return b.readBooking(ctx, tx, a)
}

// readBooking reads and locks a booking's row; a row that is gone reads
// as one that nothing waits for or runs.
func (b *riverBackend[TDriver, TTx]) readBooking(ctx context.Context, tx TTx, a *Args) (*bookingRow, error) {
	row := &bookingRow{}
	err := b.db.queryRow(ctx, tx, `SELECT event_type, waiting_job_id, running_job_id, running_attempt, running_until, held_since
		FROM receive_booking_booking WHERE target_id = $1 AND org = $2 AND booking = $3`+b.db.sql().lockRow,
		a.route(), a.OrganizationID, a.BookingKey).Scan(&row.eventType, &row.waiting, &row.running, &row.attempt, &row.until, &row.heldSince)
	if b.db.isNoRows(err) {
		return row, nil
	}
	if err != nil {
		return nil, fmt.Errorf("locking booking: %w", err)
	}
	return row, nil
}

// The claim.

var (
	// errBusy undoes a claim whose booking another attempt holds.
	errBusy = errors.New("booking busy")
	// errNoSlot says every max_in_flight slot is taken.
	errNoSlot = errors.New("no free sync slot")
)

// claimMargin is added to worker_timeout in a claim's until, for clocks.
const claimMargin = 2 * time.Second

// slotClaim is an attempt taking a max_in_flight slot until a time (unix
// nanoseconds).
type slotClaim struct {
	jobID   int64
	attempt int
	until   int64
}

// claimed is what a claim tells its attempt: the booking's latest event
// type, and the claim's number (0 where one instance is all; see
// waiters).
type claimed struct {
	eventType string
	number    int64
}

// claimBooking makes an attempt the booking's running sync and takes its
// job out of the waiting slot.
const claimBooking = `UPDATE receive_booking_booking SET running_job_id = $1, running_attempt = $5, running_until = $6,
	waiting_job_id = CASE WHEN waiting_job_id = $1 THEN NULL ELSE waiting_job_id END
	WHERE target_id = $2 AND org = $3 AND booking = $4`

// claim makes job's attempt the booking's running sync. ok is false while
// another attempt holds the booking; errNoSlot says every max_in_flight
// slot is held; errPaused that an operator's pause covers the booking.
// The claim commits durably before it returns: only then
// may the attempt call.
func (b *riverBackend[TDriver, TTx]) claim(ctx context.Context, job *river.Job[Args], workerTimeout time.Duration, maxInFlight int) (c claimed, ok bool, err error) {
	err = b.write(ctx, func(ctx context.Context, tx TTx) error {
		// An operator's pause committed before this claim stops it
		// (pause.go), whichever instance made it.
		if paused, err := b.pausedFor(ctx, tx, &job.Args); err != nil || paused {
			return cmp.Or(err, errPaused)
		}
		row, err := b.lockBooking(ctx, tx, &job.Args)
		if err != nil {
			return err
		}
		busy, err := b.heldByAnother(ctx, tx, row, job)
		if err != nil {
			return err
		}
		if busy {
			return errBusy
		}
		// The call is bounded by the job's timeout (River cancels it then);
		// recording its outcome may take longer, but a newer claim makes that
		// recording stale, which finish handles.
		until := time.Now().Add(workerTimeout + claimMargin).UnixNano()
		got, err := b.db.takeSlot(ctx, tx, slotClaim{job.ID, job.Attempt, until}, maxInFlight)
		if err != nil {
			return err
		}
		if !got {
			return errNoSlot
		}
		if c.number, err = b.db.claim(ctx, tx, job.ID, job.Args.route(), job.Args.OrganizationID, job.Args.BookingKey,
			job.Attempt, until); err != nil {
			return fmt.Errorf("claiming booking: %w", err)
		}
		c.eventType = row.eventType
		return nil
	})
	if errors.Is(err, errBusy) {
		return claimed{}, false, nil
	}
	if err != nil {
		return claimed{}, false, err
	}
	return c, true, nil
}

// heldByAnother reports whether another attempt holds the booking: while
// its call may still be running (until its worker_timeout and the time to
// record it have passed, even if its process died or River rescued it:
// import-bookings goes on without its caller), or, for rows from before
// running_until was kept, while River says its job runs.
func (b *riverBackend[TDriver, TTx]) heldByAnother(ctx context.Context, tx TTx, row *bookingRow, job *river.Job[Args]) (bool, error) {
	if !row.running.Valid || row.holds(job) {
		return false, nil
	}
	if row.until.Valid {
		return time.Now().UnixNano() < row.until.Int64, nil
	}
	if row.running.Int64 == job.ID {
		return false, nil
	}
	return b.jobInStates(ctx, tx, row.running.Int64, jobIsRunning)
}

// The finish.

// finish releases the booking after a job's attempt: on a retriable
// failure the job goes back to the waiting slot (webhooks merge into its
// retry), unless a newer job already waits for the booking, which then
// carries the sync and this one completes as superseded. It returns the
// error River should record (River's completer then records the job's
// state, in batches), or the database's error. If the process dies
// between the two, the job is still running to River and runs again once
// its call can no longer be running: a sync repeated, none lost. The
// attempt's event joins the booking's timeline in the same transaction.
// note, if set, is the attempt's outcome for senders waiting on other
// instances: published in the same transaction, so it is sent once, when
// the outcome is recorded.
func (b *riverBackend[TDriver, TTx]) finish(ctx context.Context, job *river.Job[Args], at *attempt, holdBudget time.Duration, note *publication) (record, err error) {
	// A finish need not reach the disk before the next durable commit: if
	// power fails first, the job is still running in River's (durable)
	// fetch and the booking still claimed, so it runs again once its call
	// can no longer be running; a sync repeated, none lost or overlapped.
	err = b.writeOpts(ctx, true, func(ctx context.Context, tx TTx) error {
		var err error
		var fate string
		if record, fate, err = b.finishTx(ctx, tx, job, at, holdBudget); err != nil {
			return err
		}
		if err := b.writeEvents(ctx, tx, []eventRow{attemptEvent(job, at, fate)}); err != nil {
			return err
		}
		return b.db.publish(ctx, tx, note)
	})
	if err != nil {
		return nil, err
	}
	return record, nil
}

// finishTx releases the booking; fate is ResultStale, ResultSuperseded
// or ResultHeld when the attempt's own outcome did not decide the job's.
func (b *riverBackend[TDriver, TTx]) finishTx(ctx context.Context, tx TTx, job *river.Job[Args], at *attempt, holdBudget time.Duration) (record error, fate string, err error) {
	jobErr := at.jobErr
	// The claim made the row, and nothing removes a row while a sync
	// runs: read it (a missing row reads as a claim passed on).
	row, err := b.readBooking(ctx, tx, &job.Args)
	if err != nil {
		return nil, "", err
	}
	a := &job.Args
	if !row.holds(job) {
		// A stale attempt (River rescued it, and a newer attempt holds
		// the booking now): leave the row to the newer one, and let the
		// job be retried rather than reported done.
		b.q.logger.Warn("sync finished after its claim passed to a newer attempt", zap.Int64("job_id", job.ID), zap.Int("attempt", job.Attempt))
		if jobErr == nil || isCancel(jobErr) {
			return errors.New("stale attempt: the booking is claimed by a newer one"), ResultStale, nil
		}
		return jobErr, ResultStale, nil
	}
	retriable := jobErr != nil && !isCancel(jobErr)
	superseded := retriable && row.waiting.Valid && row.waiting.Int64 != job.ID
	if superseded {
		if superseded, err = b.jobInStates(ctx, tx, row.waiting.Int64, jobIsMergeable); err != nil {
			return nil, "", err
		}
	}
	h := hold(row, at, holdBudget, time.Now())
	// A job that will run again takes the waiting slot back; on its last
	// attempt it will be discarded, so it does not (a held one spends no
	// attempt).
	backToWaiting := 0
	if retriable && !superseded && (job.Attempt < job.MaxAttempts || h.holding) {
		backToWaiting = 1
	}
	var floor *int64
	if backToWaiting == 1 && !at.floor.IsZero() && !h.holding {
		f := at.floor.UnixNano()
		floor = &f
	}
	if backToWaiting == 0 && !row.waiting.Valid {
		// Released, nothing waits: the row goes (the next webhook makes
		// it again).
		if err := b.db.exec(ctx, tx, `DELETE FROM receive_booking_booking WHERE target_id = $1 AND org = $2 AND booking = $3`,
			a.route(), a.OrganizationID, a.BookingKey); err != nil {
			return nil, "", fmt.Errorf("releasing booking: %w", err)
		}
	} else {
		err = b.db.exec(ctx, tx, `UPDATE receive_booking_booking SET
			waiting_job_id = CASE WHEN $5 = 1 THEN $1 ELSE waiting_job_id END,
			running_job_id = NULL, running_attempt = NULL, running_until = NULL, retry_floor = $6, held_since = $7
			WHERE target_id = $2 AND org = $3 AND booking = $4`, job.ID, a.route(), a.OrganizationID, a.BookingKey, backToWaiting,
			floor, h.since)
		if err != nil {
			return nil, "", fmt.Errorf("releasing booking: %w", err)
		}
	}
	if err := b.db.releaseSlot(ctx, tx, job.ID, job.Attempt); err != nil {
		return nil, "", err
	}
	switch {
	case superseded:
		return nil, ResultSuperseded, nil // the newer job carries the sync; logged by the worker
	case h.holding:
		at.next = time.Now().Add(h.wait)
		return river.JobSnooze(h.wait), ResultHeld, nil
	}
	return jobErr, "", nil
}

// held is what hold decides of an attempt.
type held struct {
	// holding: the sync is held (snoozed: no attempt spent), wait long.
	holding bool
	wait    time.Duration
	// since is the booking's held_since to keep (nil: not held).
	since *int64
}

// hold decides whether an attempt's sync is held. import-bookings'
// mutating_sync_paused is its kill switch: the sync did not happen, and
// none will until it is turned off, so retries would only spend the
// attempts (a pause longer than them would discard every change made
// during it). A held sync is tried again with a bounded wait, without
// spending an attempt, for the hold budget from the first held answer;
// after it, its answers spend attempts again (and it ends in the dead
// letter, where it shows). Any other answer ends the hold.
func hold(row *bookingRow, at *attempt, budget time.Duration, now time.Time) held {
	if !at.held {
		return held{}
	}
	since := now.UnixNano()
	if row.heldSince.Valid {
		since = row.heldSince.Int64
	}
	h := held{since: &since}
	if heldFor := now.Sub(time.Unix(0, since)); heldFor <= budget {
		h.holding, h.wait = true, holdWait(heldFor)
	}
	return h
}

func isCancel(err error) bool {
	var c *rivertype.JobCancelError
	return errors.As(err, &c)
}

// The rescue.

// A claim whose holder died is never released: it lapses at its until,
// and River makes the job available again, no sooner, in one of two ways.
// River's rescuer takes a job that has been running longer than any sync
// may (RescueStuckJobsAfter, client.go); and at start an instance takes
// back its own interrupted jobs at once (recoverInterrupted): each runs at
// once if its attempt made no call, else from when its call could have
// ended (import-bookings goes on after its caller dies, and a retry beside
// it would be a second sync).

// recoverInterrupted makes available again the syncs this instance was
// running when it last stopped without finishing them (a crash, a kill
// -9): it has just started, so none of them can still be running here.
// Jobs of other instances sharing the database are theirs to finish, or
// the rescuer's.
func (b *riverBackend[TDriver, TTx]) recoverInterrupted(ctx context.Context) error {
	if err := b.execPool(ctx, b.db.sql().recoverJobs, riverQueueName, b.clientID, b.q.rq.WorkerTimeout.Seconds()); err != nil {
		return fmt.Errorf("recovering interrupted jobs: %w", err)
	}
	return nil
}

// claimedByJob says, in recoverJobs, that the interrupted attempt of a
// river_job row had claimed its booking: its call may have been made,
// and may still run (import-bookings goes on after its caller dies), so
// the retry waits until that call could have ended. An attempt without
// a claim made no call (it was paused, found the booking busy, or died
// before its claim committed): it runs again at once. A claim of unknown
// attempt (a row from before running_attempt) counts as this one's.
const claimedByJob = `EXISTS (SELECT 1 FROM receive_booking_booking b
		WHERE b.running_job_id = river_job.id AND coalesce(b.running_attempt, river_job.attempt) = river_job.attempt)`

// Job states as the gate reads them.

// mergeable says, of a river_job row, that a webhook may merge into it:
// it has not started, or it failed and will run again. A job leaves the
// booking's waiting slot before its sync starts, so "running" here is a
// job that River has fetched but not yet claimed the booking for, or one
// that has just failed and declared it will retry. A running job on its
// last attempt is not mergeable: River decides from the row it fetched
// that it will not run again if it fails, so a change merged into it could
// get no attempt of its own (the webhook makes a new job instead).
const mergeable = `(river_job.state IN ('available','scheduled','retryable','pending')
	OR (river_job.state = 'running' AND river_job.attempt < river_job.max_attempts))`

// Queries that ask whether a job is in a set of states.
const (
	jobIsMergeable = `SELECT count(*) FROM river_job WHERE id = $1 AND ` + mergeable
	jobIsRunning   = `SELECT count(*) FROM river_job WHERE id = $1 AND state = 'running'`
)

func (b *riverBackend[TDriver, TTx]) jobInStates(ctx context.Context, tx TTx, id int64, query string) (bool, error) {
	var n int
	if err := b.db.queryRow(ctx, tx, query, id).Scan(&n); err != nil {
		return false, fmt.Errorf("reading job state: %w", err)
	}
	return n > 0, nil
}

package queue

// The job store, as the admin API and the commands see it: counts,
// listing, reading, deleting and replaying jobs. Replays keep to the
// per-booking gate's rule (gate.go): a replay merges into the booking's
// waiting sync, or becomes it.

import (
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

func (b *riverBackend[TDriver, TTx]) setWaiting(ctx context.Context, tx TTx, target, org, booking string, id int64) error {
	return b.db.exec(ctx, tx, `UPDATE receive_booking_booking SET waiting_job_id = $1
		WHERE target_id = $2 AND org = $3 AND booking = $4`, id, target, org, booking)
}

// stats counts the jobs by state and finds the oldest pending one and the
// last sync.
func (b *riverBackend[TDriver, TTx]) stats(ctx context.Context) (*Stats, error) {
	counts, err := b.countByState(ctx)
	if err != nil {
		return nil, fmt.Errorf("counting jobs: %w", err)
	}
	s := &Stats{Counts: counts}
	rows, err := b.db.queryRows(ctx, b.db.sql().oldestPending, riverQueueName)
	if err != nil {
		return nil, fmt.Errorf("finding oldest job: %w", err)
	}
	var age sql.NullFloat64
	if rows.Next() {
		err = rows.Scan(&age)
	}
	rows.Close() // on SQLite the one connection is free again
	if err = cmp.Or(err, rows.Err()); err != nil {
		return nil, fmt.Errorf("finding oldest job: %w", err)
	}
	s.OldestPendingSeconds = age.Float64
	if err := b.heldAndPaused(ctx, s); err != nil {
		return nil, err
	}
	return s, b.lastSync(ctx, s)
}

// heldAndPaused sets the held bookings (a partial index covers them) and
// the pauses.
func (b *riverBackend[TDriver, TTx]) heldAndPaused(ctx context.Context, s *Stats) error {
	rows, err := b.db.queryRows(ctx, `SELECT count(*) FROM receive_booking_booking WHERE held_since IS NOT NULL`)
	if err != nil {
		return fmt.Errorf("counting held syncs: %w", err)
	}
	if rows.Next() {
		err = rows.Scan(&s.Held)
	}
	rows.Close()
	if err = cmp.Or(err, rows.Err()); err != nil {
		return fmt.Errorf("counting held syncs: %w", err)
	}
	s.Paused, err = b.pauses(ctx)
	return err
}

// lastSync sets the last successful sync of any instance sharing the
// queue (an index on state and finalized_at covers it).
func (b *riverBackend[TDriver, TTx]) lastSync(ctx context.Context, s *Stats) error {
	last, err := b.cl().JobList(ctx, river.NewJobListParams().Queues(riverQueueName).
		States(rivertype.JobStateCompleted).OrderBy(river.JobListOrderByFinalizedAt, river.SortOrderDesc).First(1))
	if err != nil {
		return fmt.Errorf("finding last sync: %w", err)
	}
	if len(last.Jobs) > 0 && last.Jobs[0].FinalizedAt != nil {
		t := last.Jobs[0].FinalizedAt.UTC()
		s.LastSyncAt = &t
	}
	return nil
}

func (b *riverBackend[TDriver, TTx]) countByState(ctx context.Context) (map[string]int64, error) {
	rows, err := b.db.queryRows(ctx, b.db.sql().countByState, riverQueueName)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	counts := make(map[string]int64, len(States))
	for _, st := range States {
		counts[st] = 0
	}
	for rows.Next() {
		var state string
		var n int64
		if err := rows.Scan(&state, &n); err != nil {
			return nil, err
		}
		counts[state] = n
	}
	return counts, rows.Err()
}

// ListJobs lists the queue's jobs in ascending id order.
func (b *riverBackend[TDriver, TTx]) ListJobs(ctx context.Context, lp ListParams) ([]*Job, error) {
	p := river.NewJobListParams().Queues(riverQueueName).OrderBy(river.JobListOrderByID, river.SortOrderAsc).First(lp.Limit)
	if len(lp.States) > 0 {
		states := make([]rivertype.JobState, len(lp.States))
		for i, s := range lp.States {
			states[i] = rivertype.JobState(s)
		}
		p = p.States(states...)
	}
	if lp.After > 0 {
		p = p.Where("id > @after", river.NamedArgs{"after": lp.After})
	}
	if lp.Booking != "" {
		q := b.db.sql()
		p = p.Where(q.argField+"booking_key"+q.argFieldEnd+" = @booking", river.NamedArgs{"booking": lp.Booking})
	}
	res, err := b.cl().JobList(ctx, p)
	if err != nil {
		return nil, err
	}
	return jobsOf(res.Jobs), nil
}

// GetJob reads one of the queue's jobs.
func (b *riverBackend[TDriver, TTx]) GetJob(ctx context.Context, id int64) (*Job, error) {
	row, err := b.getRow(ctx, id)
	if err != nil {
		return nil, err
	}
	return jobOf(row), nil
}

// getRow reads River's row of one of the queue's jobs (a job of another
// River user of the database is not found).
func (b *riverBackend[TDriver, TTx]) getRow(ctx context.Context, id int64) (*rivertype.JobRow, error) {
	row, err := b.cl().JobGet(ctx, id)
	if err != nil {
		return nil, storeErr(err)
	}
	if row.Queue != riverQueueName {
		return nil, ErrJobNotFound
	}
	return row, nil
}

// DeleteJob drops a job and the timeline events it keeps.
func (b *riverBackend[TDriver, TTx]) DeleteJob(ctx context.Context, id int64) (*Job, error) {
	if _, err := b.getRow(ctx, id); err != nil {
		return nil, err
	}
	var job *rivertype.JobRow
	err := b.write(ctx, func(ctx context.Context, tx TTx) error {
		var err error
		if job, err = b.cl().JobDeleteTx(ctx, tx, id); err != nil {
			return storeErr(err)
		}
		return b.dropEvents(ctx, tx, job)
	})
	if err != nil {
		return nil, err
	}
	return jobOf(job), nil
}

// ReplayJob runs a finished job again, by the coalescing rule: when the
// booking already has a waiting sync, the replay merges into it (and the
// old job is deleted, its work being done by that sync); otherwise the job
// itself becomes available again, keeping its history.
func (b *riverBackend[TDriver, TTx]) ReplayJob(ctx context.Context, id int64) (*ReplayResult, error) {
	job, err := b.getRow(ctx, id)
	if err != nil {
		return nil, err
	}
	var args Args
	if err := json.Unmarshal(job.EncodedArgs, &args); err != nil {
		return nil, fmt.Errorf("reading job args: %w", err)
	}
	res := &ReplayResult{JobID: id}
	err = b.write(ctx, func(ctx context.Context, tx TTx) error {
		// The booking's row first, then the job's: the order every
		// transaction locks them in (a batch merging into the job holds
		// the booking and then updates the job).
		row, err := b.lockBooking(ctx, tx, &args)
		if err != nil {
			return err
		}
		// Check the state inside the transaction: River's retry leaves a
		// running job as it is, and a running job must never take the
		// booking's waiting slot (a webhook would merge into a sync that
		// has already read the booking).
		var state string
		if err := b.db.queryRow(ctx, tx, `SELECT state FROM river_job WHERE id = $1`+b.db.sql().lockRow, id).Scan(&state); err != nil {
			return fmt.Errorf("reading job state: %w", err)
		}
		if !ReplayableStates[state] {
			return ErrNotReplayable
		}
		if row.waiting.Valid && row.waiting.Int64 != id {
			merge, err := b.jobInStates(ctx, tx, row.waiting.Int64, jobIsMergeable)
			if err != nil {
				return err
			}
			if merge {
				if _, err := b.cl().JobDeleteTx(ctx, tx, id); err != nil {
					return storeErr(err)
				}
				res.JobID, res.Coalesced = row.waiting.Int64, true
				if err := b.handOverEvents(ctx, tx, &args, id, res.JobID); err != nil {
					return err
				}
				if err := b.writeEvents(ctx, tx, []eventRow{replayEvent(&args, id, res)}); err != nil {
					return err
				}
				// The replayed change gets a full budget in the job it
				// joins, as a webhook's does.
				return b.renewAttempts(ctx, tx, []int64{row.waiting.Int64})
			}
		}
		if _, err := b.cl().JobRetryTx(ctx, tx, id); err != nil {
			return storeErr(err)
		}
		// A replay gets a fresh budget: max_attempts more attempts from
		// now, whatever the job used before.
		if err := b.db.exec(ctx, tx, `UPDATE river_job SET max_attempts = attempt + $2 WHERE id = $1`,
			id, b.maxAttempts.Load()); err != nil {
			return fmt.Errorf("renewing attempts: %w", err)
		}
		if err := b.writeEvents(ctx, tx, []eventRow{replayEvent(&args, id, res)}); err != nil {
			return err
		}
		return b.setWaiting(ctx, tx, args.route(), args.OrganizationID, args.BookingKey, id)
	})
	if err != nil {
		return nil, err
	}
	if !res.Coalesced {
		b.announce()
	}
	return res, nil
}

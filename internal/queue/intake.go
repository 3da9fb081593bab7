package queue

// The intake: a batch of webhooks (every one that arrived while the
// previous batch committed) recorded in one transaction. Webhooks are
// grouped by booking; a group merges into its booking's waiting sync if
// it has one that has not started (gate.go says why that is safe), or
// else becomes one new job, inserted with every other new job of the
// batch in one statement. The bookings are recorded set-based, one
// statement whatever the batch's size, their columns passed as the
// dialect takes them (arrays on PostgreSQL, one JSON array on SQLite), so
// that a statement's text, and its prepared plan, stay the same.

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"
)

// insertBatch records a batch of webhooks in one transaction. Webhooks are
// grouped by booking: a group merges into the booking's waiting sync if it
// has one, or else becomes one new job; all new jobs are inserted with one
// statement.
func (b *riverBackend[TDriver, TTx]) insertBatch(ctx context.Context, batch []*Entry) error {
	var fresh [][]*Entry
	err := b.write(ctx, func(ctx context.Context, tx TTx) error {
		groups := groupByBooking(batch)
		// Lock booking rows in one global order, so that two batches committing
		// at once (PostgreSQL) never wait on each other in a cycle.
		slices.SortFunc(groups, func(x, y []*Entry) int {
			a, b := x[0], y[0]
			return cmp.Or(strings.Compare(a.Route, b.Route), strings.Compare(a.Webhook.OrganizationID, b.Webhook.OrganizationID),
				strings.Compare(a.Webhook.BookingKey, b.Webhook.BookingKey))
		})
		var err error
		if fresh, err = b.mergeGroups(ctx, tx, groups); err != nil {
			return err
		}
		if err := b.insertJobs(ctx, tx, fresh); err != nil {
			return err
		}
		return b.writeEvents(ctx, tx, webhookEvents(batch))
	})
	if err != nil {
		return err
	}
	now := time.Now()
	for _, g := range fresh {
		if !g[0].NotBefore.After(now) {
			b.announce() // a job to run now; those in a window are polled for
			break
		}
	}
	return nil
}

// groupByBooking groups webhooks by booking, in order of first arrival.
func groupByBooking(batch []*Entry) [][]*Entry {
	type key struct {
		route   string
		booking payload.Key
	}
	index := make(map[key]int, len(batch))
	var groups [][]*Entry
	for _, r := range batch {
		k := key{r.Route, r.Webhook.Key()}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	return groups
}

// mergeGroups records a batch's bookings and merges each group into its
// booking's waiting sync where there is one that has not started; it
// returns the groups that need a new job.
func (b *riverBackend[TDriver, TTx]) mergeGroups(ctx context.Context, tx TTx, groups [][]*Entry) ([][]*Entry, error) {
	n := len(groups)
	routes, orgs, bookings, events := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, g := range groups {
		first, last := g[0], g[len(g)-1]
		routes[i], orgs[i], bookings[i], events[i] = first.Route, first.Webhook.OrganizationID, first.Webhook.BookingKey, last.Webhook.EventType
	}
	args, err := b.db.columns(routes, orgs, bookings, events)
	if err != nil {
		return nil, err
	}
	rows, err := b.db.queryTx(ctx, tx, b.db.sql().upsertBookings, args...)
	if err != nil {
		return nil, fmt.Errorf("recording bookings: %w", err)
	}
	type state struct {
		waiting   sql.NullInt64
		mergeable int
	}
	found := make(map[bookingKey]state, n)
	for rows.Next() {
		var k bookingKey
		var s state
		if err := rows.Scan(&k.route, &k.org, &k.booking, &s.waiting, &s.mergeable); err != nil {
			rows.Close()
			return nil, fmt.Errorf("recording bookings: %w", err)
		}
		found[k] = s
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("recording bookings: %w", err)
	}
	if err := b.markWaiters(ctx, tx, groups); err != nil {
		return nil, err
	}
	var fresh [][]*Entry
	var merged []int64
	for _, g := range groups {
		s, ok := found[keyOf(g[0])]
		if !ok {
			return nil, fmt.Errorf("recording bookings: booking %q not returned", g[0].Webhook.BookingKey)
		}
		if !s.waiting.Valid || s.mergeable == 0 {
			fresh = append(fresh, g)
			continue
		}
		merged = append(merged, s.waiting.Int64)
		for _, r := range g {
			r.JobID, r.Coalesced = s.waiting.Int64, true
			b.addWaiter(r)
		}
	}
	return fresh, b.renewAttempts(ctx, tx, merged)
}

const upsertBookingsReturning = `
ON CONFLICT (target_id, org, booking) DO UPDATE SET event_type =
	CASE WHEN excluded.event_type <> '' THEN excluded.event_type ELSE receive_booking_booking.event_type END
RETURNING target_id, org, booking, waiting_job_id, (SELECT count(*) FROM river_job
	WHERE river_job.id = receive_booking_booking.waiting_job_id AND ` + mergeable + `)`

type bookingKey struct{ route, org, booking string }

func keyOf(e *Entry) bookingKey {
	return bookingKey{e.Route, e.Webhook.OrganizationID, e.Webhook.BookingKey}
}

// insertJobs inserts one job for each group and makes it the booking's
// waiting sync; later webhooks of a group merge into it.
func (b *riverBackend[TDriver, TTx]) insertJobs(ctx context.Context, tx TTx, groups [][]*Entry) error {
	if len(groups) == 0 {
		return nil
	}
	params := make([]river.InsertManyParams, len(groups))
	waiting, err := b.waitingByOrg(ctx, tx, groups)
	if err != nil {
		return err
	}
	if err := b.promoteWaiting(ctx, tx, waiting); err != nil {
		return err
	}
	maxAttempts := int(b.maxAttempts.Load())
	for i, g := range groups {
		r, last := g[0], g[len(g)-1]
		org := r.Webhook.OrganizationID
		opts := &river.InsertOpts{MaxAttempts: maxAttempts, Priority: fairPriority(waiting[org])}
		waiting[org]++
		params[i] = river.InsertManyParams{InsertOpts: opts, Args: Args{
			Route: r.Route, BookingID: last.Webhook.BookingID, BookingKey: r.Webhook.BookingKey,
			OrganizationID: r.Webhook.OrganizationID, OrganizationIDJSON: r.Webhook.OrganizationIDJSON, EventType: last.Webhook.EventType,
			AcceptedAt: r.AcceptedAt.UTC(), NotBefore: r.NotBefore.UTC(), Trace: r.Trace,
		}}
	}
	res, err := b.cl().InsertManyTx(ctx, tx, params)
	if err != nil {
		return fmt.Errorf("inserting jobs: %w", err)
	}
	for i, g := range groups {
		id := res[i].Job.ID
		for j, r := range g {
			r.JobID, r.Coalesced = id, j > 0
			b.addWaiter(r)
		}
	}
	return b.setWaitingGroups(ctx, tx, groups)
}

// fairPriority is a new sync's River priority (1 runs first) from how many
// syncs its organization already has waiting: an organization's first few
// run at once, and a backlog (a bulk change in EventFlow) sinks below
// every other organization's new webhooks. River fetches by priority,
// then by time, so one organization's thousands of queued syncs hold back
// another's webhook by at most a few syncs.
func fairPriority(waiting int) int {
	// fairPriorityCap must stay the last threshold below.
	switch {
	case waiting < 3:
		return 1
	case waiting < 30:
		return 2
	case waiting < fairPriorityCap:
		return 3
	}
	return 4
}

// fairPriorityCap is where fairPriority reaches its lowest priority.
const fairPriorityCap = 300

// promoteWaiting keeps each organization's syncs in the order they were
// recorded. fairPriority sinks an organization's backlog below other
// organizations' new webhooks; as the backlog shrinks, its new syncs get a
// better priority again, and would overtake its older ones still waiting
// (at 32 webhooks in flight for one organization, a sync given priority 3
// waited up to 0.8 s behind later ones given 2: auto mode's p99). So the
// older ones are raised to the new one's priority first. On PostgreSQL
// this locks River's rows (skipping those another transaction holds)
// after every booking row of the batch and every other job row it
// touches, and waits for nothing after: keep it last among the batch's
// locks, or it could deadlock with River's fetch or another batch. Only an
// organization with fewer than fairPriorityCap waiting can get a better
// priority, so at most that many rows are looked at.
func (b *riverBackend[TDriver, TTx]) promoteWaiting(ctx context.Context, tx TTx, waiting map[string]int) error {
	for org, n := range waiting {
		if n == 0 || n >= fairPriorityCap {
			continue
		}
		if err := b.db.exec(ctx, tx, b.db.sql().promoteWaiting, org, fairPriority(n)); err != nil {
			return fmt.Errorf("ordering waiting syncs: %w", err)
		}
	}
	return nil
}

// waitingByOrg counts, for each organization of the groups, its bookings
// with a sync waiting (an index covers it), up to fairPriority's last
// step: beyond it the priority no longer changes, and a bulk change's
// backlog of thousands need not be counted for every batch.
func (b *riverBackend[TDriver, TTx]) waitingByOrg(ctx context.Context, tx TTx, groups [][]*Entry) (map[string]int, error) {
	out := make(map[string]int)
	for _, g := range groups {
		org := g[0].Webhook.OrganizationID
		if _, done := out[org]; done {
			continue
		}
		var n int
		if err := b.db.queryRow(ctx, tx, `SELECT count(*) FROM (SELECT 1 FROM receive_booking_booking
			WHERE org = $1 AND waiting_job_id IS NOT NULL LIMIT $2) AS w`, org, fairPriorityCap).Scan(&n); err != nil {
			return nil, fmt.Errorf("counting waiting syncs: %w", err)
		}
		out[org] = n
	}
	return out, nil
}

// addWaiter registers a waiting sender for its job's next attempt. It runs
// inside the recording transaction: the job cannot be claimed before the
// commit, so the attempt that answers the sender starts after its webhook
// was recorded. A failed commit withdraws the waiter (commitBatch).
func (b *riverBackend[TDriver, TTx]) addWaiter(r *Entry) {
	if r.Wait != nil {
		b.q.waiters.add(r.JobID, r.Wait, r.mark)
	}
}

// markWaiters gives the batch's waiting senders their claim mark
// (PostgreSQL; see waiters). It is read once every booking row of the
// batch is locked, by the upsert: a claim that locked one of them before
// took its number before this read, and one that locks it after waits for
// the commit and takes a greater number. (A mark read in the upsert's
// RETURNING could be read before a later row of the batch was locked.)
func (b *riverBackend[TDriver, TTx]) markWaiters(ctx context.Context, tx TTx, groups [][]*Entry) error {
	if !anyWaits(groups) {
		return nil
	}
	mark, err := b.db.claimMark(ctx, tx)
	if err != nil {
		return fmt.Errorf("reading claim mark: %w", err)
	}
	for _, g := range groups {
		for _, r := range g {
			r.mark = mark
		}
	}
	return nil
}

func anyWaits(groups [][]*Entry) bool {
	for _, g := range groups {
		for _, r := range g {
			if r.Wait != nil {
				return true
			}
		}
	}
	return false
}

// renewAttempts gives jobs that webhooks merged into max_attempts
// attempts after their current one.
func (b *riverBackend[TDriver, TTx]) renewAttempts(ctx context.Context, tx TTx, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	arg, err := idList(b.db, ids)
	if err != nil {
		return err
	}
	if err := b.db.exec(ctx, tx, b.db.sql().renewAttempts, arg, b.maxAttempts.Load()); err != nil {
		return fmt.Errorf("renewing attempts: %w", err)
	}
	return nil
}

// setWaitingGroups makes each group's new job its booking's waiting sync.
func (b *riverBackend[TDriver, TTx]) setWaitingGroups(ctx context.Context, tx TTx, groups [][]*Entry) error {
	n := len(groups)
	routes, orgs, bookings, ids := make([]string, n), make([]string, n), make([]string, n), make([]int64, n)
	for i, g := range groups {
		k := keyOf(g[0])
		routes[i], orgs[i], bookings[i], ids[i] = k.route, k.org, k.booking, g[0].JobID
	}
	args, err := b.db.columns(routes, orgs, bookings, ids)
	if err != nil {
		return err
	}
	if err := b.db.exec(ctx, tx, b.db.sql().setWaitingMany, args...); err != nil {
		return fmt.Errorf("naming waiting syncs: %w", err)
	}
	return nil
}

// windowStart makes a job inside its coalescing window available from the
// window's end, as River keeps a short snooze: fetched then, rather than
// at once only to be snoozed (a fetch and a state change per job, a third
// of the workers' database work in async mode).
type windowStart struct {
	river.MiddlewareDefaults
}

func (*windowStart) InsertMany(ctx context.Context, params []*rivertype.JobInsertParams,
	doInner func(context.Context) ([]*rivertype.JobInsertResult, error)) ([]*rivertype.JobInsertResult, error) {
	now := time.Now()
	for _, p := range params {
		if a, ok := p.Args.(Args); ok && p.State == rivertype.JobStateAvailable && a.NotBefore.After(now) {
			at := a.NotBefore
			p.ScheduledAt = &at
		}
	}
	return doInner(ctx)
}

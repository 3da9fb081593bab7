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
	var urgentDue bool
	err := b.write(ctx, func(ctx context.Context, tx TTx) error {
		groups := groupByBooking(batch)
		// Lock booking rows in one global order, so that two batches committing
		// at once (PostgreSQL) never wait on each other in a cycle.
		slices.SortFunc(groups, func(x, y []*Entry) int {
			a, b := x[0], y[0]
			return cmp.Or(strings.Compare(a.Route, b.Route), strings.Compare(a.Webhook.OrganizationID, b.Webhook.OrganizationID),
				strings.Compare(a.Webhook.BookingKey, b.Webhook.BookingKey))
		})
		var merged []mergedGroup
		var err error
		if fresh, merged, err = b.mergeGroups(ctx, tx, groups); err != nil {
			return err
		}
		if urgentDue, err = b.insertJobs(ctx, tx, fresh, merged); err != nil {
			return err
		}
		return b.writeEvents(ctx, tx, webhookEvents(batch))
	})
	if err != nil {
		return err
	}
	if urgentDue {
		b.announce() // a retry made due at once
		return nil
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

// groupUrgency is the most urgent of a group's webhooks.
func groupUrgency(g []*Entry) int {
	u := g[0].Urgency
	for _, r := range g[1:] {
		u = max(u, r.Urgency)
	}
	return u
}

// mergedGroup is a group merged into its booking's waiting job, and the
// earliest that job may run if it waits for a retry (retry_floor).
type mergedGroup struct {
	g     []*Entry
	job   int64
	floor sql.NullInt64
}

// mergeGroups records a batch's bookings and merges each group into its
// booking's waiting sync where there is one that has not started; it
// returns the groups that need a new job, and those merged.
func (b *riverBackend[TDriver, TTx]) mergeGroups(ctx context.Context, tx TTx, groups [][]*Entry) ([][]*Entry, []mergedGroup, error) {
	n := len(groups)
	routes, orgs, bookings, events := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	urgencies := make([]int64, n)
	for i, g := range groups {
		first, last := g[0], g[len(g)-1]
		routes[i], orgs[i], bookings[i], events[i] = first.Route, first.Webhook.OrganizationID, first.Webhook.BookingKey, last.Webhook.EventType
		urgencies[i] = int64(groupUrgency(g))
	}
	args, err := b.db.columns(routes, orgs, bookings, events, urgencies)
	if err != nil {
		return nil, nil, err
	}
	rows, err := b.db.queryTx(ctx, tx, b.db.sql().upsertBookings, args...)
	if err != nil {
		return nil, nil, fmt.Errorf("recording bookings: %w", err)
	}
	type state struct {
		waiting, floor sql.NullInt64
		mergeable      int
	}
	found := make(map[bookingKey]state, n)
	for rows.Next() {
		var k bookingKey
		var s state
		if err := rows.Scan(&k.route, &k.org, &k.booking, &s.waiting, &s.floor, &s.mergeable); err != nil {
			rows.Close()
			return nil, nil, fmt.Errorf("recording bookings: %w", err)
		}
		found[k] = s
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("recording bookings: %w", err)
	}
	if err := b.markWaiters(ctx, tx, groups); err != nil {
		return nil, nil, err
	}
	var fresh [][]*Entry
	var merged []mergedGroup
	var ids []int64
	for _, g := range groups {
		s, ok := found[keyOf(g[0])]
		if !ok {
			return nil, nil, fmt.Errorf("recording bookings: booking %q not returned", g[0].Webhook.BookingKey)
		}
		if !s.waiting.Valid || s.mergeable == 0 {
			fresh = append(fresh, g)
			continue
		}
		merged = append(merged, mergedGroup{g: g, job: s.waiting.Int64, floor: s.floor})
		ids = append(ids, s.waiting.Int64)
		for _, r := range g {
			r.JobID, r.Coalesced = s.waiting.Int64, true
			b.addWaiter(r)
		}
	}
	return fresh, merged, b.renewAttempts(ctx, tx, ids)
}

// upsertBookingsReturning ends both dialects' upsertBookings: a booking
// whose sync waits keeps the higher urgency of that sync and the new
// webhooks'; one with none takes the new webhooks'.
const upsertBookingsReturning = `
ON CONFLICT (target_id, org, booking) DO UPDATE SET event_type =
	CASE WHEN excluded.event_type <> '' THEN excluded.event_type ELSE receive_booking_booking.event_type END,
	urgency = CASE WHEN receive_booking_booking.waiting_job_id IS NOT NULL
		AND receive_booking_booking.urgency > excluded.urgency THEN receive_booking_booking.urgency ELSE excluded.urgency END
RETURNING target_id, org, booking, waiting_job_id, retry_floor, (SELECT count(*) FROM river_job
	WHERE river_job.id = receive_booking_booking.waiting_job_id AND ` + mergeable + `)`

type bookingKey struct{ route, org, booking string }

func keyOf(e *Entry) bookingKey {
	return bookingKey{e.Route, e.Webhook.OrganizationID, e.Webhook.BookingKey}
}

// insertJobs inserts one job for each fresh group and makes it the
// booking's waiting sync; later webhooks of a group merge into it. Each new
// job gets its fair priority (priority.go); an urgent merged group raises
// its job to the priority it would have had, and makes it due now if it
// waits for a retry (no sooner than its retry_floor). It reports
// whether a job was made due now.
func (b *riverBackend[TDriver, TTx]) insertJobs(ctx context.Context, tx TTx, groups [][]*Entry, merged []mergedGroup) (bool, error) {
	// Only an urgent merge can change its job (a merge of the job's own
	// class or below finds it at as good a priority): the others cost no
	// statement, a burst's merges being the intake's commonest case.
	merged = slices.DeleteFunc(merged, func(m mergedGroup) bool { return groupUrgency(m.g) < UrgentAt })
	all := slices.Clone(groups)
	for _, m := range merged {
		all = append(all, m.g)
	}
	if len(all) == 0 {
		return false, nil
	}
	waiting, err := b.waitingByOrg(ctx, tx, all)
	if err != nil {
		return false, err
	}
	if err := b.promoteWaiting(ctx, tx, groups, waiting); err != nil {
		return false, err
	}
	due, err := b.raiseMerged(ctx, tx, merged, waiting)
	if err != nil {
		return false, err
	}
	if len(groups) == 0 {
		return due, nil
	}
	params := make([]river.InsertManyParams, len(groups))
	maxAttempts := int(b.maxAttempts.Load())
	for i, g := range groups {
		r, last := g[0], g[len(g)-1]
		u := groupUrgency(g)
		k := backlogKeyOf(g)
		opts := &river.InsertOpts{MaxAttempts: maxAttempts, Priority: priorityOf(u, waiting[k])}
		waiting[k]++
		params[i] = river.InsertManyParams{InsertOpts: opts, Args: Args{
			Route: r.Route, BookingID: last.Webhook.BookingID, BookingKey: r.Webhook.BookingKey,
			OrganizationID: r.Webhook.OrganizationID, OrganizationIDJSON: r.Webhook.OrganizationIDJSON, EventType: last.Webhook.EventType,
			AcceptedAt: r.AcceptedAt.UTC(), NotBefore: r.NotBefore.UTC(), Trace: r.Trace,
		}}
	}
	res, err := b.cl().InsertManyTx(ctx, tx, params)
	if err != nil {
		return false, fmt.Errorf("inserting jobs: %w", err)
	}
	for i, g := range groups {
		id := res[i].Job.ID
		for j, r := range g {
			r.JobID, r.Coalesced = id, j > 0
			b.addWaiter(r)
		}
	}
	return due, b.setWaitingGroups(ctx, tx, groups)
}

// backlogKey is what a sync's backlog is counted by: its organization's
// syncs waiting at its urgency class or above.
type backlogKey struct {
	org   string
	class urgencyClass
}

func backlogKeyOf(g []*Entry) backlogKey {
	return backlogKey{g[0].Webhook.OrganizationID, classOf(groupUrgency(g))}
}

// raiseMerged gives each urgent merged group's job the priority a new job
// of the group would get, if better, and makes it due now, or at its
// retry_floor, if it waits for a retry. On PostgreSQL it locks
// River's rows skipping those held elsewhere, like promoteWaiting, and
// runs beside it, last.
func (b *riverBackend[TDriver, TTx]) raiseMerged(ctx context.Context, tx TTx, merged []mergedGroup, waiting map[backlogKey]int) (bool, error) {
	now := time.Now()
	var due bool
	for _, m := range merged {
		u, at := groupUrgency(m.g), now
		if m.floor.Valid {
			at = later(at, time.Unix(0, m.floor.Int64))
		}
		due = due || !at.After(now)
		seconds := float64(at.UnixNano()) / 1e9
		if err := b.db.exec(ctx, tx, b.db.sql().raiseWaiting, m.job, priorityOf(u, waiting[backlogKeyOf(m.g)]), 1, seconds); err != nil {
			return false, fmt.Errorf("raising a waiting sync: %w", err)
		}
	}
	return due, nil
}

// promoteWaiting keeps each organization's syncs of one urgency class in
// the order they were recorded. priorityOf sinks an organization's backlog below other
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
func (b *riverBackend[TDriver, TTx]) promoteWaiting(ctx context.Context, tx TTx, groups [][]*Entry, waiting map[backlogKey]int) error {
	done := make(map[backlogKey]bool)
	for _, g := range groups {
		k := backlogKeyOf(g)
		n := waiting[k]
		if done[k] || n == 0 || n >= fairPriorityCap {
			continue
		}
		done[k] = true
		if err := b.db.exec(ctx, tx, b.db.sql().promoteWaiting, k.org, priorityOf(k.class.floor, n), k.class.floor, k.class.ceiling); err != nil {
			return fmt.Errorf("ordering waiting syncs: %w", err)
		}
	}
	return nil
}

// waitingByOrg counts, for each organization and urgency class of the
// groups, its bookings with a sync waiting at that class or above (an
// index covers it), up to fairPriorityCap: beyond it the priority no
// longer changes, and a bulk change's backlog of thousands need not be
// counted for every batch.
func (b *riverBackend[TDriver, TTx]) waitingByOrg(ctx context.Context, tx TTx, groups [][]*Entry) (map[backlogKey]int, error) {
	out := make(map[backlogKey]int)
	for _, g := range groups {
		k := backlogKeyOf(g)
		if _, done := out[k]; done {
			continue
		}
		var n int
		if err := b.db.queryRow(ctx, tx, `SELECT count(*) FROM (SELECT 1 FROM receive_booking_booking
			WHERE org = $1 AND waiting_job_id IS NOT NULL AND urgency >= $2 LIMIT $3) AS w`, k.org, k.class.floor, fairPriorityCap).Scan(&n); err != nil {
			return nil, fmt.Errorf("counting waiting syncs: %w", err)
		}
		out[k] = n
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

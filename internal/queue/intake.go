package queue

// Set-based intake: a batch's bookings are recorded with one statement and
// its new jobs named waiting with another, whatever the batch's size. On
// PostgreSQL each statement is a round trip (the batch used two per
// booking); on SQLite each is a program started. The bookings travel as
// arrays (PostgreSQL, unnest) or as one JSON array (SQLite, json_each), so
// the statement's text, and its prepared plan, stay the same.

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
)

const upsertBookingsReturning = `
ON CONFLICT (target_id, org, booking) DO UPDATE SET event_type =
	CASE WHEN excluded.event_type <> '' THEN excluded.event_type ELSE receive_booking_booking.event_type END
RETURNING target_id, org, booking, waiting_job_id, (SELECT count(*) FROM river_job
	WHERE river_job.id = receive_booking_booking.waiting_job_id AND ` + mergeable + `)`

// upsertBookings records a batch's bookings (route, org, booking, latest
// event type), locking their rows until the transaction ends, and
// returns each one's waiting job and whether a webhook may merge into it.
var upsertBookings = map[string]string{
	Postgres: `INSERT INTO receive_booking_booking (target_id, org, booking, event_type)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])` + upsertBookingsReturning,
	// "WHERE true" tells SQLite's parser that ON CONFLICT is the upsert's.
	SQLite: `INSERT INTO receive_booking_booking (target_id, org, booking, event_type)
SELECT value->>0, value->>1, value->>2, value->>3 FROM json_each($1) WHERE true` + upsertBookingsReturning,
}

// setWaitingMany makes each new job its booking's waiting sync.
var setWaitingMany = map[string]string{
	Postgres: `UPDATE receive_booking_booking AS b SET waiting_job_id = v.id
FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) AS v(target_id, org, booking, id)
WHERE b.target_id = v.target_id AND b.org = v.org AND b.booking = v.booking`,
	SQLite: `UPDATE receive_booking_booking SET waiting_job_id = v.id
FROM (SELECT value->>0 AS target_id, value->>1 AS org, value->>2 AS booking, value->>3 AS id FROM json_each($1)) AS v
WHERE receive_booking_booking.target_id = v.target_id AND receive_booking_booking.org = v.org
	AND receive_booking_booking.booking = v.booking`,
}

// setArgs passes columns of equal length as the dialect takes them: one
// array each (PostgreSQL) or one JSON array of rows (SQLite).
func setArgs(driver string, cols ...any) ([]any, error) {
	if driver == Postgres {
		return cols, nil
	}
	var n int
	switch c := cols[0].(type) {
	case []string:
		n = len(c)
	default:
		return nil, fmt.Errorf("setArgs: unexpected column %T", c)
	}
	rows := make([][]any, n)
	for i := range rows {
		rows[i] = make([]any, len(cols))
		for j, col := range cols {
			switch c := col.(type) {
			case []string:
				rows[i][j] = c[i]
			case []int64:
				rows[i][j] = c[i]
			}
		}
	}
	b, err := json.Marshal(rows)
	if err != nil {
		return nil, err
	}
	return []any{string(b)}, nil
}

type bookingKey struct{ route, org, booking string }

func keyOf(e *Entry) bookingKey {
	return bookingKey{e.Route, e.Webhook.OrganizationID, e.Webhook.BookingKey}
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
	args, err := setArgs(b.q.rq.Driver, routes, orgs, bookings, events)
	if err != nil {
		return nil, err
	}
	rows, err := b.db.queryTx(ctx, tx, upsertBookings[b.q.rq.Driver], args...)
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

// renewAttempts gives jobs that webhooks merged into max_attempts
// attempts after their current one.
func (b *riverBackend[TDriver, TTx]) renewAttempts(ctx context.Context, tx TTx, ids []int64) error {
	if len(ids) == 0 {
		return nil
	}
	var arg any = ids
	if b.q.rq.Driver == SQLite {
		raw, err := json.Marshal(ids)
		if err != nil {
			return err
		}
		arg = string(raw)
	}
	if err := b.db.exec(ctx, tx, renewAttempts[b.q.rq.Driver], arg, b.maxAttempts.Load()); err != nil {
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
	args, err := setArgs(b.q.rq.Driver, routes, orgs, bookings, ids)
	if err != nil {
		return err
	}
	if err := b.db.exec(ctx, tx, setWaitingMany[b.q.rq.Driver], args...); err != nil {
		return fmt.Errorf("naming waiting syncs: %w", err)
	}
	return nil
}

// claimMark reads the highest claim number taken so far (0 before the
// first); is_called is false until the sequence's first nextval.
const claimMark = `SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM receive_booking_claim_seq`

// markWaiters gives the batch's waiting senders their claim mark
// (PostgreSQL; see waiters). It is read once every booking row of the
// batch is locked, by the upsert: a claim that locked one of them before
// took its number before this read, and one that locks it after waits for
// the commit and takes a greater number. (A mark read in the upsert's
// RETURNING could be read before a later row of the batch was locked.)
func (b *riverBackend[TDriver, TTx]) markWaiters(ctx context.Context, tx TTx, groups [][]*Entry) error {
	if b.q.rq.Driver != Postgres || !anyWaits(groups) {
		return nil
	}
	var mark int64
	if err := b.db.queryRow(ctx, tx, claimMark).Scan(&mark); err != nil {
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

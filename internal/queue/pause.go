package queue

// Operators' pauses: syncing stopped for a route, an organization, both,
// or everything, while webhooks are still recorded and answered.
//
// The invariant. A pause is a row of receive_booking_pause (route "" is
// every route, organization "" every organization), in the queue's
// database: it outlives restarts and holds on every instance sharing the
// database. No attempt claims a booking that a pause covers: the claim
// reads the pauses in its own transaction (gate.go), so a pause committed
// before a claim stops it, on any instance; a sync already running when
// the pause commits finishes. A paused job is snoozed without spending an
// attempt and stays its booking's waiting sync (webhooks merge into it).
// A pause of everything also pauses River's queue, so that no worker even
// fetches. Resuming makes the scope's snoozed jobs due at once: River
// fetches them by priority, so urgent ones drain first.
//
// The handlers read a copy of the pauses (refreshed every pauseRefresh,
// and at once after a change on this instance) only to answer a paused
// webhook at once instead of waiting for a sync that will not start.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/riverqueue/river/rivertype"
)

const (
	// pausedSnooze is how long a job a pause stopped waits before it
	// looks again, if no resume makes it due first.
	pausedSnooze = time.Minute
	// pauseRefresh is how often the handlers' copy of the pauses is read.
	pauseRefresh = time.Second
	// maxPauseReason bounds an operator's reason.
	maxPauseReason = 256
)

// errPaused says a pause covers the booking a claim was for.
var errPaused = errors.New("syncing paused by an operator")

// ErrNotPaused says no pause has that scope.
var ErrNotPaused = errors.New("no such pause")

// Pause is an operator's pause of syncing.
type Pause struct {
	// Route is the route it covers; "" every route.
	Route string `json:"route,omitempty"`
	// OrganizationID is the organization it covers; "" every one.
	OrganizationID string    `json:"organization_id,omitempty"`
	PausedAt       time.Time `json:"paused_at"`
	Reason         string    `json:"reason,omitempty"`
}

// covers reports whether the pause covers a booking of route and org.
func (p *Pause) covers(route, org string) bool {
	return (p.Route == "" || p.Route == route) && (p.OrganizationID == "" || p.OrganizationID == org)
}

// everything reports whether the pause covers every route and organization.
func (p *Pause) everything() bool { return p.Route == "" && p.OrganizationID == "" }

// CheckPause holds a pause's fields to their rule.
func CheckPause(p Pause) error {
	if len(p.Reason) > maxPauseReason {
		return fmt.Errorf("reason: at most %d bytes", maxPauseReason)
	}
	for _, s := range []string{p.Route, p.OrganizationID, p.Reason} {
		if hasControlChar(s) {
			return errors.New("pause: control characters are not allowed")
		}
	}
	return nil
}

func hasControlChar(s string) bool {
	return slices.ContainsFunc([]rune(s), func(r rune) bool { return r < 0x20 || r == 0x7f })
}

// Pause pauses syncing for p's scope (or updates its reason); it reports
// whether the pause is new.
func (e *Engine) Pause(ctx context.Context, p Pause) (bool, error) {
	if err := CheckPause(p); err != nil {
		return false, err
	}
	b, err := e.current()
	if err != nil {
		return false, err
	}
	created, err := b.pause(ctx, p)
	e.refreshPauses(ctx)
	return created, e.scrubErr(err)
}

// Resume ends the pause of that scope and makes the jobs it held due now;
// it returns how many.
func (e *Engine) Resume(ctx context.Context, route, org string) (int64, error) {
	b, err := e.current()
	if err != nil {
		return 0, err
	}
	n, err := b.resume(ctx, route, org)
	e.refreshPauses(ctx)
	return n, e.scrubErr(err)
}

// Pauses lists the pauses in effect, read from the database.
func (e *Engine) Pauses(ctx context.Context) ([]Pause, error) {
	b, err := e.current()
	if err != nil {
		return nil, err
	}
	ps, err := b.pauses(ctx)
	return ps, e.scrubErr(err)
}

// Paused reports whether a pause covers bookings of route and org, from
// the copy of the pauses (at most pauseRefresh old).
func (e *Engine) Paused(route, org string) bool {
	ps := e.pauseCopy.Load()
	if ps == nil {
		return false
	}
	return slices.ContainsFunc(*ps, func(p Pause) bool { return p.covers(route, org) })
}

// refreshPauses reads the pauses into the handlers' copy.
func (e *Engine) refreshPauses(ctx context.Context) {
	b, err := e.current()
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, pauseRefresh*5)
	defer cancel()
	if ps, err := b.pauses(ctx); err == nil {
		e.pauseCopy.Store(&ps)
	}
}

// pauseLoop keeps the handlers' copy of the pauses fresh.
func (e *Engine) pauseLoop() {
	t := time.NewTicker(pauseRefresh)
	defer t.Stop()
	for {
		e.refreshPauses(context.Background())
		select {
		case <-t.C:
		case <-e.stop:
			return
		}
	}
}

func (b *riverBackend[TDriver, TTx]) pause(ctx context.Context, p Pause) (created bool, err error) {
	err = b.write(ctx, func(ctx context.Context, tx TTx) error {
		var n int
		if err := b.db.queryRow(ctx, tx, `SELECT count(*) FROM receive_booking_pause WHERE route = $1 AND org = $2`,
			p.Route, p.OrganizationID).Scan(&n); err != nil {
			return fmt.Errorf("reading pauses: %w", err)
		}
		created = n == 0
		if err := b.db.exec(ctx, tx, `INSERT INTO receive_booking_pause (route, org, paused_at, reason) VALUES ($1, $2, $3, $4)
			ON CONFLICT (route, org) DO UPDATE SET reason = excluded.reason`,
			p.Route, p.OrganizationID, time.Now().UnixNano(), p.Reason); err != nil {
			return fmt.Errorf("recording pause: %w", err)
		}
		if p.everything() {
			return b.riverQueuePause(ctx, tx, true)
		}
		return nil
	})
	return created, err
}

func (b *riverBackend[TDriver, TTx]) resume(ctx context.Context, route, org string) (n int64, err error) {
	err = b.write(ctx, func(ctx context.Context, tx TTx) error {
		var found int
		if err := b.db.queryRow(ctx, tx, `SELECT count(*) FROM receive_booking_pause WHERE route = $1 AND org = $2`,
			route, org).Scan(&found); err != nil {
			return fmt.Errorf("reading pauses: %w", err)
		}
		if found == 0 {
			return ErrNotPaused
		}
		if err := b.db.exec(ctx, tx, `DELETE FROM receive_booking_pause WHERE route = $1 AND org = $2`, route, org); err != nil {
			return fmt.Errorf("removing pause: %w", err)
		}
		if route == "" && org == "" {
			if err := b.riverQueuePause(ctx, tx, false); err != nil {
				return err
			}
		}
		// The snoozed jobs of the scope are due now (a job in its
		// coalescing window, also scheduled, snoozes again until its end).
		var err error
		if n, err = b.db.execCount(ctx, tx, b.db.sql().resumeJobs, riverQueueName, route, org, DefaultRoute); err != nil {
			return fmt.Errorf("resuming jobs: %w", err)
		}
		return nil
	})
	if err == nil && n > 0 {
		b.announce()
	}
	return n, err
}

// riverQueuePause pauses or resumes River's queue: no worker of any
// instance fetches from a paused one. A queue River has not yet recorded
// (no client has run it) needs no pause: our row holds the claims.
func (b *riverBackend[TDriver, TTx]) riverQueuePause(ctx context.Context, tx TTx, pause bool) error {
	var err error
	if pause {
		err = b.cl().QueuePauseTx(ctx, tx, riverQueueName, nil)
	} else {
		err = b.cl().QueueResumeTx(ctx, tx, riverQueueName, nil)
	}
	if err != nil && !errors.Is(err, rivertype.ErrNotFound) {
		return fmt.Errorf("pausing River's queue: %w", err)
	}
	return nil
}

func (b *riverBackend[TDriver, TTx]) pauses(ctx context.Context) ([]Pause, error) {
	rows, err := b.db.queryRows(ctx, `SELECT route, org, paused_at, reason FROM receive_booking_pause ORDER BY route, org`)
	if err != nil {
		return nil, fmt.Errorf("reading pauses: %w", err)
	}
	defer rows.Close()
	out := []Pause{}
	for rows.Next() {
		var p Pause
		var at int64
		if err := rows.Scan(&p.Route, &p.OrganizationID, &at, &p.Reason); err != nil {
			return nil, fmt.Errorf("reading pauses: %w", err)
		}
		p.PausedAt = time.Unix(0, at).UTC()
		out = append(out, p)
	}
	return out, rows.Err()
}

// pausedFor reports, inside a claim's transaction, whether a pause covers
// the booking.
func (b *riverBackend[TDriver, TTx]) pausedFor(ctx context.Context, tx TTx, a *Args) (bool, error) {
	var n int
	if err := b.db.queryRow(ctx, tx, `SELECT count(*) FROM receive_booking_pause
		WHERE (route = '' OR route = $1) AND (org = '' OR org = $2)`, a.route(), a.OrganizationID).Scan(&n); err != nil {
		return false, fmt.Errorf("reading pauses: %w", err)
	}
	return n > 0, nil
}

package receivebooking

// How long finished jobs stay in the queue's database, and with them the
// booking timelines they keep: the operator's choice, per state. River's
// cleaner deletes the jobs; the engine's prune follows with their events.

import (
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
)

// QueueRetention is how long finished jobs are kept, by their final
// state, before they are deleted with the booking timeline events only
// they keep. Each is a positive duration such as "36h" or "7d"; a shorter
// one costs less disk (see the operations guide for the figures), a longer
// one keeps more history to look at and replay.
type QueueRetention struct {
	// Completed is how long a job whose booking synced is kept.
	// Default: 24h.
	Completed string `json:"completed,omitempty"`

	// Cancelled is how long a job that got a final answer (not_found, a
	// contract violation, …) is kept. Default: 168h (7 days).
	Cancelled string `json:"cancelled,omitempty"`

	// Discarded is how long a job that ran out of attempts (the dead
	// letter) is kept. Default: 720h (30 days).
	Discarded string `json:"discarded,omitempty"`
}

// retentionStates are the states whose retention is set, in the
// Caddyfile's words.
var retentionStates = []string{"completed", "cancelled", "discarded"}

// field returns the setting of a state (one of retentionStates).
func (r *QueueRetention) field(state string) *string {
	switch state {
	case "completed":
		return &r.Completed
	case "cancelled":
		return &r.Cancelled
	}
	return &r.Discarded
}

// resolveRetention sets the retention periods of s, the defaults where
// none is given.
func resolveRetention(repl *caddy.Replacer, r *QueueRetention, s *queue.Settings) error {
	if r == nil {
		r = new(QueueRetention)
	}
	for _, p := range []struct {
		state string
		def   time.Duration
		dst   *time.Duration
	}{
		{"completed", queue.DefaultRetentionCompleted, &s.RetentionCompleted},
		{"cancelled", queue.DefaultRetentionCancelled, &s.RetentionCancelled},
		{"discarded", queue.DefaultRetentionDiscarded, &s.RetentionDiscarded},
	} {
		d, err := resolveDuration(repl, "retention "+p.state, *r.field(p.state), p.def)
		if err != nil {
			return err
		}
		*p.dst = d
	}
	return nil
}

// parseRetention parses "retention completed|cancelled|discarded
// <duration>"; each state once.
func parseRetention(h *Handler, d *caddyfile.Dispenser) error {
	var state, v string
	if !d.AllArgs(&state, &v) {
		return d.ArgErr()
	}
	q := h.queueConfig()
	if q.Retention == nil {
		q.Retention = new(QueueRetention)
	}
	var dst *string
	for _, s := range retentionStates {
		if s == state {
			dst = q.Retention.field(s)
		}
	}
	switch {
	case dst == nil:
		return d.Errf("retention: expected completed, cancelled or discarded, got %q", state)
	case *dst != "":
		return d.Errf("retention %s: given twice", state)
	}
	*dst = v
	return checkLiteral(d, "retention "+state, v)
}

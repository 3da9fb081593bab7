package receivebooking

// Settings that contradict each other, found by Validate so that `caddy
// validate` reports them. A setting that would make the handler behave
// otherwise than its settings say is an error; one that is merely ignored
// is a warning. Each message says what to change.

import (
	"errors"
	"fmt"
	"strings"

	"github.com/bookingwebhook/caddy-receive-booking/internal/queue"
)

// conflict is one contradiction between provisioned settings.
type conflict struct {
	warn bool // logged; else the config is refused
	msg  string
}

// conflicts lists the contradictions between the handler's provisioned
// settings.
func (h *Handler) conflicts() []conflict {
	var out []conflict
	add := func(warn bool, format string, args ...any) {
		out = append(out, conflict{warn, fmt.Sprintf(format, args...)})
	}
	s := h.queueSettings
	if h.mode == modeAuto && h.timeout >= s.WorkerTimeout {
		add(false, "timeout (%s) must be shorter than worker_timeout (%s) in mode auto: a sender would be "+
			"kept waiting for a sync that a worker has given up on; lower timeout, or raise worker_timeout "+
			"above import-bookings' own limit", h.timeout, s.WorkerTimeout)
	}
	if h.mode == modeAuto && h.coalesceWindow >= h.timeout {
		add(false, "coalesce_window (%s) must be shorter than timeout (%s) in mode auto: no sync could start "+
			"before the sender stops waiting, so every webhook would wait the whole timeout for a 202; "+
			"shorten coalesce_window, or use mode async", h.coalesceWindow, h.timeout)
	}
	if h.queueDriver == queue.SQLite && s.MaxInFlight > s.Workers {
		add(true, "max_in_flight (%d) has no effect above workers (%d) on SQLite, where it only caps workers; "+
			"remove it, or raise workers", s.MaxInFlight, s.Workers)
	}
	if h.Queue == nil {
		for _, f := range []struct{ name, val string }{{"coalesce_window", h.CoalesceWindow}, {"route", h.Route}} {
			if f.val != "" {
				add(true, "%s has no effect without a queue: remove it, or add a queue", f.name)
			}
		}
	}
	if !h.authSig && len(h.sigOrgs) > 0 {
		add(true, "auth key: the signing secrets are never checked; use auth both, or remove them")
	}
	if !h.authSig && h.Tolerance != "" {
		add(true, "tolerance has no effect without signatures (auth key): remove it, or use auth signature or both")
	}
	if !h.authKey && !h.secrets.empty() {
		add(true, "auth signature: the API keys are never checked; use auth both, or remove them")
	}
	return out
}

// checkConflicts logs the warnings among the conflicts and returns the
// errors, joined.
func (h *Handler) checkConflicts() error {
	var errs []string
	for _, c := range h.conflicts() {
		if c.warn {
			h.logger.Warn(c.msg)
		} else {
			errs = append(errs, c.msg)
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.New(strings.Join(errs, "; "))
}

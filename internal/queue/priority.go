package queue

// Which sync runs first: a job's River priority (1 runs first, 4 last)
// from two things, its urgency and its organization's backlog.
//
// The invariant. A sync's priority is 1 for an urgent one, 2 for any
// other, pushed down by its organization's backlog at its urgency class
// or above:
//
//	priority = 1 + min(3, lift + tier)
//	lift:  0 urgent (urgency >= 100), 1 otherwise
//	class: urgent (>= 100), normal (>= 40), low (below)
//	tier:  0 with fewer than 3 of the organization's syncs of that class
//	       or above waiting, 1 below 30, 2 below 300, 3 from 300
//
// So a cancellation (urgent) goes before its organization's backlog of
// updates (their tier counts updates, its tier counts only urgent syncs),
// and an update before its organization's backlog of offers (low) the
// same way; across organizations, urgent syncs go first, and no
// organization's flood, of whatever class, holds back another's fresh
// webhook by more than the three syncs of its first tier: its own tier
// sinks it. Within one organization and class, syncs keep the order they
// were recorded in (promoteWaiting, intake.go). River fetches by priority,
// then by when a job became due, then by id.

import "github.com/bookingwebhook/caddy-receive-booking/internal/payload"

const (
	// UrgencyMax is the highest urgency an event type may have.
	UrgencyMax = 100
	// UrgentAt is the urgency from which an event is urgent: its sync
	// goes before every normal one of the same backlog, and it makes its
	// booking's sync that waits for a retry due at once (intake.go).
	UrgentAt = 100
	// normalAt is the urgency from which an event is normal, not low.
	normalAt = 40
	// UrgencyUnknown is the default urgency of an event type EventFlow
	// does not send, or of a webhook without one.
	UrgencyUnknown = 20
)

// DefaultUrgency is each event type's urgency, as the platform's
// receive-booking gives its jobs priorities: confirmed and cancelled 100,
// updated 60, created 40, offer 20 (and unknown types UrgencyUnknown).
var DefaultUrgency = map[string]int{
	payload.EventConfirmed: 100,
	payload.EventCancelled: 100,
	payload.EventUpdated:   60,
	payload.EventCreated:   40,
	payload.EventOffer:     20,
}

// urgencyClass is an urgency's class (urgent, normal, low): floor is its
// lowest urgency, ceiling the next class's floor.
type urgencyClass struct{ floor, ceiling int }

func classOf(urgency int) urgencyClass {
	switch {
	case urgency >= UrgentAt:
		return urgencyClass{UrgentAt, UrgencyMax + 1}
	case urgency >= normalAt:
		return urgencyClass{normalAt, UrgentAt}
	}
	return urgencyClass{-1, normalAt}
}

// backlogTier is how far an organization's backlog (its syncs waiting at
// the class or above) pushes a new sync down.
func backlogTier(waiting int) int {
	// fairPriorityCap must stay the last threshold below.
	switch {
	case waiting < 3:
		return 0
	case waiting < 30:
		return 1
	case waiting < fairPriorityCap:
		return 2
	}
	return 3
}

// fairPriorityCap is the backlog from which the tier no longer changes:
// a backlog is counted up to it, no further.
const fairPriorityCap = 300

// priorityOf is the River priority of a sync of the urgency with waiting
// syncs of its organization waiting at its class or above.
func priorityOf(urgency, waiting int) int {
	lift := 1
	if urgency >= UrgentAt {
		lift = 0
	}
	return 1 + min(3, lift+backlogTier(waiting))
}

package queue

import (
	"testing"

	"github.com/stretchr/testify/assert"
)

// TestPriorityOf is the invariant of priority.go, value by value.
func TestPriorityOf(t *testing.T) {
	for _, c := range []struct{ urgency, waiting, want int }{
		{100, 0, 1}, {100, 2, 1}, {100, 3, 2}, {100, 29, 2}, {100, 30, 3}, {100, 299, 3}, {100, 300, 4}, {100, 5000, 4},
		{60, 0, 2}, {40, 2, 2}, {20, 0, 2}, {0, 0, 2}, {60, 3, 3}, {20, 30, 4}, {60, 300, 4},
	} {
		assert.Equal(t, c.want, priorityOf(c.urgency, c.waiting), "urgency %d, %d waiting", c.urgency, c.waiting)
	}
	// Each class counts its own backlog and those above it.
	assert.Equal(t, urgencyClass{UrgentAt, UrgencyMax + 1}, classOf(100))
	assert.Equal(t, urgencyClass{normalAt, UrgentAt}, classOf(60))
	assert.Equal(t, urgencyClass{normalAt, UrgentAt}, classOf(40))
	assert.Equal(t, urgencyClass{-1, normalAt}, classOf(20))
	assert.Equal(t, urgencyClass{-1, normalAt}, classOf(0))
}

package receivebooking

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// nextWaiters is how many callers wait for the booking's next (not yet
// started) sync; -1 when there is none.
func nextWaiters(c *coalescer, key payload.Key) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	bf := c.bookings[key]
	if bf == nil || bf.next == nil {
		return -1
	}
	return bf.next.waiters
}

// runningWaiters is how many callers wait for the booking's running sync;
// -1 when none runs.
func runningWaiters(c *coalescer, key payload.Key) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	bf := c.bookings[key]
	if bf == nil || bf.running == nil {
		return -1
	}
	return bf.running.waiters
}

// serveAsync runs one webhook in the background and delivers its answer.
func serveAsync(t *testing.T, h *Handler, ctx context.Context, body string, out chan<- *httptest.ResponseRecorder) {
	r := webhookRequest(http.MethodPost, body, "X-Api-Key", utSecret).WithContext(ctx)
	go func() {
		w := httptest.NewRecorder()
		_ = h.ServeHTTP(w, r, nil)
		out <- w
	}()
}

// TestCoalesceRequestsShareTheNextSync: a request that arrives while a sync
// of its booking runs does not join it; it waits for the next one, which all
// requests arriving meanwhile share.
func TestCoalesceRequestsShareTheNextSync(t *testing.T) {
	release := make(chan struct{})
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	core, logs := observer.New(zapcore.InfoLevel)
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.Timeout = "2s" })
	h.logger = zap.New(core)
	answers := make(chan *httptest.ResponseRecorder, 11)

	serveAsync(t, h, context.Background(), `{"booking_id":"b-1","event_type":"booking.created"}`, answers)
	testkit.WaitFor(t, up.Arrived, time.Second, "sync A to start")

	for i := 0; i < 10; i++ {
		serveAsync(t, h, context.Background(), `{"booking_id":"b-1","event_type":"booking.updated"}`, answers)
	}
	key := payload.Key{Org: utOrg, Booking: "b-1"}
	require.True(t, eventually(time.Second, func() bool { return nextWaiters(h.coalescer, key) == 10 }),
		"the 10 requests wait for one next sync; waiters: %d", nextWaiters(h.coalescer, key))
	assert.Len(t, up.Calls(), 1, "nobody joins the running sync, and the next one waits for it")
	assert.Equal(t, 1, runningWaiters(h.coalescer, key))

	close(release)
	for i := 0; i < 11; i++ {
		select {
		case w := <-answers:
			assert.Equal(t, 200, w.Code, w.Body.String())
			assert.JSONEq(t, `"b-1"`, string(mustField(t, w, "booking_id")))
		case <-time.After(2 * time.Second):
			t.Fatalf("only %d of 11 requests were answered", i)
		}
	}
	calls := up.Calls()
	assert.Len(t, calls, 2, "exactly two syncs: the running one and the shared next one")
	if len(calls) == 2 {
		assert.Equal(t, `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1","event_type":"booking.created"}`, calls[0].Body)
		assert.Equal(t, `{"booking_id":"b-1","syncMode":"single","organization_id":"org-1","event_type":"booking.updated"}`, calls[1].Body)
	}
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(h.coalescer) }))

	outcomes := map[string]int{}
	for _, e := range logs.FilterMessage("webhook").AllUntimed() {
		outcomes[e.ContextMap()["outcome"].(string)]++
	}
	assert.Equal(t, map[string]int{"synced": 2, "coalesced": 9}, outcomes,
		"the first waiter of each sync is logged synced, the others coalesced")
}

func mustField(t *testing.T, w *httptest.ResponseRecorder, name string) []byte {
	t.Helper()
	m := decodeObject(t, w.Body.String())
	v, ok := m[name]
	require.True(t, ok, "answer lacks %s: %s", name, w.Body.String())
	raw, err := json.Marshal(v)
	require.NoError(t, err)
	return raw
}

// TestCoalesceDifferentBookingsDoNotShare: syncs of different bookings (or
// of one booking id in different organisations) run at once.
func TestCoalesceDifferentBookingsDoNotShare(t *testing.T) {
	release := make(chan struct{})
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.Timeout = "2s"; sharedKey(h) })
	answers := make(chan *httptest.ResponseRecorder, 3)

	bodies := []string{
		`{"booking_id":"b-1","organization_id":"org-1"}`,
		`{"booking_id":"b-2","organization_id":"org-1"}`,
		`{"booking_id":"b-1","organization_id":"org-2"}`,
	}
	for i, body := range bodies {
		serveAsync(t, h, context.Background(), body, answers)
		testkit.WaitFor(t, up.Arrived, time.Second, fmt.Sprintf("sync %d to start while the others still run", i+1))
	}
	close(release)
	for range bodies {
		w := <-answers
		assert.Equal(t, 200, w.Code, w.Body.String())
	}
	assert.Len(t, up.Calls(), 3)
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(h.coalescer) }))
}

// TestCoalesceStringAndIntegerIDsAreOneBooking: "42" and 42 name the same
// booking, so they coalesce, and each sync forwards its own literal.
func TestCoalesceStringAndIntegerIDsAreOneBooking(t *testing.T) {
	release := make(chan struct{})
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	h := newTestHandler(t, up.Target(), func(h *Handler) { h.Timeout = "2s" })
	answers := make(chan *httptest.ResponseRecorder, 3)

	serveAsync(t, h, context.Background(), `{"booking_id":"42"}`, answers)
	testkit.WaitFor(t, up.Arrived, time.Second, "sync A")
	serveAsync(t, h, context.Background(), `{"booking_id":42}`, answers)
	require.True(t, eventually(time.Second, func() bool { return nextWaiters(h.coalescer, payload.Key{Org: utOrg, Booking: "42"}) == 1 }))
	close(release)
	for i := 0; i < 2; i++ {
		w := <-answers
		assert.Equal(t, 200, w.Code, w.Body.String())
	}
	calls := up.Calls()
	require.Len(t, calls, 2)
	assert.Equal(t, `{"booking_id":"42","syncMode":"single","organization_id":"org-1"}`, calls[0].Body)
	assert.Equal(t, `{"booking_id":42,"syncMode":"single","organization_id":"org-1"}`, calls[1].Body)
}

// TestCoalesceSequentialRequestsEachSync: without overlap, every request
// gets a sync of its own.
func TestCoalesceSequentialRequestsEachSync(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	h := newTestHandler(t, up.Target(), nil)
	for i := 0; i < 3; i++ {
		w := postAuthed(t, h, validBody)
		require.Equal(t, 200, w.Code, w.Body.String())
	}
	assert.Len(t, up.Calls(), 3)
	assert.True(t, coalescerIdle(h.coalescer))
}

// TestCoalesceWaiterLeaves: a caller whose context ends leaves the next
// sync; when the last one leaves, the next sync is dropped and never runs.
func TestCoalesceWaiterLeaves(t *testing.T) {
	release := make(chan struct{})
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	h := newTestHandler(t, up.Target(), nil)
	c, key := h.coalescer, payload.Key{Booking: "b-1"}
	req := upstream.Request{BookingID: []byte(`"b-1"`)}
	type result struct {
		res *upstream.Result
		err error
	}
	do := func(ctx context.Context) <-chan result {
		out := make(chan result, 1)
		go func() {
			res, _, err := c.do(ctx, key, req, "", 2*time.Second, h.upstream.Sync)
			out <- result{res, err}
		}()
		return out
	}

	first := do(context.Background())
	testkit.WaitFor(t, up.Arrived, time.Second, "sync A")
	ctx1, cancel1 := context.WithCancel(context.Background())
	ctx2, cancel2 := context.WithCancel(context.Background())
	defer cancel2()
	w1, w2 := do(ctx1), do(ctx2)
	require.True(t, eventually(time.Second, func() bool { return nextWaiters(c, key) == 2 }))

	cancel1()
	r1 := <-w1
	assert.ErrorIs(t, r1.err, context.Canceled)
	assert.Nil(t, r1.res)
	assert.Equal(t, 1, nextWaiters(c, key), "the waiter left; the next sync still has one")

	cancel2()
	r2 := <-w2
	assert.ErrorIs(t, r2.err, context.Canceled)
	assert.Equal(t, -1, nextWaiters(c, key), "nobody waits: the next sync is dropped")

	close(release)
	r := <-first
	require.NoError(t, r.err)
	assert.True(t, r.res.OK())
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(c) }))
	time.Sleep(50 * time.Millisecond)
	assert.Len(t, up.Calls(), 1, "the dropped next sync never ran")
}

// TestCoalesceAllLeaveCancelsRunningSync: when every caller of a running
// sync has gone, its upstream call is cancelled.
func TestCoalesceAllLeaveCancelsRunningSync(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	h := newTestHandler(t, up.Target(), nil)
	c, key := h.coalescer, payload.Key{Booking: "b-1"}
	req := upstream.Request{BookingID: []byte(`"b-1"`)}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, _, err := c.do(ctx, key, req, "", 2*time.Second, h.upstream.Sync)
		done <- err
	}()
	testkit.WaitFor(t, up.Arrived, time.Second, "sync A")
	cancel()
	assert.ErrorIs(t, <-done, context.Canceled)
	testkit.WaitFor(t, up.Cancelled, time.Second, "import-bookings to see the abandoned sync cancelled")
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(c) }))
}

// TestCoalesceAllLeaveCancelsStartedNextSync: the same once the shared next
// sync has started: it runs while one of its callers waits, and is
// cancelled when the last one leaves.
func TestCoalesceAllLeaveCancelsStartedNextSync(t *testing.T) {
	releaseA := make(chan struct{})
	blockAll := make(chan struct{})
	defer close(blockAll)
	var mu sync.Mutex
	n := 0
	up := testkit.NewStandIn(t)
	up.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		mu.Lock()
		n++
		first := n == 1
		mu.Unlock()
		if first {
			testkit.BlockUntil(releaseA)(w, r, c)
			return
		}
		testkit.BlockUntil(blockAll)(w, r, c)
	})
	h := newTestHandler(t, up.Target(), nil)
	c, key := h.coalescer, payload.Key{Booking: "b-1"}
	req := upstream.Request{BookingID: []byte(`"b-1"`)}

	aDone := make(chan error, 1)
	go func() {
		_, _, err := c.do(context.Background(), key, req, "", 2*time.Second, h.upstream.Sync)
		aDone <- err
	}()
	testkit.WaitFor(t, up.Arrived, time.Second, "sync A")

	ctxs := make([]context.CancelFunc, 3)
	bDone := make(chan error, 3)
	for i := range ctxs {
		ctx, cancel := context.WithCancel(context.Background())
		ctxs[i] = cancel
		go func() {
			_, _, err := c.do(ctx, key, req, "", 2*time.Second, h.upstream.Sync)
			bDone <- err
		}()
	}
	require.True(t, eventually(time.Second, func() bool { return nextWaiters(c, key) == 3 }))
	close(releaseA)
	require.NoError(t, <-aDone)
	testkit.WaitFor(t, up.Arrived, time.Second, "sync B to start")
	assert.Equal(t, 3, runningWaiters(c, key))

	ctxs[0]()
	ctxs[1]()
	for i := 0; i < 2; i++ {
		assert.ErrorIs(t, <-bDone, context.Canceled)
	}
	select {
	case <-up.Cancelled:
		t.Fatal("sync B was cancelled while a caller still waited for it")
	case <-time.After(50 * time.Millisecond):
	}
	ctxs[2]()
	assert.ErrorIs(t, <-bDone, context.Canceled)
	testkit.WaitFor(t, up.Cancelled, time.Second, "sync B to be cancelled once nobody waits")
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(c) }))
}

// TestCoalesceSyncTimeoutBoundsEachSync: the timeout passed to do bounds a
// sync from its start, even if its caller would wait longer.
func TestCoalesceSyncTimeoutBoundsEachSync(t *testing.T) {
	release := make(chan struct{})
	defer close(release)
	up := testkit.NewStandIn(t)
	up.Respond(testkit.BlockUntil(release))
	h := newTestHandler(t, up.Target(), nil)
	start := time.Now()
	res, shared, err := h.coalescer.do(context.Background(), payload.Key{Booking: "b-1"},
		upstream.Request{BookingID: []byte(`"b-1"`)}, "", 100*time.Millisecond, h.upstream.Sync)
	require.NoError(t, err)
	assert.False(t, shared)
	assert.True(t, res.TimedOut, "%+v", res)
	assert.False(t, res.OK())
	assert.Less(t, time.Since(start), time.Second)
	testkit.WaitFor(t, up.Cancelled, time.Second, "the timed-out sync to be cancelled")
}

func TestCoalesceCallerErrorIsContextError(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.Respond(nil)
	h := newTestHandler(t, up.Target(), nil)
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	_, _, err := h.coalescer.do(ctx, payload.Key{Booking: "b-9"}, upstream.Request{BookingID: []byte(`"b-9"`)}, "", time.Second, h.upstream.Sync)
	if err != nil {
		assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
	}
	assert.True(t, eventually(time.Second, func() bool { return coalescerIdle(h.coalescer) }))
}

package queue

// Engine tests on a real SQLite file and a real PostgreSQL database, with
// the testkit stand-in as import-bookings.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
	"github.com/jackc/pgx/v5"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivertype"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/bookingwebhook/caddy-receive-booking/internal/scrub"
)

// gatedUpstream is the testkit stand-in whose calls can be held open
// (each receive from gate lets one finish) and whose status can change.
type gatedUpstream struct {
	*testkit.StandIn
	gate   chan struct{}
	status atomic.Int32
}

func newGatedUpstream(t testing.TB, hold bool) *gatedUpstream {
	u := &gatedUpstream{StandIn: testkit.NewStandIn(t)}
	u.status.Store(200)
	if hold {
		u.gate = make(chan struct{})
	}
	u.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		if u.gate != nil {
			select {
			case <-u.gate:
			case <-r.Context().Done():
			}
		}
		testkit.WriteJSON(w, int(u.status.Load()), testkit.Envelope(c, "applied"))
	})
	return u
}

// callsFor returns the calls for a booking given as its JSON literal.
func (u *gatedUpstream) callsFor(literal string) []testkit.Call {
	return u.CallsFor(strings.Trim(literal, `"`))
}

// openTestQueue starts a real engine on a SQLite file in a temporary
// directory, or on a fresh PostgreSQL database, with routes registered as
// a config's handlers would, and waits until it is connected.
func openTestQueue(t *testing.T, rq *Config, routes map[string]*upstream.Client) *Engine {
	t.Helper()
	if rq.Location == "" {
		if rq.Driver == SQLite {
			rq.Location = filepath.Join(t.TempDir(), "queue.sqlite3")
		} else {
			rq.Location = testkit.FreshPostgresDSN(t)
		}
	}
	e := New(rq, zaptest.NewLogger(t))
	t.Cleanup(func() { assert.NoError(t, e.Destruct()) })
	if routes == nil {
		routes = map[string]*upstream.Client{}
	}
	e.Attach(t, routes, nil, rq.Settings)
	<-e.ready
	_, err := e.current()
	require.NoError(t, err)
	return e
}

// testQueueHandle enqueues webhooks on an engine under one route, as a
// handler does.
type testQueueHandle struct {
	q     *Engine
	route string
}

func (h *testQueueHandle) enqueue(ctx context.Context, wh *payload.Webhook, window time.Duration) (int64, bool, error) {
	now := time.Now()
	urgency, ok := DefaultUrgency[wh.EventType]
	if !ok {
		urgency = UrgencyUnknown
	}
	req := &Entry{Webhook: wh, Route: h.route, AcceptedAt: now, NotBefore: now.Add(window), Urgency: urgency}
	err := h.q.Record(ctx, req)
	return req.JobID, req.Coalesced, err
}

// backend is the engine's connected backend.
func (h *testQueueHandle) backend() backend {
	b, err := h.q.current()
	if err != nil {
		panic(err)
	}
	return b
}

// testQueue opens a real queue (SQLite file or PostgreSQL database) with
// an upstream registered for the default route, as a handler would.
func testQueue(t *testing.T, driver string, up *testkit.StandIn) *testQueueHandle {
	t.Helper()
	u, err := url.Parse(up.URL)
	require.NoError(t, err)
	routes := map[string]*upstream.Client{DefaultRoute: upstream.New(u, "tk", "test", nil)}
	q := openTestQueue(t, &Config{Driver: driver, Settings: Settings{Workers: 4, MaxAttempts: 3, WorkerTimeout: 10 * time.Second}}, routes)
	return &testQueueHandle{q: q, route: DefaultRoute}
}

func testWebhook(id string) *payload.Webhook {
	return &payload.Webhook{BookingID: json.RawMessage(`"` + id + `"`), BookingKey: id, OrganizationID: "org", EventType: "updated"}
}

func forEachDriver(t *testing.T, fn func(t *testing.T, driver string)) {
	for _, d := range []string{SQLite, Postgres} {
		t.Run(d, func(t *testing.T) { fn(t, d) })
	}
}

// TestQueueBurstMergesIntoWaitingSync: a burst inside the coalescing
// window becomes one upstream call.
func TestQueueBurstMergesIntoWaitingSync(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		up := newGatedUpstream(t, false)
		qh := testQueue(t, driver, up.StandIn)
		ctx := context.Background()
		var first int64
		for i := range 20 {
			id, coalesced, err := qh.enqueue(ctx, testWebhook("b1"), 700*time.Millisecond)
			require.NoError(t, err)
			if i == 0 {
				first = id
				assert.False(t, coalesced)
				continue
			}
			assert.True(t, coalesced, "webhook %d merges into the waiting sync", i)
			assert.Equal(t, first, id)
		}
		require.Eventually(t, func() bool { return len(up.callsFor(`"b1"`)) == 1 }, 10*time.Second, 20*time.Millisecond)
		time.Sleep(300 * time.Millisecond)
		assert.Len(t, up.callsFor(`"b1"`), 1, "one upstream call for the whole burst")
	})
}

// TestQueueWebhookDuringRunningSyncCausesOneMore: a webhook that meets a
// running sync never merges into it; it causes exactly one more sync after
// it, which later webhooks merge into; the two never overlap.
func TestQueueWebhookDuringRunningSyncCausesOneMore(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		up := newGatedUpstream(t, true)
		qh := testQueue(t, driver, up.StandIn)
		ctx := context.Background()
		first, _, err := qh.enqueue(ctx, testWebhook("b2"), 0)
		require.NoError(t, err)
		select {
		case <-up.Arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("first sync never started")
		}
		second, coalesced, err := qh.enqueue(ctx, testWebhook("b2"), 0)
		require.NoError(t, err)
		assert.False(t, coalesced, "never merge into a running sync")
		assert.NotEqual(t, first, second)
		for range 5 {
			id, coalesced, err := qh.enqueue(ctx, testWebhook("b2"), 0)
			require.NoError(t, err)
			assert.True(t, coalesced)
			assert.Equal(t, second, id)
		}
		// The follow-up must wait for the running sync: nothing else starts.
		select {
		case id := <-up.Arrived:
			t.Fatalf("a second sync of %s started while the first ran", id.Booking)
		case <-time.After(1500 * time.Millisecond):
		}
		up.gate <- struct{}{} // finish the first
		select {
		case <-up.Arrived:
		case <-time.After(15 * time.Second):
			t.Fatal("follow-up sync never started")
		}
		up.gate <- struct{}{}
		require.Eventually(t, func() bool { return len(up.callsFor(`"b2"`)) == 2 }, 10*time.Second, 20*time.Millisecond)
		calls := up.callsFor(`"b2"`)
		assert.False(t, calls[1].Start.Before(calls[0].End), "the follow-up starts after the first sync ended")
		perBooking, _ := up.MaxInFlight()
		assert.Equal(t, 1, perBooking)
	})
}

// TestQueueRetriesThenSucceeds: a 503 is retried, and webhooks arriving
// while the job waits for its retry merge into it.
func TestQueueRetriesThenSucceeds(t *testing.T) {
	up := newGatedUpstream(t, false)
	up.status.Store(503)
	qh := testQueue(t, SQLite, up.StandIn)
	ctx := context.Background()
	id, _, err := qh.enqueue(ctx, testWebhook("b3"), 0)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(up.callsFor(`"b3"`)) == 1 }, 10*time.Second, 20*time.Millisecond)
	up.status.Store(200)
	// River keeps a job that retries within seconds "available" with a
	// future scheduled_at, and a later one "retryable".
	require.Eventually(t, func() bool {
		job, err := qh.backend().GetJob(ctx, id)
		return err == nil && (job.State == "retryable" || job.State == "available")
	}, 5*time.Second, 20*time.Millisecond)
	again, coalesced, err := qh.enqueue(ctx, testWebhook("b3"), 0)
	require.NoError(t, err)
	assert.True(t, coalesced, "a webhook merges into a sync waiting for its retry")
	assert.Equal(t, id, again)
	require.Eventually(t, func() bool { return len(up.callsFor(`"b3"`)) == 2 }, 20*time.Second, 50*time.Millisecond)
	job, err := qh.backend().GetJob(ctx, id)
	require.NoError(t, err)
	require.Len(t, job.Errors, 1)
	assert.Contains(t, job.Errors[0].Error, "upstream status 503")
}

// TestQueuePermanentFailureIsCancelled: a 4xx other than 408/429 is not
// retried.
func TestQueuePermanentFailureIsCancelled(t *testing.T) {
	up := newGatedUpstream(t, false)
	up.status.Store(400)
	qh := testQueue(t, SQLite, up.StandIn)
	ctx := context.Background()
	id, _, err := qh.enqueue(ctx, testWebhook("b4"), 0)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		job, err := qh.backend().GetJob(ctx, id)
		return err == nil && job.State == "cancelled"
	}, 10*time.Second, 20*time.Millisecond)
	assert.Len(t, up.callsFor(`"b4"`), 1)
	job, err := qh.backend().GetJob(ctx, id)
	require.NoError(t, err)
	require.Len(t, job.Errors, 1)
	assert.True(t, strings.HasPrefix(job.Errors[0].Error, "upstream status 400"),
		"the error as recorded, without River's JobCancelError prefix: %q", job.Errors[0].Error)
}

func TestRetryPolicyBackoff(t *testing.T) {
	for attempt := 1; attempt <= 12; attempt++ {
		d := backoff(attempt)
		want := min(retryBase<<(attempt-1), retryCap)
		assert.GreaterOrEqual(t, d, want/2, "attempt %d", attempt)
		assert.LessOrEqual(t, d, want, "attempt %d", attempt)
	}
	assert.LessOrEqual(t, backoff(100), retryCap)
}

// TestRetryHonoursRetryAfter: the retry after an answer with Retry-After
// comes when it asks (capped), instead of the backoff; an abandoned call is not retried
// before it could have ended; final answers cancel; job errors are
// scrubbed.
func TestRetryHonoursRetryAfter(t *testing.T) {
	var sc scrub.Scrubber
	sc.Set("test", "tk-key")
	slow := &upstream.Result{Status: 429, Text: "slow down tk-key", RetryAfter: 120 * time.Second, Verdict: upstream.Retry, Reason: "status 429"}
	err := jobError(slow, &sc)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "tk-key", "the upstream key is scrubbed from job errors")

	w := &syncWorker[*riversqlite.Driver, *sql.Tx]{timeout: time.Minute}
	job := &river.Job[Args]{JobRow: &rivertype.JobRow{ID: 7, Attempt: 1}}
	w.planRetry(job, slow, false)
	assert.WithinDuration(t, time.Now().Add(120*time.Second), w.NextRetry(job), 2*time.Second)
	w.planRetry(job, &upstream.Result{Status: 503, RetryAfter: time.Second}, false)
	assert.WithinDuration(t, time.Now().Add(time.Second), w.NextRetry(job), 500*time.Millisecond, "sooner than the backoff too")
	assert.Less(t, time.Until(w.NextRetry(job)), 10*time.Second, "used once: the next failure backs off normally")

	w.planRetry(job, &upstream.Result{Status: 503, RetryAfter: 99999 * time.Second}, false)
	assert.WithinDuration(t, time.Now().Add(retryCap), w.NextRetry(job), 2*time.Second, "capped")

	abandoned := &upstream.Result{Err: errors.New("canceled"), Duration: 10 * time.Second}
	w.planRetry(job, abandoned, true)
	assert.WithinDuration(t, time.Now().Add(50*time.Second), w.NextRetry(job), 2*time.Second,
		"not before worker_timeout after the abandoned call started")

	final := jobError(&upstream.Result{Status: 404, Verdict: upstream.Final}, &sc)
	assert.True(t, isCancel(final), "a final answer cancels")
	assert.NotContains(t, final.Error(), "JobCancelError", "River records the cause alone")
	assert.False(t, isCancel(jobError(&upstream.Result{Status: 503, Verdict: upstream.Retry}, &sc)))
	assert.NoError(t, jobError(&upstream.Result{Status: 200, Body: json.RawMessage(`{"success":true}`), Verdict: upstream.Synced}, &sc))
}

// TestJobOfWithoutCancelPrefix: a job cancelled by an older version,
// whose row holds River's prefix, shows its error without it.
func TestJobOfWithoutCancelPrefix(t *testing.T) {
	row := &rivertype.JobRow{EncodedArgs: []byte(`{}`),
		Errors: []rivertype.AttemptError{{Attempt: 1, Error: "JobCancelError: upstream status 404"}}}
	assert.Equal(t, "upstream status 404", jobOf(row).Errors[0].Error)
}

// TestQueueUnavailable: a queue whose file cannot be opened refuses to
// record (nothing is claimed as accepted), and its health says why.
func TestQueueUnavailable(t *testing.T) {
	rq := &Config{Driver: SQLite, Location: t.TempDir(), Settings: Settings{Workers: 1, MaxAttempts: 1, WorkerTimeout: time.Second}}
	e := New(rq, zaptest.NewLogger(t))
	t.Cleanup(func() { _ = e.Destruct() })
	req := &Entry{Webhook: testWebhook("b9"), Route: DefaultRoute}
	err := e.Record(context.Background(), req)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "queue unavailable")
	assert.Zero(t, req.JobID)
	assert.ErrorContains(t, e.Health(context.Background()), "queue unavailable")
}

// TestQueueOutageRecovers: import-bookings answers 503 for a while, then
// recovers: every booking is synced, retries are spaced by the schedule,
// and nothing becomes a dead letter.
func TestQueueOutageRecovers(t *testing.T) {
	// Long enough for two failed attempts (the second comes 2.5–5 s after
	// the first), short enough for the third (7.5–15 s) to succeed.
	const outage = 6 * time.Second
	up := newGatedUpstream(t, false)
	up.status.Store(503)
	qh := testQueue(t, SQLite, up.StandIn)
	ctx := context.Background()
	var ids []int64
	for i := range 20 {
		id, _, err := qh.enqueue(ctx, testWebhook(fmt.Sprintf("o%d", i)), 0)
		require.NoError(t, err)
		ids = append(ids, id)
	}
	time.Sleep(outage)
	up.status.Store(200)
	require.Eventually(t, func() bool {
		for _, id := range ids {
			job, err := qh.backend().GetJob(ctx, id)
			if err != nil || job.State != "completed" {
				return false
			}
		}
		return true
	}, 45*time.Second, 200*time.Millisecond, "every booking synced after the outage")
	calls := up.callsFor(`"o0"`)
	require.GreaterOrEqual(t, len(calls), 2)
	for i := 1; i < len(calls); i++ {
		gap := calls[i].Start.Sub(calls[i-1].Start)
		assert.GreaterOrEqual(t, gap, retryBase/2, "retry %d came %s after the one before", i, gap)
		t.Logf("o0 attempt %d after %s", i+1, gap.Round(100*time.Millisecond))
	}
	stats, err := qh.q.Stats(ctx)
	require.NoError(t, err)
	assert.Zero(t, stats.Counts["discarded"], "no dead letters for a temporary outage")
	assert.Zero(t, stats.Counts["cancelled"])
}

// TestFairnessBetweenOrganizations: two workers, 300 queued syncs for
// organization A (a bulk change), then one webhook for organization B:
// B's sync runs after at most a few of A's.
func TestFairnessBetweenOrganizations(t *testing.T) {
	up := testkit.NewStandIn(t)
	up.SetDelay(20 * time.Millisecond)
	u, err := url.Parse(up.URL)
	require.NoError(t, err)
	routes := map[string]*upstream.Client{DefaultRoute: upstream.New(u, "tk", "test", nil)}
	q := openTestQueue(t, &Config{Driver: SQLite, Settings: Settings{Workers: 2, MaxAttempts: 3, WorkerTimeout: 10 * time.Second}}, routes)
	h := &testQueueHandle{q: q, route: DefaultRoute}
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 300 {
		wg.Go(func() {
			wh := testWebhook(fmt.Sprintf("a-%d", i))
			wh.OrganizationID, wh.OrganizationIDJSON = "org-A", json.RawMessage(`"org-A"`)
			_, _, err := h.enqueue(ctx, wh, 0)
			assert.NoError(t, err)
		})
	}
	wg.Wait()
	// A's backlog is being worked through when B's webhook comes.
	require.Eventually(t, func() bool { return len(up.Calls()) >= 20 }, 30*time.Second, 5*time.Millisecond)
	wh := testWebhook("b-1")
	wh.OrganizationID, wh.OrganizationIDJSON = "org-B", json.RawMessage(`"org-B"`)
	recorded := time.Now()
	_, _, err = h.enqueue(ctx, wh, 0)
	require.NoError(t, err)
	var bStart time.Time
	require.Eventually(t, func() bool {
		calls := up.CallsFor("b-1")
		if len(calls) > 0 {
			bStart = calls[0].Start
		}
		return len(calls) > 0
	}, 30*time.Second, 5*time.Millisecond)
	before := 0
	for _, c := range up.Calls() {
		if c.Booking != "b-1" && c.Start.Before(bStart) && c.Start.After(recorded) {
			before++
		}
	}
	waiting := 0
	for i := range 300 {
		if len(up.CallsFor(fmt.Sprintf("a-%d", i))) == 0 {
			waiting++
		}
	}
	t.Logf("FAIRNESS: 2 workers, 300 syncs of organization A queued, then 1 of B once A's backlog was running: B's sync started %s after it was recorded; %d of A's syncs started in between; %d of A's were still waiting when B's ran",
		bStart.Sub(recorded).Round(time.Millisecond), before, waiting)
	assert.LessOrEqual(t, before, 5, "B waits for at most a few of A's syncs")
}

// TestNewSyncNeverOvertakesItsOrganization: fair priorities sink an
// organization's backlog below others' new webhooks, but within one
// organization and urgency class syncs run in the order they were
// recorded: when its backlog shrinks and a new sync gets a better
// priority, its older waiting syncs of the class are raised to it first.
func TestNewSyncNeverOvertakesItsOrganization(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		qh := testQueue(t, driver, newGatedUpstream(t, false).StandIn)
		ctx := t.Context()
		cancelled := func(id string) *payload.Webhook {
			wh := testWebhook(id)
			wh.EventType = payload.EventCancelled // urgent: priorities 1 to 4
			return wh
		}
		// Inside an hour-long window: recorded and waiting, none runs.
		for i := range 35 {
			_, _, err := qh.enqueue(ctx, cancelled(fmt.Sprintf("p-%d", i)), time.Hour)
			require.NoError(t, err)
		}
		b := qh.backend().(interface {
			execPool(ctx context.Context, query string, args ...any) error
		})
		worst := func() (p int) {
			rows, err := qh.rows(ctx, `SELECT max(priority) FROM river_job WHERE id IN
				(SELECT waiting_job_id FROM receive_booking_booking WHERE org = 'org')`)
			require.NoError(t, err)
			defer rows.Close()
			require.True(t, rows.Next())
			require.NoError(t, rows.Scan(&p))
			return p
		}
		require.Equal(t, 3, worst(), "the backlog sank (more than 30 waiting)")
		// The first 30 started (their claims took them out of the waiting
		// slot): 5 wait, and the next sync gets priority 2.
		require.NoError(t, b.execPool(ctx, `UPDATE receive_booking_booking SET waiting_job_id = NULL
			WHERE booking IN (`+placeholders(30)+`)`, ids("p-", 30)...))
		id, _, err := qh.enqueue(ctx, cancelled("p-new"), time.Hour)
		require.NoError(t, err)
		job, err := qh.backend().GetJob(ctx, id)
		require.NoError(t, err)
		var prio int
		rows, err := qh.rows(ctx, `SELECT priority FROM river_job WHERE id = $1`, job.ID)
		require.NoError(t, err)
		require.True(t, rows.Next())
		require.NoError(t, rows.Scan(&prio))
		rows.Close()
		assert.Equal(t, 2, prio)
		assert.LessOrEqual(t, worst(), prio, "no older sync of the organization waits behind the new one")
	})
}

// rows runs a query on the engine's database.
func (h *testQueueHandle) rows(ctx context.Context, query string, args ...any) (rowsIter, error) {
	switch b := h.backend().(type) {
	case *riverBackend[*wakeDriver, *sql.Tx]:
		return b.db.queryRows(ctx, query, args...)
	case *riverBackend[*riverpgxv5.Driver, pgx.Tx]:
		return b.db.queryRows(ctx, query, args...)
	}
	return nil, fmt.Errorf("unknown backend %T", h.backend())
}

// placeholders is "$1, $2, …, $n".
func placeholders(n int) string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("$%d", i+1)
	}
	return strings.Join(out, ", ")
}

// ids is prefix0 … prefix(n-1), as query arguments.
func ids(prefix string, n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

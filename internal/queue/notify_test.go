package queue

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
)

// TestWaiterMarkRule: an attempt run elsewhere answers only the waiters
// recorded before its claim (mark below the claim number); a local claim
// takes every waiter; a waiter taken once is gone.
func TestWaiterMarkRule(t *testing.T) {
	var w waiters
	w.init()
	before, after, other := make(chan *Outcome, 1), make(chan *Outcome, 1), make(chan *Outcome, 1)
	w.add(1, before, 3)
	w.add(1, after, 7) // merged after the job went back to waiting
	w.add(2, other, 0)

	assert.Empty(t, w.takeClaimed(1, 3), "claim 3 locked the booking before both records")
	assert.Equal(t, []chan *Outcome{before}, w.takeClaimed(1, 5))
	assert.Empty(t, w.takeClaimed(1, 5), "taken once")
	assert.Empty(t, w.takeClaimed(1, 7))
	assert.Equal(t, []chan *Outcome{after}, w.takeClaimed(1, 8))
	assert.NotContains(t, w.pending, int64(1))

	w.add(1, before, 9)
	w.add(1, after, 12)
	w.remove(1, before)
	assert.Equal(t, []chan *Outcome{after}, w.take(1), "a local claim takes every waiter")
	assert.Equal(t, []chan *Outcome{other}, w.take(2))
	assert.Empty(t, w.pending)
}

// TestOutcomeNoteIsScrubbedAndFits: a published outcome carries what a
// waiting sender needs, no secret, and stays under NOTIFY's limit.
func TestOutcomeNoteIsScrubbedAndFits(t *testing.T) {
	const secret = "s3cr3t-key-value"
	e := New(&Config{Driver: SQLite, Location: t.TempDir() + "/q.sqlite3"}, zaptest.NewLogger(t))
	t.Cleanup(func() { _ = e.Destruct() })
	e.scrub.Set(t, secret)

	assert.Nil(t, e.noteOf(1, 0, &Outcome{Result: &upstream.Result{}}), "no claim number (SQLite): nothing to publish")

	res := &upstream.Result{Status: 200, Body: json.RawMessage(`{"success":true,"echo":"` + secret + `"}`), Verdict: upstream.Synced,
		Outcome: "applied", Duration: 250 * time.Millisecond, RetryAfter: time.Second}
	note := e.noteOf(42, 7, &Outcome{Result: res, Final: true})
	require.NotNil(t, note)
	assert.NotContains(t, string(note.payload), secret)
	id, claim, out, _, err := readNote(string(note.payload))
	require.NoError(t, err)
	assert.Equal(t, int64(42), id)
	assert.Equal(t, int64(7), claim)
	assert.True(t, out.Final)
	assert.Empty(t, out.Err)
	assert.True(t, out.Result.OK())
	assert.JSONEq(t, `{"success":true,"echo":"[redacted]"}`, string(out.Result.Body))
	assert.Equal(t, "applied", out.Result.Outcome)
	assert.Equal(t, 250*time.Millisecond, out.Result.Duration)
	assert.Equal(t, time.Second, out.Result.RetryAfter)
	assert.Nil(t, out.Result.Err)

	// A failure: texts scrubbed, the call's error carried as text.
	res = &upstream.Result{Err: errors.New("dial " + secret), Text: "oops " + secret, Reason: "r " + secret, TimedOut: true}
	note = e.noteOf(43, 8, &Outcome{Result: res, Err: "upstream unreachable: " + secret})
	assert.NotContains(t, string(note.payload), secret)
	_, _, out, _, err = readNote(string(note.payload))
	require.NoError(t, err)
	assert.False(t, out.Final)
	assert.Equal(t, "upstream unreachable: [redacted]", out.Err)
	require.Error(t, out.Result.Err)
	assert.Equal(t, "dial [redacted]", out.Result.Err.Error())
	assert.True(t, out.Result.TimedOut)
	assert.Equal(t, upstream.Retry, out.Result.Verdict)

	// Too long: the body goes, then the texts are cut.
	big := json.RawMessage(`{"success":true,"pad":"` + strings.Repeat("x", 9000) + `"}`)
	note = e.noteOf(44, 9, &Outcome{Result: &upstream.Result{Status: 200, Body: big, Verdict: upstream.Synced}, Final: true})
	assert.Less(t, len(note.payload), maxNoteBytes+1)
	_, _, out, stored, err := readNote(string(note.payload))
	require.NoError(t, err)
	assert.Nil(t, out.Result.Body, "the body is not in the notification")
	assert.True(t, stored, "it is stored apart")
	assert.JSONEq(t, string(big), string(note.body))
	assert.True(t, out.Result.OK())
	control := strings.Repeat("\x01", 2000) // 6 bytes each once escaped
	note = e.noteOf(45, 9, &Outcome{Result: &upstream.Result{Text: control, Reason: control}, Err: control})
	assert.Less(t, len(note.payload), maxNoteBytes+1)
	_, _, _, _, err = readNote(string(note.payload))
	require.NoError(t, err)
}

// TestLateOutcomeSkipsLaterRecordsPostgres: through PostgreSQL, a waiter
// hears an outcome published by a claim numbered above its record's mark,
// never one of a claim taken before its record (the late outcome of an
// earlier attempt of a job that went back to waiting).
func TestLateOutcomeSkipsLaterRecordsPostgres(t *testing.T) {
	up := newGatedUpstream(t, false)
	qh := testQueue(t, Postgres, up.StandIn)
	ctx := context.Background()
	conn := testPGConn(t, qh)
	var earlier int64
	for range 3 { // claims taken before the record
		require.NoError(t, conn.QueryRow(ctx, `SELECT nextval('receive_booking_claim_seq')`).Scan(&earlier))
	}
	record := func(booking string) (*Entry, chan *Outcome) {
		now := time.Now()
		ch := make(chan *Outcome, 1)
		// Inside its window for an hour: no worker claims it meanwhile.
		r := &Entry{Webhook: testWebhook(booking), Route: DefaultRoute, AcceptedAt: now, NotBefore: now.Add(time.Hour), Wait: ch}
		require.NoError(t, qh.q.Record(ctx, r))
		t.Cleanup(func() { qh.q.StopWaiting(r.JobID, ch) })
		return r, ch
	}
	late, lateCh := record("n1")
	probe, probeCh := record("n2")
	assert.Equal(t, earlier, late.mark, "the mark is the last claim number")
	publish := func(jobID, claim int64) {
		note := qh.q.noteOf(jobID, claim, &Outcome{Result: &upstream.Result{Status: 200, Body: json.RawMessage(`{"success":true}`), Verdict: upstream.Synced}, Final: true})
		_, err := conn.Exec(ctx, `SELECT pg_notify($1, $2)`, outcomeChannel, string(note.payload))
		require.NoError(t, err)
	}
	publish(late.JobID, earlier) // the earlier attempt's outcome, arriving late
	var next int64
	require.NoError(t, conn.QueryRow(ctx, `SELECT nextval('receive_booking_claim_seq')`).Scan(&next))
	publish(probe.JobID, next) // heard after the late one: notifications keep their order
	select {
	case out := <-probeCh:
		assert.True(t, out.Result.OK())
	case <-time.After(10 * time.Second):
		t.Fatal("a waiter never heard an outcome claimed after its record")
	}
	select {
	case <-lateCh:
		t.Fatal("a waiter heard the outcome of an attempt claimed before its record")
	default:
	}
	publish(late.JobID, next)
	select {
	case out := <-lateCh:
		assert.True(t, out.Final)
		assert.JSONEq(t, `{"success":true}`, string(out.Result.Body))
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter never heard the attempt claimed after its record")
	}

	// An answer too long for a notification is stored beside it, in the
	// same transaction, and the waiter gets it whole.
	big, bigCh := record("n3")
	require.NoError(t, conn.QueryRow(ctx, `SELECT nextval('receive_booking_claim_seq')`).Scan(&next))
	body := `{"success":true,"results":{"log":"` + strings.Repeat("x", 20000) + `"}}`
	note := qh.q.noteOf(big.JobID, next, &Outcome{Result: &upstream.Result{Status: 200, Body: json.RawMessage(body), Verdict: upstream.Synced}, Final: true})
	require.NotNil(t, note.body, "too long to be carried")
	tx, err := conn.Begin(ctx)
	require.NoError(t, err)
	require.NoError(t, (&pgDialect{}).publish(ctx, tx, note))
	require.NoError(t, tx.Commit(ctx))
	select {
	case out := <-bigCh:
		assert.True(t, out.Final)
		assert.JSONEq(t, body, string(out.Result.Body), "the whole answer")
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter never heard the long answer")
	}
}

// TestOutcomeListenerReconnectsPostgres: when its connection is cut, the
// listener listens again on a new one, and waiters hear outcomes again.
func TestOutcomeListenerReconnectsPostgres(t *testing.T) {
	up := newGatedUpstream(t, false)
	qh := testQueue(t, Postgres, up.StandIn)
	ctx := context.Background()
	conn := testPGConn(t, qh)
	listener := func() (pid int) {
		err := conn.QueryRow(ctx, `SELECT coalesce(max(pid), 0) FROM pg_stat_activity
			WHERE datname = current_database() AND query LIKE 'LISTEN %'`).Scan(&pid)
		require.NoError(t, err)
		return pid
	}
	first := listener()
	require.NotZero(t, first)
	_, err := conn.Exec(ctx, `SELECT pg_terminate_backend($1)`, first)
	require.NoError(t, err)
	require.Eventually(t, func() bool { p := listener(); return p != 0 && p != first }, 15*time.Second, 50*time.Millisecond,
		"the listener listens on a new connection")

	now := time.Now()
	ch := make(chan *Outcome, 1)
	r := &Entry{Webhook: testWebhook("r1"), Route: DefaultRoute, AcceptedAt: now, NotBefore: now.Add(time.Hour), Wait: ch}
	require.NoError(t, qh.q.Record(ctx, r))
	defer qh.q.StopWaiting(r.JobID, ch)
	note := qh.q.noteOf(r.JobID, r.mark+1, &Outcome{Result: &upstream.Result{Status: 200, Verdict: upstream.Synced}, Final: true})
	_, err = conn.Exec(ctx, `SELECT pg_notify($1, $2)`, outcomeChannel, string(note.payload))
	require.NoError(t, err)
	select {
	case out := <-ch:
		assert.True(t, out.Result.OK())
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome heard after the reconnect")
	}
}

// TestSlotWaitsHandOneSlotInFetchOrder: each released slot wakes one
// waiting sync of the instance, in River's fetch order: the best priority,
// then the one that began to wait first (a waiter that lost the slot to
// another instance and waits again keeps its place).
func TestSlotWaitsHandOneSlotInFetchOrder(t *testing.T) {
	var s slotWaits
	woke := make(chan string, 4)
	t0 := time.Now()
	queued := func(n int) {
		require.Eventually(t, func() bool { s.mu.Lock(); defer s.mu.Unlock(); return len(s.queue) == n }, time.Second, time.Millisecond)
	}
	waitAs := func(name string, priority int, since time.Time) {
		go func() { s.wait(t.Context(), time.Minute, priority, since); woke <- name }()
	}
	waitAs("backlog-1", 4, t0)
	queued(1)
	waitAs("backlog-2", 4, t0.Add(time.Second))
	queued(2)
	waitAs("new-webhook", 1, t0.Add(2*time.Second))
	queued(3)
	// backlog-1 lost the slot before and waits again, from its first start.
	waitAs("backlog-0", 4, t0.Add(-time.Second))
	queued(4)
	for _, want := range []string{"new-webhook", "backlog-0", "backlog-1", "backlog-2"} {
		s.signal()
		assert.Equal(t, want, <-woke)
		select {
		case got := <-woke:
			t.Fatalf("one release woke a second waiter (%s)", got)
		case <-time.After(20 * time.Millisecond):
		}
	}
	s.signal() // nobody waits: nothing to wake, nothing kept
	assert.Empty(t, s.queue)
}

// testPGConn is a connection of the test's own to the queue's PostgreSQL
// database, closed when the test ends.
func testPGConn(t *testing.T, qh *testQueueHandle) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), qh.q.rq.Location)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

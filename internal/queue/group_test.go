package queue

// Group commit and the in-process wake-up, on a real SQLite file opened as
// the engine opens it.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"modernc.org/sqlite"

	"github.com/bookingwebhook/caddy-receive-booking/internal/stmtcache"
	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

func openTestDialect(t *testing.T) *sqliteDialect {
	t.Helper()
	dsn := "file:" + filepath.Join(t.TempDir(), "g.sqlite3") +
		"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	base, err := sqlite.NewConnector(dsn)
	require.NoError(t, err)
	db := sql.OpenDB(stmtcache.Connector(base, stmtCacheSize))
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { _ = db.Close() })
	_, err = db.Exec(`CREATE TABLE t (id INTEGER PRIMARY KEY)`)
	require.NoError(t, err)
	return &sqliteDialect{db: db}
}

func synchronousOf(t *testing.T, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) int {
	t.Helper()
	var n int
	require.NoError(t, q.QueryRowContext(context.Background(), `PRAGMA synchronous`).Scan(&n))
	return n
}

func TestGroupCommitUndoesOnlyTheFailedWrite(t *testing.T) {
	d := openTestDialect(t)
	g := newGroupCommit(d, d.beginSync)
	defer g.close()
	boom := errors.New("boom")
	const n = 40
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			errs[i] = g.do(t.Context(), i%2 == 0, func(ctx context.Context, tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, `INSERT INTO t (id) VALUES (?)`, i); err != nil {
					return err
				}
				if i%4 == 3 {
					return boom // after its insert: the insert must be undone
				}
				return nil
			})
		})
	}
	wg.Wait()
	rows, err := d.db.Query(`SELECT id FROM t ORDER BY id`)
	require.NoError(t, err)
	var got []int
	for rows.Next() {
		var id int
		require.NoError(t, rows.Scan(&id))
		got = append(got, id)
	}
	require.NoError(t, rows.Close())
	var want []int
	for i := range n {
		if i%4 == 3 {
			assert.ErrorIs(t, errs[i], boom, "op %d", i)
		} else {
			assert.NoError(t, errs[i], "op %d", i)
			want = append(want, i)
		}
	}
	assert.Equal(t, want, got)
	// Whatever mix of relaxed and durable writes ran, the connection is
	// back to NORMAL for River's own transactions.
	assert.Equal(t, 1, synchronousOf(t, d.db))
}

func TestOnlyDurableWritesSync(t *testing.T) {
	d := openTestDialect(t)
	g := newGroupCommit(d, d.beginSync)
	var during int
	require.NoError(t, g.do(t.Context(), true, func(ctx context.Context, tx *sql.Tx) error {
		during = synchronousOf(t, tx)
		_, err := tx.ExecContext(ctx, `INSERT INTO t (id) VALUES (1)`)
		return err
	}))
	assert.Equal(t, 1, during, "NORMAL inside a relaxed transaction")
	require.NoError(t, g.do(t.Context(), false, func(ctx context.Context, tx *sql.Tx) error {
		during = synchronousOf(t, tx)
		return nil
	}))
	assert.Equal(t, 2, during, "FULL inside a durable one")
	assert.Equal(t, 1, synchronousOf(t, d.db), "NORMAL for every other transaction")

	g.close()
	err := g.do(t.Context(), false, func(context.Context, *sql.Tx) error { return nil })
	assert.ErrorIs(t, err, errGroupStopped)
}

type wakeArgs struct{ N int }

func (wakeArgs) Kind() string { return "wake_test" }

type wakeWorker struct {
	river.WorkerDefaults[wakeArgs]
	ran chan time.Time
}

func (w *wakeWorker) Work(context.Context, *river.Job[wakeArgs]) error {
	w.ran <- time.Now()
	return nil
}

// A job inserted in a transaction of ours and announced after the commit
// runs long before River's next poll.
func TestWakeUpRunsJobsBeforeThePoll(t *testing.T) {
	d := openTestDialect(t)
	driver := newWakeDriver(d.db)
	m, err := rivermigrate.New(driver.Driver, nil)
	require.NoError(t, err)
	_, err = m.Migrate(t.Context(), rivermigrate.DirectionUp, nil)
	require.NoError(t, err)
	w := &wakeWorker{ran: make(chan time.Time, 10)}
	workers := river.NewWorkers()
	river.AddWorker(workers, w)
	const poll = time.Minute
	c, err := river.NewClient(driver, &river.Config{
		Queues:            map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: 2}},
		Workers:           workers,
		FetchPollInterval: poll,
		FetchCooldown:     time.Millisecond,
		TestOnly:          true,
	})
	require.NoError(t, err)
	require.NoError(t, c.Start(t.Context()))
	defer func() { require.NoError(t, c.Stop(context.Background())) }()
	time.Sleep(200 * time.Millisecond) // past the first fetch at start

	for i := range 3 {
		tx, err := d.db.BeginTx(t.Context(), nil)
		require.NoError(t, err)
		_, err = c.InsertTx(t.Context(), tx, wakeArgs{N: i}, nil)
		require.NoError(t, err)
		require.NoError(t, tx.Commit())
		committed := time.Now()
		driver.hub.publish(topicInsert, fmt.Sprintf(`{"queue":%q}`, river.QueueDefault))
		select {
		case at := <-w.ran:
			t.Logf("job %d ran %s after its commit (poll every %s)", i, at.Sub(committed).Round(time.Microsecond), poll)
		case <-time.After(poll / 4):
			t.Fatalf("job %d did not run before the poll", i)
		}
	}
}

// The counts the triggers keep match River's rows through inserts,
// merges, syncs, retries, permanent failures, replays, deletions and a
// restart.
func TestJobCountsFollowRiver(t *testing.T) {
	up := newGatedUpstream(t, false)
	var n atomic.Int64
	up.Respond(func(w http.ResponseWriter, r *http.Request, c *testkit.Call) {
		switch n.Add(1) % 3 {
		case 0:
			testkit.WriteJSON(w, 200, testkit.Envelope(c, "applied"))
		case 1:
			testkit.WriteJSON(w, 503, `{"error":"busy"}`) // retried
		default:
			testkit.WriteJSON(w, 404, `{"error":"gone"}`) // cancelled
		}
	})
	qh := testQueue(t, SQLite, up.StandIn)
	ctx := t.Context()
	for i := range 60 {
		_, _, err := qh.enqueue(ctx, testWebhook(fmt.Sprintf("b%d", i%40)), 0)
		require.NoError(t, err)
	}
	b := qh.backend().(*riverBackend[*wakeDriver, *sql.Tx])
	db := b.db.(*sqliteDialect).db
	counted := func() map[string]int64 {
		rows, err := db.QueryContext(ctx, `SELECT state, count(*) FROM river_job WHERE queue = ? GROUP BY state`, riverQueueName)
		require.NoError(t, err)
		defer rows.Close()
		out := map[string]int64{}
		for _, st := range States {
			out[st] = 0
		}
		for rows.Next() {
			var st string
			var c int64
			require.NoError(t, rows.Scan(&st, &c))
			out[st] = c
		}
		return out
	}
	same := func() bool {
		s, err := qh.q.Stats(ctx)
		require.NoError(t, err)
		return assert.ObjectsAreEqual(counted(), s.Counts)
	}
	require.Eventually(t, func() bool { return len(up.Calls()) >= 40 }, 20*time.Second, 20*time.Millisecond)
	// Two reads of a changing queue agree once it holds still a moment.
	require.Eventually(t, same, 10*time.Second, 50*time.Millisecond, "while jobs run and retry")
	jobs, err := b.ListJobs(ctx, ListParams{States: []string{StateCancelled}, Limit: 5})
	require.NoError(t, err)
	require.NotEmpty(t, jobs)
	_, err = b.ReplayJob(ctx, jobs[0].ID)
	require.NoError(t, err)
	if len(jobs) > 1 {
		_, err = b.DeleteJob(ctx, jobs[1].ID)
		require.NoError(t, err)
	}
	require.Eventually(t, same, 10*time.Second, 50*time.Millisecond, "after a replay and a deletion")
	s, err := qh.q.Stats(ctx)
	require.NoError(t, err)
	t.Logf("counts: %v", s.Counts)
}

// A job inside its coalescing window is available from the window's end:
// River does not fetch it before then (only to snooze it).
func TestWindowedJobsWaitUnfetched(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		up := newGatedUpstream(t, false)
		qh := testQueue(t, driver, up.StandIn)
		const window = 1500 * time.Millisecond
		before := time.Now()
		id, _, err := qh.enqueue(t.Context(), testWebhook("w1"), window)
		require.NoError(t, err)
		job, err := qh.backend().(JobStore).GetJob(t.Context(), id)
		require.NoError(t, err)
		assert.Equal(t, StateAvailable, job.State)
		assert.WithinDuration(t, before.Add(window), job.ScheduledAt, 100*time.Millisecond)
		time.Sleep(window / 2)
		job, err = qh.backend().(JobStore).GetJob(t.Context(), id)
		require.NoError(t, err)
		assert.Zero(t, job.Attempt, "not fetched inside the window")
		require.Eventually(t, func() bool { return len(up.callsFor(`"w1"`)) == 1 }, 10*time.Second, 20*time.Millisecond)
		assert.False(t, up.Calls()[0].Start.Before(before.Add(window)), "synced after the window")
	})
}

// A caller whose context ends while its op runs does not take the other
// ops of its transaction down with it (SQLite rolls back a whole
// transaction when a statement is interrupted).
func TestGroupCommitOutlivesACancelledCaller(t *testing.T) {
	d := openTestDialect(t)
	g := newGroupCommit(d, d.beginSync)
	defer g.close()
	release := make(chan struct{})
	first := make(chan error, 1)
	go func() {
		first <- g.do(t.Context(), false, func(context.Context, *sql.Tx) error {
			<-release // hold the loop so that the ops below share the next transaction
			return nil
		})
	}()
	const n = 8
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		ctx, cancel := context.WithCancel(t.Context())
		wg.Go(func() {
			defer cancel()
			errs[i] = g.do(ctx, false, func(ctx context.Context, tx *sql.Tx) error {
				if i == 3 {
					cancel() // the caller goes away while its op runs
				}
				_, err := tx.ExecContext(ctx, `INSERT INTO t (id) VALUES (?)`, i)
				return err
			})
		})
	}
	time.Sleep(200 * time.Millisecond)
	close(release)
	wg.Wait()
	require.NoError(t, <-first)
	var count int
	require.NoError(t, d.db.QueryRow(`SELECT count(*) FROM t`).Scan(&count))
	for i, err := range errs {
		assert.NoError(t, err, "op %d", i)
	}
	assert.Equal(t, n, count, "every op committed")
}

// The oldest pending job is found through the index of pending jobs, and
// jobs done do not count.
func TestOldestPendingJob(t *testing.T) {
	up := newGatedUpstream(t, false)
	qh := testQueue(t, SQLite, up.StandIn)
	ctx := t.Context()
	_, _, err := qh.enqueue(ctx, testWebhook("done"), 0)
	require.NoError(t, err)
	require.Eventually(t, func() bool { return len(up.callsFor(`"done"`)) == 1 }, 10*time.Second, 20*time.Millisecond)
	s, err := qh.q.Stats(ctx)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		s, err = qh.q.Stats(ctx)
		require.NoError(t, err)
		return s.Counts["completed"] == 1
	}, 10*time.Second, 20*time.Millisecond)
	assert.Zero(t, s.OldestPendingSeconds, "nothing pending")
	_, _, err = qh.enqueue(ctx, testWebhook("waiting"), time.Minute)
	require.NoError(t, err)
	time.Sleep(300 * time.Millisecond)
	s, err = qh.q.Stats(ctx)
	require.NoError(t, err)
	assert.InDelta(t, 0.3, s.OldestPendingSeconds, 0.25)
}

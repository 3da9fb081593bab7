package queue

// Booking timelines: their events go with the jobs that keep them, a
// merged replay hands its job's events over, and the retention periods
// reach River. The SQLite file gives back what pruning frees.

import (
	"context"
	"database/sql"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"
	_ "modernc.org/sqlite"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// eventsOf reads a booking's events (organization "org", as testWebhook).
func eventsOf(t *testing.T, b backend, booking string) []Event {
	t.Helper()
	evs, err := b.BookingEvents(t.Context(), "org", booking, MaxTimelineEvents)
	require.NoError(t, err)
	return evs
}

func kindsOf(evs []Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = ev.Kind
	}
	return out
}

// waitJobState waits until job id is in state.
func waitJobState(t *testing.T, b backend, id int64, state string) {
	t.Helper()
	require.Eventually(t, func() bool {
		j, err := b.GetJob(t.Context(), id)
		return err == nil && j.State == state
	}, 15*time.Second, 20*time.Millisecond, "job %d becomes %s", id, state)
}

// TestTimelineEventsGoWithTheirJob: deleting a job deletes its events;
// pruning drops those of a job River removed and keeps those of jobs that
// are kept; a replay that merges a failed job into the booking's waiting
// one hands the failed job's events over to it, so they stay.
func TestTimelineEventsGoWithTheirJob(t *testing.T) {
	forEachDriver(t, func(t *testing.T, driver string) {
		up := testkit.NewStandIn(t)
		up.Answer(func(c *testkit.Call) (int, string) {
			if c.Booking == "gone-for-good" {
				return http.StatusOK, testkit.Envelope(c, "not_found")
			}
			return http.StatusOK, testkit.Envelope(c, "applied")
		})
		qh := testQueue(t, driver, up)
		b := qh.backend()
		ctx := t.Context()

		deleted, _, err := qh.enqueue(ctx, testWebhook("deleted"), 0)
		require.NoError(t, err)
		kept, _, err := qh.enqueue(ctx, testWebhook("kept"), 0)
		require.NoError(t, err)
		waitJobState(t, b, deleted, StateCompleted)
		waitJobState(t, b, kept, StateCompleted)
		require.Equal(t, []string{EventAttempt, EventWebhook}, kindsOf(eventsOf(t, b, "deleted")))

		// A failed job, then a newer webhook of its booking waiting in its
		// coalescing window: the replay merges into the waiting job.
		failed, _, err := qh.enqueue(ctx, testWebhook("gone-for-good"), 0)
		require.NoError(t, err)
		waitJobState(t, b, failed, StateCancelled)
		waiting, _, err := qh.enqueue(ctx, testWebhook("gone-for-good"), time.Hour)
		require.NoError(t, err)
		require.NotEqual(t, failed, waiting)
		res, err := b.ReplayJob(ctx, failed)
		require.NoError(t, err)
		require.Equal(t, &ReplayResult{JobID: waiting, Coalesced: true}, res)

		_, err = b.DeleteJob(ctx, deleted)
		require.NoError(t, err)
		assert.Empty(t, eventsOf(t, b, "deleted"), "the deleted job's events went with it")

		// River's cleaner deletes jobs without a word: the prune finds them.
		exec := b.(interface {
			execPool(ctx context.Context, query string, args ...any) error
		})
		require.NoError(t, exec.execPool(ctx, `DELETE FROM river_job WHERE id = $1`, kept))
		require.NoError(t, b.pruneEvents(ctx, time.Now().Add(time.Hour)))
		assert.Empty(t, eventsOf(t, b, "kept"), "the events of a job River removed")
		evs := eventsOf(t, b, "gone-for-good")
		require.Equal(t, []string{EventReplay, EventWebhook, EventAttempt, EventWebhook}, kindsOf(evs),
			"the replayed job's events stay, kept by the job it merged into")
		assert.Equal(t, waiting, evs[0].JobID)
		assert.Equal(t, failed, evs[0].ReplayedJob)
		assert.True(t, *evs[0].Coalesced)
		assert.Equal(t, waiting, evs[1].JobID)
		assert.Equal(t, failed, evs[2].JobID, "an event still names the job it was about")
		assert.Equal(t, ResultFinal, evs[2].Result)
		assert.Equal(t, failed, evs[3].JobID)
	})
}

// TestTimelinePruneWalksInSteps: a prune reads a bounded number of
// windows; the next one goes on where it stopped, and starts over at the
// horizon or the end. (On the tables alone: no engine prunes beside it.)
func TestTimelinePruneWalksInSteps(t *testing.T) {
	db, err := sql.Open("sqlite", sqliteDSN(filepath.Join(t.TempDir(), "walk.sqlite3")))
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close() })
	db.SetMaxOpenConns(1)
	ctx := t.Context()
	require.NoError(t, migrate(ctx, SQLite, &sqliteSQL, &sqliteDialect{db: db}, time.Now().UnixNano()))
	_, err = db.ExecContext(ctx, `CREATE TABLE river_job (id INTEGER PRIMARY KEY)`)
	require.NoError(t, err)
	_, err = db.ExecContext(ctx, `INSERT INTO river_job (id) VALUES (7)`)
	require.NoError(t, err)
	b := &riverBackend[*wakeDriver, *sql.Tx]{db: &sqliteDialect{db: db}, q: &Engine{rq: &Config{Driver: SQLite}}}
	now := time.Now()
	// 30 old events of a job that is gone, 5 of one that is kept, then 5
	// young ones of a job that is gone.
	add := func(n int, at time.Time, job int64) {
		for range n {
			_, err := db.ExecContext(ctx, `INSERT INTO receive_booking_event (at, target_id, org, booking, kind, job_id, data)
				VALUES (?, 'default', 'org', 'b', 'webhook', ?, '{}')`, at.UnixNano(), job)
			require.NoError(t, err)
		}
	}
	add(30, now.Add(-time.Hour), 999)
	add(5, now.Add(-time.Hour), 7)
	add(5, now, 999)
	count := func(job int64) (c int) {
		require.NoError(t, db.QueryRowContext(ctx, `SELECT count(*) FROM receive_booking_event WHERE job_id = ?`, job).Scan(&c))
		return c
	}
	horizon := now.Add(-time.Minute)
	require.NoError(t, b.pruneWalk(ctx, horizon, 10, 2))
	assert.Equal(t, 10+5, count(999), "one prune: two windows of ten")
	assert.EqualValues(t, 20, b.pruneFrom)
	require.NoError(t, b.pruneWalk(ctx, horizon, 10, 2))
	assert.Equal(t, 5, count(999), "the walk went on to the horizon; the young ones stay")
	assert.Equal(t, 5, count(7), "a kept job's events stay")
	assert.Zero(t, b.pruneFrom, "at the horizon the walk starts over")
	require.NoError(t, b.pruneWalk(ctx, now.Add(time.Minute), 10, 5))
	assert.Zero(t, count(999))
	assert.Equal(t, 5, count(7))
	assert.Zero(t, b.pruneFrom, "at the end the walk starts over")
}

// TestRetentionReachesRiver: the retention settings are River's, their
// defaults those of the docs, and handlers that share a queue must agree
// on them.
func TestRetentionReachesRiver(t *testing.T) {
	cfg := newRiverConfig(Settings{Workers: 1, RetentionCompleted: 5 * time.Second, RetentionDiscarded: time.Hour},
		1, time.Millisecond, river.NewWorkers(), &Engine{logger: zaptest.NewLogger(t)})
	assert.Equal(t, 5*time.Second, cfg.CompletedJobRetentionPeriod)
	assert.Equal(t, 7*24*time.Hour, cfg.CancelledJobRetentionPeriod, "the default")
	assert.Equal(t, time.Hour, cfg.DiscardedJobRetentionPeriod)

	a := &Config{Settings: Settings{RetentionCompleted: time.Hour}}
	assert.Equal(t, "retention completed (1h0m0s, 24h0m0s)", a.SettingsDiff(&Config{}))
	assert.Empty(t, (&Config{Settings: Settings{RetentionCompleted: 24 * time.Hour}}).SettingsDiff(&Config{}), "0 is the default")
}

// TestSQLiteGivesBackFreeSpace: a new file is in incremental auto-vacuum
// mode from the start, an older one is converted once, and reclaim gives
// back what deleted rows leave beyond the reserve, a bounded number of
// pages at a time. (On the file alone: no engine reclaims beside it.)
func TestSQLiteGivesBackFreeSpace(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	open := func(path string) *sqliteDialect {
		db, err := sql.Open("sqlite", sqliteDSN(path))
		require.NoError(t, err)
		db.SetMaxOpenConns(1)
		t.Cleanup(func() { _ = db.Close() })
		return &sqliteDialect{db: db}
	}
	pragma := func(d *sqliteDialect, name string) (n int64) {
		require.NoError(t, d.db.QueryRowContext(ctx, "PRAGMA "+name).Scan(&n))
		return n
	}
	fresh := open(filepath.Join(dir, "new.sqlite3"))
	assert.EqualValues(t, autoVacuumIncremental, pragma(fresh, "auto_vacuum"), "a new file")

	path := filepath.Join(dir, "old.sqlite3")
	old, err := sql.Open("sqlite", "file:"+path+"?_pragma=journal_mode(WAL)")
	require.NoError(t, err)
	_, err = old.Exec(`CREATE TABLE filler (v TEXT)`)
	require.NoError(t, err)
	require.NoError(t, old.Close())
	d := open(path)
	assert.Zero(t, pragma(d, "auto_vacuum"), "a file made before")
	e := &Engine{logger: zaptest.NewLogger(t), rq: &Config{Driver: SQLite, Location: path}}
	require.NoError(t, d.incrementalVacuum(ctx, e))
	assert.EqualValues(t, autoVacuumIncremental, pragma(d, "auto_vacuum"), "converted")
	require.NoError(t, d.incrementalVacuum(ctx, e), "once: a converted file is left alone")

	// About 3000 pages of rows, then deleted.
	_, err = d.db.ExecContext(ctx, `WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 3000)
		INSERT INTO filler SELECT hex(randomblob(1800)) FROM c`)
	require.NoError(t, err)
	_, err = d.db.ExecContext(ctx, `DELETE FROM filler`)
	require.NoError(t, err)
	pages, free := pragma(d, "page_count"), pragma(d, "freelist_count")
	require.Greater(t, free, int64(2500))
	require.NoError(t, d.reclaimAtMost(ctx, 1000))
	assert.InDelta(t, pages-1000, pragma(d, "page_count"), 2, "at most the bound at a time (and its pointer-map page)")
	for range 5 {
		require.NoError(t, d.reclaim(ctx))
	}
	after := pragma(d, "page_count")
	left := pragma(d, "freelist_count")
	assert.Less(t, left, int64(reclaimMinFree), "free pages below the least worth a reclaim are kept")
	_, err = d.db.ExecContext(ctx, `PRAGMA wal_checkpoint(TRUNCATE)`)
	require.NoError(t, err)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Less(t, fi.Size(), int64(6<<20), "the file shrank")
	t.Logf("%d pages (%d free) after deleting the rows; %d pages (%d free) and a %d-byte file after reclaiming",
		pages, free, after, left, fi.Size())
}

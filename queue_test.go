package receivebooking

// The queue's database through the binary: one that a newer
// receive_booking migrated further is refused with the versions named, and
// left as it is; with this build's schema back, nothing it held is lost.

import (
	"database/sql"
	"fmt"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
)

// TestNewerSchemaRefused: a pending sync is left in the queue; a newer
// build's migration is simulated by recording a schema version past this
// build's; this build then refuses the database (health 503 naming both
// versions, webhooks 503, nothing written); once the version row is gone
// again, the pending sync is synced.
func TestNewerSchemaRefused(t *testing.T) {
	onBothDatabases(t, func(t *testing.T, db string) {
		stand := testkit.NewStandIn(t)
		stand.Respond(bootFailure)
		dataDir := t.TempDir()
		var line string
		var exec func(q string) int64
		if db == "postgres" {
			dsn := testkit.FreshPostgresDSN(t)
			line = "queue postgres " + dsn
			exec = func(q string) int64 {
				conn, err := pgx.Connect(t.Context(), dsn)
				require.NoError(t, err)
				defer conn.Close(t.Context())
				var n int64
				require.NoError(t, conn.QueryRow(t.Context(), q).Scan(&n))
				return n
			}
		} else {
			file := filepath.Join(dataDir, "q.sqlite3")
			line = "queue sqlite " + file
			exec = func(q string) int64 {
				conn, err := sql.Open("sqlite", file)
				require.NoError(t, err)
				defer conn.Close()
				var n int64
				require.NoError(t, conn.QueryRow(q).Scan(&n))
				return n
			}
		}
		directive := fmt.Sprintf("receive_booking {\n\t\tsecret %s\n\t\ttarget %s\n\t\tmode async\n\t\t%s\n\t}", e2eSecret, stand.Target(), line)
		p := startCaddy(t, dataDir, directive)
		status, _ := sendEvent(t, p.url, "org-1", "kept", "booking.updated")
		require.Equal(t, 202, status)
		// Killed once the failed attempt is recorded (a call cut off by
		// the kill would hold its booking for worker_timeout).
		require.Eventually(t, func() bool {
			_, out := p.adminJSON(t, http.MethodGet, "/receive_booking/jobs?state=retryable&booking_id=kept")
			return strings.Contains(fmt.Sprint(out), "kept")
		}, 15*time.Second, 50*time.Millisecond, "the first attempt failed and is recorded")
		p.kill()

		ours := exec(`SELECT max(version) FROM receive_booking_schema_version`)
		newer := ours + 2
		exec(fmt.Sprintf(`INSERT INTO receive_booking_schema_version (version, applied_at) VALUES (%d, 1) RETURNING version`, newer))
		jobs := exec(`SELECT count(*) FROM river_job`)

		p = startCaddy(t, dataDir, directive)
		want := fmt.Sprintf("the queue database's schema is version %d, newer than this build's %d (%s): a newer receive_booking wrote it; "+
			"run that version (or newer) on this database, or give this one another database", newer, ours, db)
		var health map[string]any
		require.Eventually(t, func() bool {
			var code int
			code, health = p.adminJSON(t, http.MethodGet, "/receive_booking/health")
			return code == http.StatusServiceUnavailable && regexp.MustCompile(regexp.QuoteMeta(want)).MatchString(fmt.Sprint(health))
		}, 15*time.Second, 100*time.Millisecond, "health names both versions: %v", health)
		status, body := sendEvent(t, p.url, "org-1", "refused", "booking.updated")
		assert.Equal(t, http.StatusServiceUnavailable, status, "%v", body)
		assert.Equal(t, "Queue unavailable", body["error"])
		assert.Contains(t, p.log.String(), strconv.Quote(want)[1:len(strconv.Quote(want))-1], "the log says it once, in the same words")
		p.kill()
		assert.Equal(t, jobs, exec(`SELECT count(*) FROM river_job`), "nothing was written")
		assert.Equal(t, newer, exec(`SELECT max(version) FROM receive_booking_schema_version`), "the newer schema is left as it is")
		t.Logf("NEWER_SCHEMA %s: schema version %d refused by this build (%d): health 503 %q; webhook 503", db, newer, ours, want)

		// This build's schema back: the pending sync was kept.
		stand.Respond(nil)
		exec(fmt.Sprintf(`DELETE FROM receive_booking_schema_version WHERE version = %d RETURNING version`, newer))
		p = startCaddy(t, dataDir, directive)
		require.Eventually(t, func() bool { return stand.SyncedAfter("kept", time.Time{}) }, 30*time.Second, 100*time.Millisecond)
	})
}

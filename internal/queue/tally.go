package queue

// Job counts by state on SQLite, kept by triggers: counting a million
// queued jobs took about half a second on the only connection (every
// webhook waited behind it) each time the gauges were sampled or an
// operator asked for stats. PostgreSQL counts without blocking writers
// and keeps the plain count.

import (
	"context"
	"database/sql"
	"fmt"
)

// tallyDDL creates the count table, the triggers that keep it and the
// index of pending jobs.
var tallyDDL = []string{
	`CREATE INDEX IF NOT EXISTS receive_booking_job_pending ON river_job (id) WHERE state IN (` + pendingStatesSQL + `)`,
	`CREATE TABLE IF NOT EXISTS receive_booking_job_count (
		queue TEXT    NOT NULL,
		state TEXT    NOT NULL,
		n     INTEGER NOT NULL,
		PRIMARY KEY (queue, state)
	) WITHOUT ROWID`,
	`DROP TRIGGER IF EXISTS receive_booking_job_count_insert`,
	`DROP TRIGGER IF EXISTS receive_booking_job_count_delete`,
	`DROP TRIGGER IF EXISTS receive_booking_job_count_update`,
	`CREATE TRIGGER receive_booking_job_count_insert AFTER INSERT ON river_job BEGIN
		INSERT OR IGNORE INTO receive_booking_job_count (queue, state, n) VALUES (NEW.queue, NEW.state, 0);
		UPDATE receive_booking_job_count SET n = n + 1 WHERE queue = NEW.queue AND state = NEW.state;
	END`,
	`CREATE TRIGGER receive_booking_job_count_delete AFTER DELETE ON river_job BEGIN
		UPDATE receive_booking_job_count SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
	END`,
	`CREATE TRIGGER receive_booking_job_count_update AFTER UPDATE OF state, queue ON river_job
		WHEN OLD.state IS NOT NEW.state OR OLD.queue IS NOT NEW.queue BEGIN
		UPDATE receive_booking_job_count SET n = n - 1 WHERE queue = OLD.queue AND state = OLD.state;
		INSERT OR IGNORE INTO receive_booking_job_count (queue, state, n) VALUES (NEW.queue, NEW.state, 0);
		UPDATE receive_booking_job_count SET n = n + 1 WHERE queue = NEW.queue AND state = NEW.state;
	END`,
	// Recounted at every start, in the same transaction: no drift
	// outlives a restart (River's own migrations, say, rebuilding its
	// table without our triggers).
	`DELETE FROM receive_booking_job_count`,
	`INSERT INTO receive_booking_job_count (queue, state, n) SELECT queue, state, count(*) FROM river_job GROUP BY queue, state`,
}

// setupTally installs the counts; the file lock is held, so nothing
// writes meanwhile.
func setupTally(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	for _, ddl := range tallyDDL {
		if _, err := tx.ExecContext(ctx, ddl); err != nil {
			return fmt.Errorf("setting up job counts: %w", err)
		}
	}
	return tx.Commit()
}

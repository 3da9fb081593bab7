-- A booking's urgency (priority.go: the fair priorities count an
-- organization's waiting syncs by it), the earliest its waiting retry may
-- run whatever arrives (retry_floor, unix nanoseconds: an abandoned call's
-- possible run, a Retry-After), and since when import-bookings' pause has
-- held its sync (held_since, worker.go).
ALTER TABLE receive_booking_booking ADD COLUMN urgency INTEGER NOT NULL DEFAULT 0;
ALTER TABLE receive_booking_booking ADD COLUMN retry_floor BIGINT;
ALTER TABLE receive_booking_booking ADD COLUMN held_since BIGINT;
DROP INDEX IF EXISTS receive_booking_booking_waiting;
CREATE INDEX IF NOT EXISTS receive_booking_booking_waiting_urgency
	ON receive_booking_booking (org, urgency) WHERE waiting_job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS receive_booking_booking_held
	ON receive_booking_booking (held_since) WHERE held_since IS NOT NULL;
-- Operators' pauses (pause.go): route '' is every route, org '' every
-- organization.
CREATE TABLE IF NOT EXISTS receive_booking_pause (
	route     TEXT   NOT NULL,
	org       TEXT   NOT NULL,
	paused_at BIGINT NOT NULL,
	reason    TEXT   NOT NULL DEFAULT '',
	PRIMARY KEY (route, org)
);

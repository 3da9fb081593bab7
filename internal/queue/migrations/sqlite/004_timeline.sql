-- Booking timelines (timeline.go): job_id is the job that keeps the event.
CREATE TABLE IF NOT EXISTS receive_booking_event (
	id        INTEGER PRIMARY KEY,
	at        BIGINT NOT NULL,
	target_id TEXT   NOT NULL,
	org       TEXT   NOT NULL,
	booking   TEXT   NOT NULL,
	kind      TEXT   NOT NULL,
	job_id    BIGINT NOT NULL,
	data      TEXT   NOT NULL
);

CREATE INDEX IF NOT EXISTS receive_booking_event_booking ON receive_booking_event (booking, org, id);

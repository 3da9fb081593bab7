-- The booking rows that keep one sync per booking (gate.go), the
-- webhook-ids of signed webhooks, the health probe's row and the
-- max_in_flight slots.
CREATE TABLE IF NOT EXISTS receive_booking_booking (
	target_id      TEXT   NOT NULL,
	org            TEXT   NOT NULL,
	booking        TEXT   NOT NULL,
	event_type     TEXT   NOT NULL DEFAULT '',
	waiting_job_id BIGINT,
	running_job_id BIGINT,
	PRIMARY KEY (target_id, org, booking)
);

CREATE TABLE IF NOT EXISTS receive_booking_webhook_id (
	id_hash    TEXT   NOT NULL PRIMARY KEY,
	expires_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS receive_booking_health (
	id         INTEGER NOT NULL PRIMARY KEY,
	checked_at BIGINT  NOT NULL
);

CREATE TABLE IF NOT EXISTS receive_booking_slot (
	slot    INTEGER NOT NULL PRIMARY KEY,
	job_id  BIGINT,
	attempt BIGINT,
	until   BIGINT
);

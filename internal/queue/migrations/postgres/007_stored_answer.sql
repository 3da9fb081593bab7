-- Answers too long for a notification (notify.go): the instance whose
-- sender waits reads the body from here. Kept only minutes.
CREATE TABLE IF NOT EXISTS receive_booking_answer (
	job_id BIGINT NOT NULL,
	claim  BIGINT NOT NULL,
	body   TEXT   NOT NULL,
	at     BIGINT NOT NULL,
	PRIMARY KEY (job_id, claim)
);

-- Counts an organization's waiting syncs (fair priorities, intake.go).
CREATE INDEX IF NOT EXISTS receive_booking_booking_waiting
	ON receive_booking_booking (org) WHERE waiting_job_id IS NOT NULL;

-- The running attempt, and until when its call may still be running
-- (unix nanoseconds): a claim is the booking's while its call may run.
ALTER TABLE receive_booking_booking ADD COLUMN IF NOT EXISTS running_attempt BIGINT;
ALTER TABLE receive_booking_booking ADD COLUMN IF NOT EXISTS running_until BIGINT;

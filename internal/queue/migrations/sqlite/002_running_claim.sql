-- The running attempt, and until when its call may still be running
-- (unix nanoseconds): a claim is the booking's while its call may run.
ALTER TABLE receive_booking_booking ADD COLUMN running_attempt BIGINT;
ALTER TABLE receive_booking_booking ADD COLUMN running_until BIGINT;

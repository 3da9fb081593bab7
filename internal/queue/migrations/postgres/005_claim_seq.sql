-- Numbers the claims of every instance (waiters.go, notify.go).
CREATE SEQUENCE IF NOT EXISTS receive_booking_claim_seq;

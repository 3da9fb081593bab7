package queue

// The webhook-ids of signed webhooks seen within the signature tolerance,
// shared by every instance on the database: a replayed delivery is
// refused on any of them.

import (
	"context"
	"time"
)

// recordWebhookID inserts an id, or takes over an expired row; it returns
// a row only when the id was not live already.
const recordWebhookID = `INSERT INTO receive_booking_webhook_id (id_hash, expires_at) VALUES ($1, $2)
ON CONFLICT (id_hash) DO UPDATE SET expires_at = excluded.expires_at
	WHERE receive_booking_webhook_id.expires_at <= $3
RETURNING 1`

func (b *riverBackend[TDriver, TTx]) ReplaySeen(ctx context.Context, key string, now, expires time.Time) (bool, error) {
	rows, err := b.db.queryRows(ctx, recordWebhookID, key, expires.UnixNano(), now.UnixNano())
	if err != nil {
		return false, err
	}
	defer rows.Close()
	inserted := rows.Next()
	return !inserted, rows.Err()
}

func (b *riverBackend[TDriver, TTx]) ReplayForget(ctx context.Context, key string) error {
	return b.execPool(ctx, `DELETE FROM receive_booking_webhook_id WHERE id_hash = $1`, key)
}

func (b *riverBackend[TDriver, TTx]) prune(ctx context.Context, now time.Time) error {
	return b.execPool(ctx, `DELETE FROM receive_booking_webhook_id WHERE expires_at <= $1`, now.UnixNano())
}

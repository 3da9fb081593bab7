package queue

// Recording webhooks, the engine's side: Record hands a webhook to the
// batchers, which commit every webhook waiting at that moment in one
// transaction (intake.go) and answer each.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/payload"
	"github.com/bookingwebhook/caddy-receive-booking/internal/tracing"
)

// Entry is one webhook to record.
type Entry struct {
	Webhook *payload.Webhook
	// Route names the handler route whose target syncs it.
	Route string
	// NotBefore is the end of its coalescing window; AcceptedAt when it
	// was accepted.
	NotBefore, AcceptedAt time.Time
	// Wait, when set, receives the outcome of the first attempt of the
	// job the webhook is recorded in that starts after the record (see
	// StopWaiting).
	Wait chan *Outcome
	// Urgency is the webhook's urgency (priority.go), from its event type.
	Urgency int
	// Trace is the webhook's trace context; a new job continues it.
	Trace tracing.Context
	// Credential names the credential that authenticated the webhook, for
	// the booking's timeline ("organization org-a key #1"): a name, never
	// the secret.
	Credential string
	// AnswerOnRecord is the HTTP status its sender is given once it is
	// recorded, when the sender does not wait for the sync (async); 0 when
	// the answer comes later (see Answered).
	AnswerOnRecord int

	// JobID is the job that carries the webhook, once recorded;
	// Coalesced says it merged into a job that was already waiting.
	JobID     int64
	Coalesced bool

	done chan error
	ctx  context.Context // the recorder's: once it has gone, so has the waiter
	// mark is the highest claim number when it was recorded (PostgreSQL,
	// see waiters).
	mark int64
}

// Record records a webhook durably. It returns only once the record is
// committed (or has failed); concurrent webhooks share one commit.
func (e *Engine) Record(ctx context.Context, req *Entry) error {
	if _, err := e.current(); err != nil {
		// While the first connection attempt runs (Caddy has just
		// started), wait for it; after it, the answer is known.
		select {
		case <-e.ready:
		case <-ctx.Done():
			return err
		}
		if _, err := e.current(); err != nil {
			return err
		}
	}
	req.done, req.ctx = make(chan error, 1), ctx
	select {
	case e.reqs <- req:
	case <-e.stop:
		return errors.New("queue stopped")
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-req.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// batchLoop commits waiting webhooks in batches: one transaction (and one
// fsync) for every webhook that arrived while the previous one committed.
func (e *Engine) batchLoop() {
	for {
		var first *Entry
		select {
		case first = <-e.reqs:
		case <-e.stop:
			e.failPending()
			return
		}
		batch := gather(first, e.reqs, maxBatch)
		err := e.commitBatch(batch)
		for _, r := range batch {
			r.done <- err
		}
	}
}

func (e *Engine) commitBatch(batch []*Entry) error {
	b, err := e.current()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.insertBatch(ctx, batch); err != nil {
		e.setAvailable(false, e.scrubErr(err).Error())
		for _, r := range batch {
			if r.Wait != nil {
				e.waiters.remove(r.JobID, r.Wait)
			}
		}
		return fmt.Errorf("recording webhooks: %w", e.scrubErr(err))
	}
	e.setAvailable(true, "")
	for _, r := range batch {
		if r.Wait != nil && r.ctx.Err() != nil {
			e.waiters.remove(r.JobID, r.Wait) // it gave up before the commit
		}
	}
	return nil
}

func (e *Engine) failPending() {
	for {
		select {
		case r := <-e.reqs:
			r.done <- errors.New("queue stopped")
		default:
			return
		}
	}
}

package queue

// Outcomes across instances (PostgreSQL): a sender waits on the instance
// that recorded its webhook, but any instance sharing the database may run
// its sync. Each attempt publishes its outcome with its claim number on a
// NOTIFY channel, in the transaction that records it; every instance
// listens on one connection of its own and answers its waiting senders
// whose record came before that claim (see waiters for the rule).
//
// A notification leaves the process: every string in it passes the
// engine's scrubber first. An answer too long for a notification (NOTIFY
// refuses 8000 bytes) is stored beside it, in receive_booking_answer, in
// the same transaction, and the listener reads it from there: a waiting
// sender gets import-bookings' whole answer whichever instance ran the
// sync. Notifications sent while an instance's listener
// reconnects are lost to it; its senders then get the 202 of a timeout, as
// before, and the sync goes on in the queue.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
)

const (
	// outcomeChannel is the NOTIFY channel of attempts' outcomes.
	outcomeChannel = "receive_booking_outcome"
	// slotChannel tells every instance that a max_in_flight slot is free.
	slotChannel = "receive_booking_slot"
	// maxNoteBytes bounds a notification: PostgreSQL refuses payloads of
	// 8000 bytes or more, counted in the server's encoding.
	maxNoteBytes = 7000
	// noteTextCap bounds each text of a notification that is still too
	// long without the answer's body.
	noteTextCap = 160
	// listenPing is how long the listener waits quietly before it checks
	// that its connection is alive (a dropped network sends no error).
	// storedAnswerTimeout bounds reading an answer stored apart.
	storedAnswerTimeout = 2 * time.Second
	// storedAnswerKeep is how long an answer stored apart is kept: longer
	// than any sender waits for it.
	storedAnswerKeep = 10 * time.Minute
	listenPing       = 30 * time.Second
	pingTimeout      = 5 * time.Second
)

// outcomeNote is an attempt's outcome as published: what a waiting sender
// is told (Outcome and its upstream.Result).
type outcomeNote struct {
	JobID int64  `json:"job_id"`
	Claim int64  `json:"claim"`
	Final bool   `json:"final,omitempty"`
	Err   string `json:"err,omitempty"`

	Status     int              `json:"status,omitempty"`
	Body       json.RawMessage  `json:"body,omitempty"`
	Text       string           `json:"text,omitempty"`
	CallErr    string           `json:"call_err,omitempty"`
	TimedOut   bool             `json:"timed_out,omitempty"`
	RetryAfter time.Duration    `json:"retry_after,omitempty"`
	Duration   time.Duration    `json:"duration,omitempty"`
	Verdict    upstream.Verdict `json:"verdict"`
	// BodyStored: the answer's body is in receive_booking_answer.
	BodyStored      bool   `json:"body_stored,omitempty"`
	Outcome         string `json:"outcome,omitempty"`
	Reason          string `json:"reason,omitempty"`
	OutcomeMisleads bool   `json:"outcome_misleads,omitempty"`
}

// publication is an attempt's outcome as published: the notification,
// and the answer's body when it is stored apart (too long to be carried).
type publication struct {
	payload []byte
	// jobID and claim key the stored body.
	jobID, claim int64
	body         json.RawMessage
}

// noteOf encodes an attempt's outcome for other instances, scrubbed and
// within NOTIFY's limit: the answer's body stored apart if it is too long,
// and then the texts cut if still needed. It is nil on SQLite (no claim
// number: one instance).
func (e *Engine) noteOf(jobID, claim int64, out *Outcome) *publication {
	if claim == 0 {
		return nil
	}
	pub := &publication{jobID: jobID, claim: claim}
	s, res := e.scrub.String, out.Result
	n := outcomeNote{JobID: jobID, Claim: claim, Final: out.Final, Err: s(out.Err),
		Status: res.Status, Text: s(res.Text), TimedOut: res.TimedOut,
		RetryAfter: res.RetryAfter, Duration: res.Duration, Verdict: res.Verdict, Outcome: s(res.Outcome), Reason: s(res.Reason),
		OutcomeMisleads: res.OutcomeMisleads}
	n.Body = scrubbedJSON(s, res.Body)
	if res.Err != nil {
		n.CallErr = cmp.Or(s(res.Err.Error()), "error")
	}
	b, _ := json.Marshal(n)
	if len(b) > maxNoteBytes && n.Body != nil {
		pub.body, n.Body, n.BodyStored = n.Body, nil, true
		b, _ = json.Marshal(n)
	}
	if len(b) > maxNoteBytes {
		for _, p := range []*string{&n.Err, &n.Text, &n.CallErr, &n.Outcome, &n.Reason} {
			*p = upstream.TruncateText([]byte(*p), noteTextCap)
		}
		b, _ = json.Marshal(n)
	}
	pub.payload = b
	return pub
}

// scrubbedJSON is raw with every secret replaced; if that breaks the JSON
// (a secret with a quote in it), it is carried as a JSON string.
func scrubbedJSON(s func(string) string, raw json.RawMessage) json.RawMessage {
	if raw == nil {
		return nil
	}
	out := s(string(raw))
	if json.Valid([]byte(out)) {
		return json.RawMessage(out)
	}
	b, _ := json.Marshal(out)
	return b
}

// readNote decodes a published outcome; stored reports that its answer's
// body is stored apart.
func readNote(payload string) (jobID, claim int64, out *Outcome, stored bool, err error) {
	var n outcomeNote
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		return 0, 0, nil, false, err
	}
	if n.JobID == 0 || n.Claim == 0 {
		return 0, 0, nil, false, errors.New("no job or claim")
	}
	res := &upstream.Result{Status: n.Status, Body: n.Body, Text: n.Text, TimedOut: n.TimedOut,
		RetryAfter: n.RetryAfter, Duration: n.Duration, Verdict: n.Verdict, Outcome: n.Outcome, Reason: n.Reason,
		OutcomeMisleads: n.OutcomeMisleads}
	if n.CallErr != "" {
		res.Err = errors.New(n.CallErr)
	}
	return n.JobID, n.Claim, &Outcome{Result: res, Final: n.Final, Err: n.Err}, n.BodyStored, nil
}

// outcomeListener hears the outcomes every instance publishes and answers
// this instance's senders waiting for them.
type outcomeListener struct {
	pool *pgxpool.Pool
	q    *Engine
	// slotFreed is told that an instance released a max_in_flight slot.
	slotFreed func()
	cancel    context.CancelFunc
	done      chan struct{}
}

// listenOutcomes starts listening; it returns once the first LISTEN holds,
// so that no sender of this instance can wait unheard.
func listenOutcomes(ctx context.Context, pool *pgxpool.Pool, q *Engine, slotFreed func()) (*outcomeListener, error) {
	c, err := listenConn(ctx, pool)
	if err != nil {
		return nil, fmt.Errorf("listening for sync outcomes: %w", err)
	}
	lctx, cancel := context.WithCancel(context.Background())
	l := &outcomeListener{pool: pool, q: q, slotFreed: slotFreed, cancel: cancel, done: make(chan struct{})}
	go l.run(lctx, c)
	return l, nil
}

// stop ends the listener and closes its connection.
func (l *outcomeListener) stop() {
	l.cancel()
	<-l.done
}

// listenConn takes a connection out of the pool and listens on it: a
// listening connection must not go back to serve queries, where the
// notifications it collects would pile up unread.
func listenConn(ctx context.Context, pool *pgxpool.Pool) (*pgx.Conn, error) {
	pc, err := pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	c := pc.Hijack()
	for _, ch := range []string{outcomeChannel, slotChannel} {
		if _, err := c.Exec(ctx, "LISTEN "+ch); err != nil {
			closeConn(c)
			return nil, err
		}
	}
	return c, nil
}

func closeConn(c *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	_ = c.Close(ctx)
}

// run receives on c until it fails, then reconnects with backoff, until
// the listener stops.
func (l *outcomeListener) run(ctx context.Context, c *pgx.Conn) {
	defer close(l.done)
	for {
		err := l.receive(ctx, c)
		closeConn(c)
		if ctx.Err() != nil {
			return
		}
		l.q.logger.Warn("listening for sync outcomes of other instances failed; reconnecting",
			zap.Error(l.q.scrubErr(err)))
		if c = l.reconnect(ctx); c == nil {
			return
		}
		l.q.logger.Info("listening for sync outcomes of other instances again")
	}
}

// reconnect listens on a new connection, backing off while it fails; nil
// once the listener stops.
func (l *outcomeListener) reconnect(ctx context.Context) *pgx.Conn {
	wait := reconnectMin
	for {
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil
		}
		cctx, cancel := context.WithTimeout(ctx, connectTimeout)
		c, err := listenConn(cctx, l.pool)
		cancel()
		if err == nil {
			return c
		}
		if ctx.Err() != nil {
			return nil
		}
		wait = min(2*wait, reconnectMax)
		l.q.logger.Warn("listening for sync outcomes failed; retrying", zap.Error(l.q.scrubErr(err)), zap.Duration("retry_in", wait))
	}
}

// receive hands each notification on c to the waiting senders, and pings
// when c has been quiet for listenPing; it returns c's failure.
func (l *outcomeListener) receive(ctx context.Context, c *pgx.Conn) error {
	for {
		wctx, cancel := context.WithTimeout(ctx, listenPing)
		n, err := c.WaitForNotification(wctx)
		quiet := errors.Is(wctx.Err(), context.DeadlineExceeded)
		cancel()
		switch {
		case err == nil && n.Channel == slotChannel:
			l.slotFreed()
		case err == nil:
			l.hear(n.Payload)
		case ctx.Err() != nil:
			return ctx.Err()
		case quiet:
			pctx, cancel := context.WithTimeout(ctx, pingTimeout)
			err = c.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}

// hear answers the senders waiting for a published attempt's outcome
// whose record came before its claim.
func (l *outcomeListener) hear(payload string) {
	jobID, claim, out, stored, err := readNote(payload)
	if err != nil {
		l.q.logger.Warn("ignoring a malformed sync outcome notification", zap.Error(l.q.scrubErr(err)))
		return
	}
	waiting := l.q.waiters.takeClaimed(jobID, claim)
	if len(waiting) > 0 && stored {
		ctx, cancel := context.WithTimeout(context.Background(), storedAnswerTimeout)
		err := l.pool.QueryRow(ctx, `SELECT body FROM receive_booking_answer WHERE job_id = $1 AND claim = $2`, jobID, claim).Scan(&out.Result.Body)
		cancel()
		if err != nil {
			// The sender still learns the verdict, without the body.
			l.q.logger.Warn("reading a stored sync answer failed", zap.Int64("job_id", jobID), zap.Error(l.q.scrubErr(err)))
		}
	}
	deliver(waiting, out)
}

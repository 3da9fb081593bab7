package queue

// Group commit on SQLite: the writes of concurrent callers (a batch of
// webhooks, the workers' claims and finishes) share one transaction, so
// one commit (one fsync under synchronous=FULL, on the only connection)
// serves them all. Each write runs in a savepoint of its own: one that
// fails is undone alone, and the others commit.
//
// A write may be relaxed: its commit need not be on disk before it
// returns (a sync's finish, which a power cut would only make run again).
// A transaction of relaxed writes commits with synchronous=NORMAL: in WAL
// mode it survives a crash of the process, and the next durable commit
// syncs it to disk with everything before it. Any other write makes its
// transaction durable (synchronous=FULL).

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// groupSize bounds the writes sharing one transaction.
const groupSize = 64

var errGroupStopped = errors.New("queue stopped")

type groupCommit[TTx any] struct {
	db dialect[TTx]
	// begin begins a transaction, durable or not, and returns what ends
	// it (after its commit or rollback).
	begin func(ctx context.Context, durable bool) (TTx, func(), error)

	ops  chan *groupOp[TTx]
	stop chan struct{}
	done chan struct{}
}

type groupOp[TTx any] struct {
	ctx     context.Context
	relaxed bool
	fn      func(context.Context, TTx) error
	err     chan error
}

func newGroupCommit[TTx any](db dialect[TTx], begin func(context.Context, bool) (TTx, func(), error)) *groupCommit[TTx] {
	g := &groupCommit[TTx]{db: db, begin: begin, ops: make(chan *groupOp[TTx]), stop: make(chan struct{}), done: make(chan struct{})}
	go g.loop()
	return g
}

// do runs fn in the next shared transaction and returns once that has
// committed, or fn's error (its savepoint is then rolled back), or the
// commit's. ctx bounds the wait for a place in a transaction; fn runs
// under the transaction's own deadline (see run).
func (g *groupCommit[TTx]) do(ctx context.Context, relaxed bool, fn func(context.Context, TTx) error) error {
	op := &groupOp[TTx]{ctx: ctx, relaxed: relaxed, fn: fn, err: make(chan error, 1)}
	select {
	case g.ops <- op:
	case <-ctx.Done():
		return ctx.Err()
	case <-g.stop:
		return errGroupStopped
	}
	// Once taken, the op's outcome is only known after the commit.
	return <-op.err
}

// close stops the loop once the running transaction has ended.
func (g *groupCommit[TTx]) close() {
	close(g.stop)
	<-g.done
}

func (g *groupCommit[TTx]) loop() {
	defer close(g.done)
	for {
		var first *groupOp[TTx]
		select {
		case first = <-g.ops:
		case <-g.stop:
			return
		}
		batch := gather(first, g.ops, groupSize)
		errs := g.run(batch)
		for i, op := range batch {
			op.err <- errs[i]
		}
	}
}

// run runs a batch in one transaction and returns each op's outcome.
func (g *groupCommit[TTx]) run(batch []*groupOp[TTx]) []error {
	errs := make([]error, len(batch))
	fail := func(err error) []error {
		for i := range errs {
			if errs[i] == nil {
				errs[i] = err
			}
		}
		return errs
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	durable := false
	for _, op := range batch {
		durable = durable || !op.relaxed
	}
	tx, end, err := g.begin(ctx, durable)
	if err != nil {
		return fail(err)
	}
	defer end()
	defer g.db.rollback(ctx, tx)
	// An op's statements run under the group's deadline, not its caller's
	// context: SQLite answers a statement interrupted by a cancelled
	// context by rolling back the whole transaction, every other op's
	// savepoint included. A caller that has gone is skipped before its op
	// starts; once started, the op runs to its end.
	if len(batch) == 1 {
		if errs[0] = batch[0].ctx.Err(); errs[0] != nil {
			return errs
		}
		if errs[0] = batch[0].fn(ctx, tx); errs[0] != nil {
			return errs
		}
		return fail(g.db.commit(ctx, tx))
	}
	for i, op := range batch {
		if errs[i] = op.ctx.Err(); errs[i] != nil {
			continue
		}
		if err := g.db.exec(ctx, tx, `SAVEPOINT rb_op`); err != nil {
			return fail(err)
		}
		if errs[i] = op.fn(ctx, tx); errs[i] != nil {
			// Some errors (a full disk, an I/O error) end the whole
			// transaction; then the rest fails with it.
			if err := g.db.exec(ctx, tx, `ROLLBACK TO rb_op`); err != nil {
				return fail(fmt.Errorf("%w (after: %w)", err, errs[i]))
			}
		}
		if err := g.db.exec(ctx, tx, `RELEASE rb_op`); err != nil {
			return fail(err)
		}
	}
	if err := g.db.commit(ctx, tx); err != nil {
		return fail(err)
	}
	return errs
}

// gather returns first and whatever else is waiting on ch, up to max in
// all, without waiting for more.
func gather[T any](first T, ch <-chan T, max int) []T {
	batch := append(make([]T, 0, 16), first)
	for len(batch) < max {
		select {
		case v := <-ch:
			batch = append(batch, v)
		default:
			return batch
		}
	}
	return batch
}

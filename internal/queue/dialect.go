package queue

// The dialect: everything that differs between SQLite and PostgreSQL,
// behind one interface, so that the rest of the engine never asks which
// database it runs on. Each database's implementation lives beside its
// driver (sqlite.go, postgres.go), with the SQL text that differs
// (queries) and its numbered migrations (migrations/<driver>/).
//
// SQL the two share is written once, in the file of its concern, with
// $1-style placeholders: pgx binds them, and so does modernc's SQLite
// driver ($NNN is bound to the argument of ordinal NNN), so no text is
// rewritten for either.

import (
	"context"
	"time"
)

// dialect is one database as the engine uses it.
type dialect[TTx any] interface {
	// Transactions and statements.
	begin(ctx context.Context) (TTx, error)
	commit(ctx context.Context, tx TTx) error
	rollback(ctx context.Context, tx TTx)
	exec(ctx context.Context, tx TTx, query string, args ...any) error
	// execCount is exec that returns how many rows it changed.
	execCount(ctx context.Context, tx TTx, query string, args ...any) (int64, error)
	queryRow(ctx context.Context, tx TTx, query string, args ...any) scanner
	queryTx(ctx context.Context, tx TTx, query string, args ...any) (rowsIter, error)
	// queryRows runs a query outside any transaction.
	queryRows(ctx context.Context, query string, args ...any) (rowsIter, error)
	// isNoRows reports whether err says a single-row query found none.
	isNoRows(err error) bool

	// sql is the SQL text that differs between the databases.
	sql() *queries
	// columns passes columns of equal length (each a []string or a
	// []int64) as the dialect's set-based statements take them.
	columns(cols ...any) ([]any, error)

	// The per-booking gate's differences (gate.go). takeSlot takes one
	// of the max_in_flight slots shared by every instance, or reports
	// that all are held by calls that may be running; releaseSlot gives
	// an attempt's slot back; ensureSlots creates the slots 1..n. A
	// database that one instance owns needs no slots: its workers are
	// capped instead (workers).
	takeSlot(ctx context.Context, tx TTx, s slotClaim, maxInFlight int) (bool, error)
	releaseSlot(ctx context.Context, tx TTx, jobID int64, attempt int) error
	ensureSlots(ctx context.Context, n int) error
	// waitSlot waits until a slot may have been released, wait has
	// passed, or ctx is done; a released slot goes to the waiter with the
	// best priority that began to wait first (since).
	waitSlot(ctx context.Context, wait time.Duration, priority int, since time.Time)
	// claim runs claimBooking (its arguments) and numbers the claim,
	// under the booking's row lock, for senders waiting on other
	// instances (0: one instance, no numbers; see waiters); claimMark
	// reads the highest number taken so far.
	claim(ctx context.Context, tx TTx, args ...any) (int64, error)
	claimMark(ctx context.Context, tx TTx) (int64, error)
	// publish sends an attempt's outcome to every instance's waiting
	// senders when tx commits (a no-op where one instance is all).
	publish(ctx context.Context, tx TTx, note *publication) error

	// workers is River's MaxWorkers for these settings.
	workers(s Settings) int
	// fetchCooldown is River's FetchCooldown: a fetch is a write.
	fetchCooldown() time.Duration
	// reclaim gives free pages back to the file system.
	reclaim(ctx context.Context) error
	close()
}

// queries is the SQL text that differs between the two databases.
type queries struct {
	// lockRow ends a SELECT that locks the rows it reads until the
	// transaction ends ("" where a transaction holds the write lock).
	lockRow string
	// upsertBookings records a batch's bookings (columns: route, org,
	// booking, latest event type, urgency), locking their rows, and returns each
	// one's waiting job and whether a webhook may merge into it.
	upsertBookings string
	// setWaitingMany makes each new job its booking's waiting sync
	// (columns: route, org, booking, job id).
	setWaitingMany string
	// renewAttempts gives jobs ($1, ids as idList makes them) at least
	// $2 attempts after their current one.
	renewAttempts string
	// promoteWaiting raises the waiting syncs of organization $1 whose
	// urgency is from $3 to below $4 to priority $2 (see promoteWaiting).
	promoteWaiting string
	// raiseWaiting gives job $1 priority $2 if better and, if $3 is 1
	// and it waits for a retry (retryable, or available with a time to
	// come: River's state for a retry due within its scheduler's
	// interval), makes it due at $4 (unix seconds) if that is sooner (see
	// raiseMerged).
	raiseWaiting string
	// insertEvents writes timeline events (columns as writeEvents).
	insertEvents string
	// countByState counts a queue's ($1) jobs by state.
	countByState string
	// oldestPending is the age in seconds of the queue's ($1) oldest job
	// not yet done, or no row.
	oldestPending string
	// argField reads a field of a job's args in SQL: argField + name +
	// argFieldEnd.
	argField, argFieldEnd string
	// recoverJobs makes available again the jobs this instance was
	// running when it stopped, from when their call could have ended
	// (see recoverInterrupted).
	recoverJobs string
	// resumeJobs makes queue $1's snoozed jobs of route $2 (every one
	// if "") and organization $3 (every one if "") due now; $4 is the
	// route of jobs that name none.
	resumeJobs string
	// columnExists counts the columns named $2 of the table named $1
	// (0 or 1; 0 also when the table is missing).
	columnExists string
}

// idList passes a list of job ids as queries.renewAttempts takes it.
func idList[TTx any](d dialect[TTx], ids []int64) (any, error) {
	args, err := d.columns(ids)
	if err != nil {
		return nil, err
	}
	return args[0], nil
}

type scanner interface{ Scan(dest ...any) error }

type rowsIter interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close()
}

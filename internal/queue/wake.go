package queue

// An in-process wake-up for River on SQLite: a recorded webhook's job is
// fetched at once, rather than at River's next poll.
//
// River's SQLite driver carries notifications (a new job, a cancelled
// job, leadership) through an outbox table that a listener polls every
// 50 ms, and the insert notification is rate-limited; a sender waiting in
// auto mode waited for that poll or the fetch poll. One process owns the
// SQLite file (lockFile), so every notification has its sender and its
// listener in this process: wakeDriver hands them over in memory, and the
// engine announces each committed batch itself.

import (
	"context"
	"database/sql"
	"sync"

	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riversqlite"
)

// River's notification topics (river/internal/notifier).
const (
	topicInsert = "river_insert"
)

// wakeDriver is River's SQLite driver with notifications kept in memory.
type wakeDriver struct {
	*riversqlite.Driver
	hub *wakeHub
}

func newWakeDriver(db *sql.DB) *wakeDriver {
	return &wakeDriver{Driver: riversqlite.New(db), hub: &wakeHub{listeners: map[*wakeListener]struct{}{}}}
}

func (d *wakeDriver) GetExecutor() riverdriver.Executor {
	return &wakeExec{Executor: d.Driver.GetExecutor(), hub: d.hub}
}

// UnwrapExecutor is also called on a nil driver (river.JobCompleteTx and
// its kin only have the type); such callers send no notifications.
func (d *wakeDriver) UnwrapExecutor(tx *sql.Tx) riverdriver.ExecutorTx {
	if d == nil {
		return (*riversqlite.Driver)(nil).UnwrapExecutor(tx)
	}
	return &wakeExecTx{ExecutorTx: d.Driver.UnwrapExecutor(tx), hub: d.hub}
}

// UnwrapTx sees through wakeExecTx (River UI unwraps the transactions it
// began on GetExecutor).
func (d *wakeDriver) UnwrapTx(execTx riverdriver.ExecutorTx) *sql.Tx {
	if w, ok := execTx.(*wakeExecTx); ok {
		execTx = w.ExecutorTx
	}
	return (*riversqlite.Driver)(nil).UnwrapTx(execTx)
}

func (d *wakeDriver) GetListener(params *riverdriver.GetListenenerParams) riverdriver.Listener {
	return &wakeListener{hub: d.hub, schema: params.Schema, topics: map[string]bool{}, ch: make(chan *riverdriver.Notification, 64)}
}

// wakeExec and wakeExecTx deliver River's notifications in memory. One
// sent inside a transaction arrives before its commit; for a new job
// that is early enough and harmless: the fetch it starts waits for the
// only connection, which the transaction holds until it ends.
type wakeExec struct {
	riverdriver.Executor
	hub *wakeHub
}

func (e *wakeExec) Begin(ctx context.Context) (riverdriver.ExecutorTx, error) {
	return e.hub.wrap(e.Executor.Begin(ctx))
}

func (e *wakeExec) NotifyMany(_ context.Context, p *riverdriver.NotifyManyParams) error {
	return e.hub.notify(p)
}

type wakeExecTx struct {
	riverdriver.ExecutorTx
	hub *wakeHub
}

func (e *wakeExecTx) Begin(ctx context.Context) (riverdriver.ExecutorTx, error) {
	return e.hub.wrap(e.ExecutorTx.Begin(ctx))
}

func (e *wakeExecTx) NotifyMany(_ context.Context, p *riverdriver.NotifyManyParams) error {
	return e.hub.notify(p)
}

func (h *wakeHub) wrap(tx riverdriver.ExecutorTx, err error) (riverdriver.ExecutorTx, error) {
	if err != nil {
		return nil, err
	}
	return &wakeExecTx{ExecutorTx: tx, hub: h}, nil
}

func (h *wakeHub) notify(p *riverdriver.NotifyManyParams) error {
	h.publish(p.Topic, p.Payload...)
	return nil
}

// wakeHub passes notifications to the listeners of their topic.
type wakeHub struct {
	mu        sync.Mutex
	listeners map[*wakeListener]struct{}
}

// publish never blocks: a listener whose buffer is full misses the
// notification, which at worst leaves the work to River's next poll.
func (h *wakeHub) publish(topic string, payloads ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for l := range h.listeners {
		if !l.listens(topic) {
			continue
		}
		for _, p := range payloads {
			select {
			case l.ch <- &riverdriver.Notification{Topic: topic, Payload: p}:
			default:
			}
		}
	}
}

// wakeListener is River's listener on the hub.
type wakeListener struct {
	hub    *wakeHub
	schema string
	mu     sync.Mutex
	topics map[string]bool
	ch     chan *riverdriver.Notification
}

func (l *wakeListener) listens(topic string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.topics[topic]
}

func (l *wakeListener) Connect(context.Context) error {
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	l.hub.listeners[l] = struct{}{}
	return nil
}

func (l *wakeListener) Close(context.Context) error {
	l.hub.mu.Lock()
	defer l.hub.mu.Unlock()
	delete(l.hub.listeners, l)
	return nil
}

func (l *wakeListener) Listen(_ context.Context, topic string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.topics[topic] = true
	return nil
}

func (l *wakeListener) Unlisten(_ context.Context, topic string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.topics, topic)
	return nil
}

func (l *wakeListener) Ping(context.Context) error { return nil }
func (l *wakeListener) Schema() string             { return l.schema }
func (l *wakeListener) SetAfterConnectExec(string) {}

func (l *wakeListener) WaitForNotification(ctx context.Context) (*riverdriver.Notification, error) {
	select {
	case n := <-l.ch:
		return n, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

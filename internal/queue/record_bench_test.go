package queue

// BenchmarkRecord: the record path alone (jobs wait in a one-hour window,
// so no worker runs): 32 senders at once, on SQLite, each webhook a new
// booking. What one recorded webhook costs the database.

import (
	"context"
	"fmt"
	"net/url"
	"sync/atomic"
	"testing"
	"time"

	"github.com/bookingwebhook/caddy-receive-booking/internal/testkit"
	"github.com/bookingwebhook/caddy-receive-booking/internal/upstream"
	"go.uber.org/zap"
)

func BenchmarkRecord(b *testing.B) {
	up := testkit.NewStandIn(b)
	u, _ := url.Parse(up.URL)
	rq := &Config{Driver: SQLite, Location: b.TempDir() + "/q.sqlite3", Settings: Settings{Workers: 1, MaxAttempts: 3, WorkerTimeout: 10 * time.Second}}
	e := New(rq, zap.NewNop())
	defer e.Destruct()
	e.Attach(b, map[string]*upstream.Client{DefaultRoute: upstream.New(u, "", "bench", nil)}, nil, rq.Settings)
	<-e.ready
	var n atomic.Int64
	b.SetParallelism(16) // 32 senders on 2 cores
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id := fmt.Sprintf("bench-%d", n.Add(1))
			now := time.Now()
			if err := e.Record(context.Background(), &Entry{Webhook: testWebhook(id), Route: DefaultRoute, AcceptedAt: now, NotBefore: now.Add(time.Hour)}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

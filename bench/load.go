package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	vegeta "github.com/tsenart/vegeta/v12/lib"
)

const (
	apiKey    = "bench-secret-7c1f0a9e4b2d"
	targetKey = "bench-target-key"
)

// webhookTargeter POSTs the webhook body to url, naming booking ids(i) for
// the i-th request.
func webhookTargeter(url string, ids func(i uint64) uint64) vegeta.Targeter {
	var n atomic.Uint64
	hdr := http.Header{
		"X-Api-Key":    {apiKey},
		"Content-Type": {"application/json"},
	}
	return func(t *vegeta.Target) error {
		i := n.Add(1) - 1
		t.Method = http.MethodPost
		t.URL = url
		t.Header = hdr
		t.Body = fmt.Appendf(nil, `{"booking_id":"%d","event_type":"booking.updated","organization_id":"org-1"}`, ids(i))
		return nil
	}
}

func cycle(n uint64) func(uint64) uint64 { return func(i uint64) uint64 { return i%n + 1 } }
func distinct(i uint64) uint64           { return i + 1 }

// limitPacer stops an attack after max hits.
type limitPacer struct {
	vegeta.Pacer
	max uint64
}

func (p limitPacer) Pace(elapsed time.Duration, hits uint64) (time.Duration, bool) {
	if hits >= p.max {
		return 0, true
	}
	return p.Pacer.Pace(elapsed, hits)
}

// loadResult summarises one attack.
type loadResult struct {
	requests uint64
	ok       uint64 // 2xx
	codes    map[string]int
	errs     []string
	elapsed  time.Duration // first request to last response
	p50, p99 time.Duration
}

func (r *loadResult) nonOK() uint64 { return r.requests - r.ok }

// okPerSec is 2xx answers per second of wall time.
func (r *loadResult) okPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

func (r *loadResult) codesString() string {
	var parts []string
	for code, n := range r.codes {
		if code == "0" {
			code = "transport-error"
		}
		parts = append(parts, fmt.Sprintf("%s×%d", code, n))
	}
	return strings.Join(parts, " ")
}

// closedLoop keeps concurrency requests in flight for du.
func closedLoop(tr vegeta.Targeter, concurrency int, du time.Duration) *loadResult {
	a := newAttacker(concurrency, concurrency)
	return collect(a.Attack(tr, vegeta.ConstantPacer{}, du, "closed-loop"))
}

// burst sends n requests at rate per second (open loop), with up to n in
// flight at once.
func burst(tr vegeta.Targeter, n int, rate int) *loadResult {
	a := newAttacker(n, n)
	p := limitPacer{Pacer: vegeta.ConstantPacer{Freq: rate, Per: time.Second}, max: uint64(n)}
	return collect(a.Attack(tr, p, 0, "burst"))
}

func newAttacker(workers, maxWorkers int) *vegeta.Attacker {
	return vegeta.NewAttacker(
		vegeta.Workers(uint64(workers)),
		vegeta.MaxWorkers(uint64(maxWorkers)),
		vegeta.Connections(maxWorkers),
		vegeta.KeepAlive(true),
		vegeta.Timeout(60*time.Second),
		vegeta.Redirects(vegeta.NoFollow),
	)
}

func collect(results <-chan *vegeta.Result) *loadResult {
	var m vegeta.Metrics
	var ok uint64
	for res := range results {
		if res.Code >= 200 && res.Code < 300 {
			ok++
		}
		m.Add(res)
	}
	m.Close()
	return &loadResult{
		requests: m.Requests,
		ok:       ok,
		codes:    m.StatusCodes,
		errs:     m.Errors,
		elapsed:  m.Duration + m.Wait,
		p50:      m.Latencies.P50,
		p99:      m.Latencies.P99,
	}
}

// probe sends one request of the targeter and returns its status and body,
// to check a scenario is wired as intended before loading it.
func probe(tr vegeta.Targeter) (int, string, error) {
	var t vegeta.Target
	if err := tr(&t); err != nil {
		return 0, "", err
	}
	req, err := t.Request()
	if err != nil {
		return 0, "", err
	}
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 2048))
	return resp.StatusCode, string(b), nil
}

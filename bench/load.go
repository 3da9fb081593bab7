package main

// Load results (wrk's or the driver's own) and the load wrk cannot make:
// bursts of senders, each on its own connection, timed by the driver.

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"
)

const (
	apiKey    = "bench-secret-7c1f0a9e4b2d"
	targetKey = "bench-target-key"
)

// loadResult summarises one load run: a wrk run, or a burst of
// goroutines.
type loadResult struct {
	requests  uint64 // answers received
	ok        uint64 // 2xx (wrk: answers below 400; the probe checks the status)
	status    uint64 // non-2xx answers
	sockErrs  uint64 // connect, read, write errors and timeouts
	codes     map[int]int
	errSample string
	elapsed   time.Duration // first request to last answer (wrk: its run time)
	p50, p90  time.Duration
	p99, max  time.Duration
	wrkCPU    float64 // wrk's CPU time over its wall time, % of one core; -1: no wrk
}

func (r *loadResult) nonOK() uint64 { return r.status + r.sockErrs }

// okPerSec is 2xx answers per second of wall time.
func (r *loadResult) okPerSec() float64 {
	if r.elapsed <= 0 {
		return 0
	}
	return float64(r.ok) / r.elapsed.Seconds()
}

// add sums another run into r: counts and time add up, p99 and max are
// the worst of the two.
func (r *loadResult) add(o *loadResult) {
	r.requests += o.requests
	r.ok += o.ok
	r.status += o.status
	r.sockErrs += o.sockErrs
	r.elapsed += o.elapsed
	r.p99 = max(r.p99, o.p99)
	r.max = max(r.max, o.max)
}

// problems says what went wrong, or "".
func (r *loadResult) problems() string {
	var parts []string
	if r.status > 0 {
		if len(r.codes) > 0 {
			var codes []string
			for c, n := range r.codes {
				if c < 200 || c > 299 {
					codes = append(codes, fmt.Sprintf("%d×%d", c, n))
				}
			}
			slices.Sort(codes)
			parts = append(parts, "answers "+strings.Join(codes, " "))
		} else {
			parts = append(parts, fmt.Sprintf("%d answers ≥ 400", r.status))
		}
	}
	if r.sockErrs > 0 {
		s := fmt.Sprintf("%d socket errors or timeouts", r.sockErrs)
		if r.errSample != "" {
			s += " (" + r.errSample + ")"
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func webhookBody(id uint64) string {
	return fmt.Sprintf(`{"booking_id":"%d","event_type":"booking.updated","organization_id":"org-1"}`, id)
}

func newWebhook(ctx context.Context, url string, id uint64) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(webhookBody(id)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("X-Api-Key", apiKey)
	req.Header.Set("Content-Type", "application/json")
	return req, nil
}

// burst sends n webhooks, the i-th naming booking ids(i), each from its
// own goroutine and connection (open loop: a slow answer delays no other
// request). With spread 0 they all wait at a gate that opens at once;
// otherwise the i-th starts at i·spread/n.
func burst(url string, ids func(i uint64) uint64, n int, spread, timeout time.Duration) *loadResult {
	tr := &http.Transport{MaxIdleConns: n, MaxIdleConnsPerHost: n, IdleConnTimeout: 5 * time.Second}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	lat := make([]time.Duration, n)
	codes := make([]int, n)
	errs := make([]error, n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-gate
			if spread > 0 {
				time.Sleep(time.Duration(i) * spread / time.Duration(n))
			}
			req, err := newWebhook(context.Background(), url, ids(uint64(i)))
			if err != nil {
				errs[i] = err
				return
			}
			t := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				errs[i] = err
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			lat[i], codes[i] = time.Since(t), resp.StatusCode
		})
	}
	// Let the goroutines reach the gate before the clock starts.
	time.Sleep(50 * time.Millisecond)
	start := time.Now()
	close(gate)
	wg.Wait()
	r := &loadResult{elapsed: time.Since(start), codes: map[int]int{}, wrkCPU: -1}
	var answered []time.Duration
	for i := range n {
		if errs[i] != nil {
			r.sockErrs++
			if r.errSample == "" {
				r.errSample = firstLine(errs[i].Error())
			}
			continue
		}
		r.requests++
		r.codes[codes[i]]++
		if codes[i] >= 200 && codes[i] <= 299 {
			r.ok++
		} else {
			r.status++
		}
		answered = append(answered, lat[i])
	}
	slices.Sort(answered)
	r.p50, r.p90, r.p99 = percentile(answered, 50), percentile(answered, 90), percentile(answered, 99)
	if len(answered) > 0 {
		r.max = answered[len(answered)-1]
	}
	return r
}

func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[min(max(i-1, 0), len(sorted)-1)]
}

// probe sends one webhook and returns its status and body, to check a
// scenario is wired as intended before loading it.
func probe(url string, id uint64) (int, string, error) {
	req, err := newWebhook(context.Background(), url, id)
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

func cycle(n uint64) func(uint64) uint64 { return func(i uint64) uint64 { return i%n + 1 } }
func distinct(i uint64) uint64           { return i + 1 }

package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/testlab"
)

// hallSize and hallConcurrency shape an exam hall signing in: 500
// candidates behind one address, 50 browsers' requests in flight at once.
const (
	hallSize        = 500
	hallConcurrency = 50
)

// BenchmarkHallSignIn measures 500 code sign-ins from one address (a
// hall behind one NAT, seen through a trusted proxy) through the whole
// API — limits, code lookup, session creation, token — beside a baseline
// of the same number of requests to a handler that does no work, sent
// the same way in the same run. Each iteration is a fresh hall (its own
// address and roster), so no budget carries over.
func BenchmarkHallSignIn(b *testing.B) {
	st := testlab.Start(b, testlab.Options{
		Platform: platform.Options{Runtime: labtest.NewMemory(labtest.MemoryOptions{})},
		Config:   func(c *config.Config) { c.TrustedProxies = []string{"127.0.0.1"} },
	})
	ctx := context.Background()
	now := time.Now()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: hallConcurrency}}
	send := func(method, path string, body []byte, hall int) (time.Duration, int) {
		req, _ := http.NewRequest(method, st.URL+path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.51.100.%d", hall%250+1))
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		resp.Body.Close()
		return time.Since(start), resp.StatusCode
	}
	run := func(n int, do func(i int) (time.Duration, int), want int) []time.Duration {
		ds := make([]time.Duration, n)
		var wg sync.WaitGroup
		next := make(chan int)
		for range hallConcurrency {
			wg.Go(func() {
				for i := range next {
					d, code := do(i)
					if code != want {
						b.Errorf("request %d: %d, want %d", i, code, want)
					}
					ds[i] = d
				}
			})
		}
		for i := range n {
			next <- i
		}
		close(next)
		wg.Wait()
		return ds
	}
	var signins, baseline []time.Duration
	var wall time.Duration
	b.ResetTimer()
	for it := range b.N {
		b.StopTimer()
		id := fmt.Sprintf("hall-%d", it)
		if err := st.Store.CreateSitting(ctx, &sitting.Sitting{ID: id, ExamID: st.Exam.ID, Opens: now.Add(-time.Hour), Closes: now.Add(time.Hour)}); err != nil {
			b.Fatal(err)
		}
		rows := make([]sitting.Row, hallSize)
		for i := range rows {
			rows[i] = sitting.Row{Line: i + 2, Email: fmt.Sprintf("c%03d@hall%d.example.com", i, it), Name: "C"}
		}
		issued, err := st.Store.AddEntries(ctx, id, rows, false)
		if err != nil {
			b.Fatal(err)
		}
		bodies := make([][]byte, hallSize)
		for i, ic := range issued {
			bodies[i], _ = json.Marshal(map[string]string{"code": ic.Code})
		}
		b.StartTimer()
		start := time.Now()
		signins = append(signins, run(hallSize, func(i int) (time.Duration, int) { return send("POST", "/api/login", bodies[i], 2*it) }, 200)...)
		wall += time.Since(start)
		baseline = append(baseline, run(hallSize, func(int) (time.Duration, int) { return send("GET", "/healthz", nil, 2*it+1) }, 200)...)
	}
	med, p95 := testlab.Percentiles(signins)
	bmed, bp95 := testlab.Percentiles(baseline)
	b.ReportMetric(float64(med.Microseconds())/1000, "signin-ms-median")
	b.ReportMetric(float64(p95.Microseconds())/1000, "signin-ms-p95")
	b.ReportMetric(float64(bmed.Microseconds())/1000, "baseline-ms-median")
	b.ReportMetric(float64(bp95.Microseconds())/1000, "baseline-ms-p95")
	b.ReportMetric(wall.Seconds()/float64(b.N), "s/hall")
}

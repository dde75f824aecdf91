package api_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// newEngine is a Docker runtime configured as the platform configures
// one, for tests that wrap it; instance names the stack's labs.
func newEngine(t testing.TB, instance string) *docker.Runtime {
	t.Helper()
	cfg := config.Default()
	rt, err := docker.New(docker.Options{Host: cfg.DockerHost, SubnetPool: cfg.SubnetPool, SubnetPrefix: cfg.SubnetPrefix,
		SwitchImage: cfg.SwitchImage, GraderBusybox: cfg.GraderBusybox, Instance: instance})
	if err != nil {
		t.Fatal(err)
	}
	return rt
}

// herdEngine wraps a runtime and times its Status calls — what a status
// request that asked the runtime would have waited for. With a load set,
// it also plays an engine under a herd: each Status waits load for every
// provision in flight (at most 3 s, the bound the API used to put on one
// call), as a real engine slows with every lab it is creating.
type herdEngine struct {
	lab.Runtime
	load     time.Duration
	inflight atomic.Int64

	mu     sync.Mutex
	status []time.Duration
}

func (h *herdEngine) Provision(ctx context.Context, spec lab.Spec) error {
	h.inflight.Add(1)
	defer h.inflight.Add(-1)
	return h.Runtime.Provision(ctx, spec)
}

func (h *herdEngine) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	start := time.Now()
	if h.load > 0 {
		wait := min(h.load*time.Duration(h.inflight.Load()), 3*time.Second)
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	nodes, err := h.Runtime.Status(ctx, spec)
	h.mu.Lock()
	h.status = append(h.status, time.Since(start))
	h.mu.Unlock()
	return nodes, err
}

// takeStatus returns the Status durations timed since the last call.
func (h *herdEngine) takeStatus() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.status
	h.status = nil
	return out
}

// Shape of the herd benchmark: between a candidate page's polls (the
// page polls every second or two; pollers here press harder), and how
// many polls each candidate sends for the baseline.
const (
	herdPollPause    = 25 * time.Millisecond
	herdBaselinePoll = 40
)

// BenchmarkStatusDuringHerd measures the candidate's status request
// (GET /api/session/:id/status) while N labs provision at once, every
// candidate polling their own, beside a baseline of the same requests
// from the same candidates before any lab starts, in the same run. Also
// reported: the runtime's Status calls during the herd (the workers'
// progress readings), which is what each status request waited for when
// the API asked the runtime itself. Two variants: 16 labs on the
// in-memory runtime with an engine that slows with every provision in
// flight (herdEngine), and 4 real Docker labs.
func BenchmarkStatusDuringHerd(b *testing.B) {
	b.Run("memory-16", func(b *testing.B) {
		rt := &herdEngine{Runtime: labtest.NewMemory(labtest.MemoryOptions{NodeDelay: 150 * time.Millisecond}), load: 150 * time.Millisecond}
		benchHerd(b, rt, 16, "")
	})
	b.Run("docker-4", func(b *testing.B) {
		instance := "t-" + strings.ToLower(store.NewSessionID())
		benchHerd(b, &herdEngine{Runtime: newEngine(b, instance)}, 4, instance)
	})
}

func benchHerd(b *testing.B, rt *herdEngine, n int, instance string) {
	b.StopTimer()
	st := testlab.Start(b, testlab.Options{
		Platform: platform.Options{Runtime: rt},
		Config: func(c *config.Config) {
			c.WorkerConcurrency = n + 4
			if instance != "" {
				c.Instance = instance
			}
		},
	})
	ctx := context.Background()
	storetest.OpenSitting(b, st.Store, "herd", st.Exam.ID, 0)
	var baseline, herd, engine []time.Duration
	var mu sync.Mutex
	keep := func(dst *[]time.Duration, d time.Duration) {
		mu.Lock()
		*dst = append(*dst, d)
		mu.Unlock()
	}
	status := func(c *testlab.Client, id string) (testlab.Session, time.Duration) {
		var s testlab.Session
		start := time.Now()
		code, err := c.Do("GET", "/api/session/"+id+"/status", nil, &s)
		d := time.Since(start)
		if err != nil || code != 200 {
			b.Fatalf("status %s: %d %v", id, code, err)
		}
		return s, d
	}
	for it := range b.N {
		ids := make([]string, n)
		clients := make([]*testlab.Client, n)
		for i := range ids {
			sess, token := storetest.SignInTo(b, st.Store, "herd", fmt.Sprintf("c%d-%d@herd.example.com", i, it), st.Exam.ID, time.Hour, "bench")
			ids[i], clients[i] = sess.ID, st.Client()
			clients[i].Token = token
		}
		b.Cleanup(func() {
			dctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			for _, id := range ids {
				_ = rt.Destroy(dctx, id)
			}
		})

		// Baseline: the same candidates polling, no lab starting.
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				for range herdBaselinePoll {
					_, d := status(clients[i], ids[i])
					keep(&baseline, d)
					time.Sleep(herdPollPause)
				}
			})
		}
		wg.Wait()
		rt.takeStatus()

		// The herd: every candidate starts at once and polls until their
		// lab is ready.
		b.StartTimer()
		for i := range n {
			wg.Go(func() {
				if code, err := clients[i].Do("POST", "/api/session/"+ids[i]+"/start", nil, nil); err != nil || code != 202 {
					b.Errorf("start %s: %d %v", ids[i], code, err)
					return
				}
				deadline := time.Now().Add(testlab.ProvisionTimeout)
				for {
					s, d := status(clients[i], ids[i])
					if s.Status == "ready" {
						return
					}
					if s.Status == "failed" || time.Now().After(deadline) {
						b.Errorf("session %s is %s (%s)", ids[i], s.Status, s.Error)
						return
					}
					keep(&herd, d)
					time.Sleep(herdPollPause)
				}
			})
		}
		wg.Wait()
		b.StopTimer()
		engine = append(engine, rt.takeStatus()...)
		// The herd's sessions end, so that the next one's sweeps do not
		// find their labs gone, and their labs and slots go.
		dctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		for _, id := range ids {
			if _, err := st.Store.Update(dctx, id, func(x *session.Session) error { return x.Fail("the benchmark is over", time.Now()) }); err != nil {
				b.Errorf("end %s: %v", id, err)
			}
			if err := scheduler.Release(dctx, st.Store, st.Enqueuer, id, time.Now()); err != nil {
				b.Errorf("release %s: %v", id, err)
			}
			if err := rt.Destroy(dctx, id); err != nil {
				b.Errorf("destroy %s: %v", id, err)
			}
		}
		cancel()
	}
	report := func(name string, ds []time.Duration) {
		med, p95 := testlab.Percentiles(ds)
		b.ReportMetric(float64(med.Microseconds())/1000, name+"-ms-median")
		b.ReportMetric(float64(p95.Microseconds())/1000, name+"-ms-p95")
	}
	report("status-herd", herd)
	report("status-baseline", baseline)
	report("engine-status", engine)
	b.ReportMetric(float64(len(herd))/float64(b.N), "herd-requests/op")
}

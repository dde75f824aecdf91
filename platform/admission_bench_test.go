package platform_test

import (
	"context"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// Numbers of the admission benchmark.
const (
	burstStarts       = 200
	burstCapacity     = 8
	trivialProvision  = 250 * time.Millisecond
	burstDrainTimeout = 10 * time.Minute
)

// BenchmarkAdmissionBurst: 200 starts at once against a sitting of
// capacity 8, each candidate submitting as soon as their lab is ready, so
// that every lab's end admits the next. It reports the time until the
// queue has drained (the last start admitted), until the 200th lab was
// ready, and the most labs up at once; the no-queue case is the same 200
// labs with no capacity, through the same API-less path (scheduler.Start,
// the asynq workers, archive and cleanup).
//
// The labs are NOT real containers: the runtime is a trivial in-memory
// one whose provision takes a fixed 250 ms and whose archive captures
// empty files, so the numbers are the queue's and the pipeline's, not
// Docker's. Everything else — Redis, the session files, asynq and the
// worker (concurrency 8) — is real.
//
//	go test ./platform -run '^$' -bench AdmissionBurst -benchtime 1x
func BenchmarkAdmissionBurst(b *testing.B) {
	for _, tc := range []struct {
		name     string
		capacity int
	}{
		{"queue-capacity-8", burstCapacity},
		{"no-queue", 0},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var drained, ready time.Duration
			peak := 0
			for range b.N {
				d, r, p := burst(b, tc.capacity)
				drained, ready, peak = drained+d, ready+r, max(peak, p)
			}
			b.ReportMetric(float64(drained.Milliseconds())/float64(b.N), "ms-drained")
			b.ReportMetric(float64(ready.Milliseconds())/float64(b.N), "ms-all-ready")
			b.ReportMetric(float64(peak), "labs-peak")
		})
	}
}

// burst runs one burst of starts and answers when the line was empty,
// when the last lab was ready, and the most labs up at once.
func burst(b *testing.B, capacity int) (drained, allReady time.Duration, peak int) {
	b.StopTimer()
	rt := &trivialRuntime{provision: trivialProvision, up: map[string]bool{}}
	st := testlab.Start(b, testlab.Options{
		Roles:    &platform.Roles{Worker: true},
		Platform: platform.Options{Runtime: rt, NoScheduler: true},
	})
	ctx := context.Background()
	storetest.OpenSitting(b, st.Store, "burst", st.Exam.ID, capacity)
	ids := make([]string, burstStarts)
	for i := range ids {
		sess, _ := storetest.SignInTo(b, st.Store, "burst", fmt.Sprintf("c%d@example.com", i), st.Exam.ID, time.Hour, "trivial")
		ids[i] = sess.ID
	}

	b.StartTimer()
	t0 := time.Now()
	var wg sync.WaitGroup
	for _, id := range ids {
		wg.Go(func() {
			if _, err := scheduler.Start(ctx, st.Store, st.Enqueuer, id, time.Now()); err != nil {
				b.Errorf("start %s: %v", id, err)
			}
		})
	}
	wg.Wait()
	// Each candidate submits once their lab is ready; the burst is over
	// when every lab has been ready.
	submitted := map[string]bool{}
	deadline := t0.Add(burstDrainTimeout)
	for len(submitted) < burstStarts {
		if time.Now().After(deadline) {
			b.Fatalf("after %s: %d of %d labs were ready", burstDrainTimeout, len(submitted), burstStarts)
		}
		counts, err := st.Store.CountByStatus(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if drained == 0 && counts[session.StateQueued] == 0 {
			drained = time.Since(t0)
		}
		res, err := st.Store.List(ctx, store.ListQuery{Status: []session.State{session.StateReady}, Limit: 500})
		if err != nil {
			b.Fatal(err)
		}
		for _, s := range res.Sessions {
			if submitted[s.ID] {
				continue
			}
			submitted[s.ID] = true
			if _, _, err := scheduler.Submit(ctx, st.Store, st.Enqueuer, s.ID, session.ByCandidate, time.Now()); err != nil {
				b.Fatalf("submit %s: %v", s.ID, err)
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	allReady = time.Since(t0)
	b.StopTimer()
	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := st.Shutdown(sctx); err != nil {
		b.Fatal(err)
	}
	return drained, allReady, rt.peakLabs()
}

// trivialRuntime is a lab runtime that runs nothing: a provision takes a
// fixed time and marks the lab up, every node reports running, captures
// are empty. It stands in for Docker where only the platform's own work
// is measured.
type trivialRuntime struct {
	provision time.Duration
	mu        sync.Mutex
	up        map[string]bool
	peak      int
}

var _ lab.Runtime = (*trivialRuntime)(nil)

func (r *trivialRuntime) peakLabs() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peak
}

func (r *trivialRuntime) Provision(ctx context.Context, spec lab.Spec) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(r.provision):
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.up[spec.SessionID] = true
	r.peak = max(r.peak, len(r.up))
	return nil
}

func (r *trivialRuntime) Status(_ context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	state := lab.StatePending
	if r.up[spec.SessionID] {
		state = lab.StateRunning
	}
	out := make([]lab.NodeStatus, len(spec.Nodes))
	for i, n := range spec.Nodes {
		out[i] = lab.NodeStatus{Name: n.Name, Container: n.Container, State: state}
	}
	return out, nil
}

func (r *trivialRuntime) Exec(context.Context, string, string, lab.ExecRequest) (lab.Process, error) {
	return nil, lab.ErrNotFound
}

func (r *trivialRuntime) ExportFS(context.Context, string, string, io.Writer) error { return nil }

func (r *trivialRuntime) Capture(context.Context, string, []string, lab.SnapshotMode, lab.SaveFunc) ([]lab.NodeCapture, error) {
	return nil, nil
}

func (r *trivialRuntime) Logs(context.Context, string, string, io.Writer) error { return nil }

func (r *trivialRuntime) Destroy(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.up, id)
	return nil
}

func (r *trivialRuntime) ResetNode(context.Context, lab.Spec, string) error { return nil }

func (r *trivialRuntime) Labs(context.Context) ([]string, error) { return nil, nil }

func (r *trivialRuntime) Ping(context.Context) error { return nil }

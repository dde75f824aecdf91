package platform_test

import (
	"context"
	"fmt"
	"maps"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// The herd: many candidates press start at the same moment on one host.
const (
	// defaultHerd keeps make bench affordable: a herd of 16 of the
	// shipped exam takes about two minutes on the 2-core machine, three
	// times per iteration (platform, raw Engine API and runtime), which
	// make bench's 5 iterations would stretch to half an hour.
	defaultHerd = 4
	// herdPollEvery is how often each candidate's page reads its status
	// while the lab starts (exam.js, POLL_PROVISIONING_MS): the herd's
	// candidates read theirs at that rate, as their pages would.
	herdPollEvery = time.Second
	// herdDestroyParallel bounds the removal of a herd's labs.
	herdDestroyParallel = 4
)

// herdSize is EXAMLAB_HERD_N, or defaultHerd.
func herdSize(b *testing.B) int {
	v := os.Getenv("EXAMLAB_HERD_N")
	if v == "" {
		return defaultHerd
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > 64 {
		b.Fatalf("EXAMLAB_HERD_N=%q: want a number of labs from 1 to 64", v)
	}
	return n
}

// herdTimeout tells a stuck herd from a slow one; it is no measure of
// speed.
func herdTimeout(n int) time.Duration {
	return testlab.ProvisionTimeout + time.Duration(n)*30*time.Second
}

// BenchmarkHerdStart: N candidates start the shipped exam's lab at the
// same moment (N = EXAMLAB_HERD_N, default 4). One iteration is one herd
// of each kind below; the platform's runs on a fresh platform (its own Redis, the worker pool at the configured
// concurrency, the real Docker runtime), timed from the first start
// request until every candidate's status reads ready; ns/op is that time.
// While the herd starts, each candidate reads their status once a second,
// as their page does (GET /api/session/:id/status); the reads give the
// status latency, and the first that reads ready gives the lab's ready
// time, the ready_at the platform recorded (the deadline counts from it),
// not the moment the read came, up to a second later.
//
// The baseline, in the same iteration, is the same N labs of the same
// exam brought up by bare Engine API calls (testlab.RawSegmentedLab: the
// switch and nodes created and started with the runtime's requests, the
// wiring script, names, files and setup; no queue, store, checks or
// retries), as many at once as the worker runs labs, all asked for at the
// same moment. A third herd is the runtime without the platform: the
// Docker runtime's Provision called directly for the same N labs, the
// same way, to tell what the runtime adds from what the platform adds.
//
// Reported per herd (averaged over iterations): s-all-ready, and per-lab
// start→ready s-lab-p50 / s-lab-p95 over every lab of every iteration;
// the same three for the raw and runtime herds; x-vs-raw and
// x-vs-runtime (all-ready over theirs); and ms-status-p50 /
// ms-status-p95 over every status read. Where the platform's time goes:
// s-provision-p50 (each lab's time in the runtime's Provision, which
// s-runtime-provision-p50 and s-raw-provision-p50 give for the other two
// herds), s-queue-p50 / -p95 (start request → Provision called: the
// queue hop and the wait for a free worker, which the other herds spend
// waiting for one of their concurrency slots) and ms-after-p50 / -p95
// (Provision returned → the lab recorded ready).
//
//	go test ./platform -run '^$' -bench HerdStart -benchtime 5x
//	EXAMLAB_HERD_N=16 go test ./platform -run '^$' -bench HerdStart -benchtime 1x -timeout 30m
//	EXAMLAB_HERD_N=64 EXAMLAB_HERD_RUNTIME=0 go test ./platform -run '^$' -bench HerdStart -benchtime 1x -timeout 90m
func BenchmarkHerdStart(b *testing.B) {
	n := herdSize(b)
	// EXAMLAB_HERD_RUNTIME=0 leaves out the runtime-alone herd, a third
	// of the time of a large herd; the goal is against the bare herd.
	withRuntime := os.Getenv("EXAMLAB_HERD_RUNTIME") != "0"
	concurrency := config.Default().WorkerConcurrency
	base := config.Default()
	base.Instance = "t-" + strings.ToLower(store.NewSessionID())
	rt, err := platform.NewRuntime(base)
	if err != nil {
		b.Fatal(err)
	}
	eng := testlab.NewEngine(b)
	var (
		ex                   = exam.Default()
		platformH, rawH, rtH herd
		status               latencies
		ctx                  = context.Background()
	)
	for i := 0; b.Loop(); i++ {
		b.StopTimer() // herdOnPlatform times its own part
		// Rotate which herd goes first, so that none always meets an
		// engine still settling from another's removal.
		herds := []func(){
			func() {
				platformH.add(herdOnPlatform(ctx, b, n, concurrency, i, &status))
			},
			func() {
				rawH.add(herdOf(ctx, b, rt, ex, base.Instance, n, concurrency, i, func(ctx context.Context, spec lab.Spec) error {
					return eng.RawSegmentedLab(ctx, spec, base.SwitchImage, map[string]string{
						lab.LabelManaged: "true", lab.LabelSession: spec.SessionID, lab.LabelExam: spec.ExamID, lab.LabelInstance: base.Instance,
					})
				}))
			},
		}
		if withRuntime {
			herds = append(herds, func() {
				rtH.add(herdOf(ctx, b, rt, ex, base.Instance, n, concurrency, i, rt.Provision))
			})
		}
		for k := range herds {
			herds[(i+k)%len(herds)]()
		}
		b.StartTimer()
	}
	s50, s95 := testlab.Percentiles(status.all())
	b.ReportMetric(float64(n), "labs")
	platformH.report(b, "")
	rawH.report(b, "raw-")
	if withRuntime {
		rtH.report(b, "runtime-")
		b.ReportMetric(platformH.allReady.Seconds()/rtH.allReady.Seconds(), "x-vs-runtime")
	}
	b.ReportMetric(platformH.allReady.Seconds()/rawH.allReady.Seconds(), "x-vs-raw")
	b.ReportMetric(float64(s50.Microseconds())/1000, "ms-status-p50")
	b.ReportMetric(float64(s95.Microseconds())/1000, "ms-status-p95")
	b.ReportMetric(float64(len(status.all())), "status-reads")
}

// herd sums the herds of one kind over the iterations.
type herd struct {
	runs     int
	allReady time.Duration
	perLab   []time.Duration
	// provision is each lab's time in the runtime's Provision, from its
	// call to its return, waits for a worker or a slot left out.
	provision []time.Duration
	// queue (start request → Provision called) and after (Provision
	// returned → the lab recorded ready) are the platform's own.
	queue, after []time.Duration
}

func (h *herd) add(r herdRun) {
	h.runs++
	h.allReady += r.all
	h.perLab = append(h.perLab, r.labs...)
	h.provision = append(h.provision, r.provision...)
	h.queue = append(h.queue, r.queue...)
	h.after = append(h.after, r.after...)
}

// herdRun is one herd: the first request → last lab ready, and per lab
// start → ready and the parts herd describes.
type herdRun struct {
	all                           time.Duration
	labs, provision, queue, after []time.Duration
}

// report prints the herd's all-ready time (per herd) and its labs'
// start→ready median and p95, in seconds, names prefixed by what.
func (h *herd) report(b *testing.B, what string) {
	p50, p95 := testlab.Percentiles(h.perLab)
	b.ReportMetric(h.allReady.Seconds()/float64(max(h.runs, 1)), "s-"+what+"all-ready")
	b.ReportMetric(p50.Seconds(), "s-"+what+"lab-p50")
	b.ReportMetric(p95.Seconds(), "s-"+what+"lab-p95")
	p50, _ = testlab.Percentiles(h.provision)
	b.ReportMetric(p50.Seconds(), "s-"+what+"provision-p50")
	if len(h.queue) > 0 {
		q50, q95 := testlab.Percentiles(h.queue)
		a50, a95 := testlab.Percentiles(h.after)
		b.ReportMetric(q50.Seconds(), "s-"+what+"queue-p50")
		b.ReportMetric(q95.Seconds(), "s-"+what+"queue-p95")
		b.ReportMetric(float64(a50.Microseconds())/1000, "ms-"+what+"after-p50")
		b.ReportMetric(float64(a95.Microseconds())/1000, "ms-"+what+"after-p95")
	}
}

// herdOnPlatform starts n labs at once through a fresh platform and
// answers when the last was ready and each lab's start→ready (by the
// ready_at the platform recorded). The timer runs from the first start
// request to the last candidate's read of ready.
func herdOnPlatform(ctx context.Context, b *testing.B, n, concurrency, iter int, status *latencies) herdRun {
	b.Helper()
	// The platform's runtime, timed: when each lab's first Provision began
	// and its last ended tell the queue's wait, the runtime's time and
	// what the platform took after it apart.
	timed := &timedRuntime{began: map[string]time.Time{}, ended: map[string]time.Time{}}
	st := testlab.Start(b, testlab.Options{
		Config: func(c *config.Config) {
			c.WorkerConcurrency = concurrency
			rt, err := platform.NewRuntime(*c)
			if err != nil {
				b.Fatal(err)
			}
			timed.Runtime = rt
		},
		Platform: platform.Options{Runtime: timed},
	})
	clients := make([]*testlab.Client, n)
	ids := make([]string, n)
	for i := range n {
		clients[i] = st.Client()
		ids[i] = clients[i].Login(b, fmt.Sprintf("herd%d-%d@example.com", iter, i))
	}
	// Stop the platform before its labs are removed, so that no worker
	// sees them go and starts them again.
	defer func() {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		st.Shutdown(sctx)
		destroyHerd(ctx, b, st.Runtime, ids)
	}()

	var (
		started = make([]time.Time, n)
		ready   = make([]time.Time, n)
		errs    = make(chan error, n)
		wg      sync.WaitGroup
	)
	pctx, cancel := context.WithTimeout(ctx, herdTimeout(n))
	defer cancel()
	fail := func(err error) {
		select {
		case errs <- err:
		default:
		}
		cancel()
	}

	b.StartTimer()
	t0 := time.Now()
	for i := range n {
		wg.Go(func() {
			started[i] = time.Now()
			code, err := clients[i].Do("POST", "/api/session/"+ids[i]+"/start", nil, nil)
			if err != nil || (code != 202 && code != 200) {
				fail(fmt.Errorf("start %s: %d %v", ids[i], code, err))
				return
			}
			// The candidate's page, from here on.
			for {
				select {
				case <-pctx.Done():
					return
				case <-time.After(herdPollEvery):
				}
				var s testlab.Session
				r0 := time.Now()
				code, err := clients[i].Do("GET", "/api/session/"+ids[i]+"/status", nil, &s)
				if err != nil || code != 200 {
					fail(fmt.Errorf("status of %s: %d %v", ids[i], code, err))
					return
				}
				status.add(time.Since(r0))
				switch s.Status {
				case "ready":
					if s.ReadyAt.IsZero() {
						fail(fmt.Errorf("status of %s: ready with no ready_at", ids[i]))
						return
					}
					ready[i] = s.ReadyAt
					return
				case "failed":
					fail(fmt.Errorf("lab of %s failed: %s", ids[i], s.Error))
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
	for i := range n {
		if ready[i].IsZero() {
			b.Fatalf("herd of %d: lab of %s not ready after %s", n, ids[i], herdTimeout(n))
		}
	}
	var last time.Time
	r := herdRun{labs: make([]time.Duration, n)}
	timed.mu.Lock()
	defer timed.mu.Unlock()
	for i := range n {
		r.labs[i] = ready[i].Sub(started[i])
		if ready[i].After(last) {
			last = ready[i]
		}
		began, ended := timed.began[ids[i]], timed.ended[ids[i]]
		if began.IsZero() || ended.IsZero() {
			b.Fatalf("lab of %s was ready with no Provision timed", ids[i])
		}
		r.provision = append(r.provision, ended.Sub(began))
		r.queue = append(r.queue, began.Sub(started[i]))
		r.after = append(r.after, ready[i].Sub(ended))
	}
	r.all = last.Sub(t0)
	return r
}

// herdOf brings up n labs of ex with up, at most concurrency at once as
// the worker would, all asked for at the same moment; a lab's time runs
// from that moment to its up returning. The labs carry instance's label,
// as the runtime's own do, and rt removes them.
func herdOf(ctx context.Context, b *testing.B, rt lab.Runtime, ex *exam.Exam, instance string, n, concurrency, iter int, up func(context.Context, lab.Spec) error) herdRun {
	b.Helper()
	specs := make([]lab.Spec, n)
	ids := make([]string, n)
	for i := range n {
		spec, err := lab.NewSpec(ex, lab.Session{ID: store.NewSessionID(), Candidate: fmt.Sprintf("herd%d-%d@example.com", iter, i)})
		if err != nil {
			b.Fatal(err)
		}
		for j := range spec.Nodes {
			spec.Nodes[j].Labels = maps.Clone(spec.Nodes[j].Labels)
			spec.Nodes[j].Labels[lab.LabelInstance] = instance
		}
		specs[i], ids[i] = spec, spec.SessionID
	}
	defer destroyHerd(ctx, b, rt, ids)
	pctx, cancel := context.WithTimeout(ctx, herdTimeout(n))
	defer cancel()
	var (
		labs = make([]time.Duration, n)
		prov = make([]time.Duration, n)
		errs = make([]error, n)
		sem  = make(chan struct{}, concurrency)
		wg   sync.WaitGroup
	)
	t0 := time.Now()
	for i := range n {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			began := time.Now()
			errs[i] = up(pctx, specs[i])
			labs[i] = time.Since(t0)
			prov[i] = time.Since(began)
		})
	}
	wg.Wait()
	all := time.Since(t0)
	for i, err := range errs {
		if err != nil {
			b.Fatalf("herd, lab %d of %d: %v", i+1, n, err)
		}
	}
	return herdRun{all: all, labs: labs, provision: prov}
}

// destroyHerd removes the herd's labs, a few at a time.
func destroyHerd(ctx context.Context, b *testing.B, rt lab.Runtime, ids []string) {
	b.Helper()
	dctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var (
		wg   sync.WaitGroup
		sem  = make(chan struct{}, herdDestroyParallel)
		errs = make([]error, len(ids))
	)
	for i, id := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = rt.Destroy(dctx, id)
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Errorf("remove herd lab: %v", err)
		}
	}
}

// latencies collects durations from several goroutines.
type latencies struct {
	mu sync.Mutex
	ds []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.ds = append(l.ds, d)
	l.mu.Unlock()
}

func (l *latencies) all() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Duration(nil), l.ds...)
}

// timedRuntime is the platform's runtime with each lab's first Provision
// call and last return noted, by lab id (the session's, with no warm pool).
type timedRuntime struct {
	lab.Runtime
	mu           sync.Mutex
	began, ended map[string]time.Time
}

func (t *timedRuntime) Provision(ctx context.Context, spec lab.Spec) error {
	t.mu.Lock()
	if _, ok := t.began[spec.SessionID]; !ok {
		t.began[spec.SessionID] = time.Now()
	}
	t.mu.Unlock()
	err := t.Runtime.Provision(ctx, spec)
	t.mu.Lock()
	t.ended[spec.SessionID] = time.Now()
	t.mu.Unlock()
	return err
}

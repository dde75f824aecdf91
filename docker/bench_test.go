package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
)

// The benchmarks bring up the default exam's lab cold: the segmented
// eight-node lab it ships with, the same eight nodes flat on one network
// (as every lab was before segments), each through Runtime.Provision and
// with bare Engine API calls doing the same work. The runtime's own cost
// (convergence checks, waiting for running, idempotent wiring) is the
// difference between a pair; the price of segments is the difference
// between the pairs. Run with, for example:
//
//	go test ./docker -run '^$' -bench . -benchtime 5x

// flatDefault is the default exam's eight nodes on one flat network.
func flatDefault() *exam.Exam { return labtest.Flatten(exam.Default()) }

// benchLab renders a fresh default lab and makes sure it is removed even if
// the benchmark stops early.
func benchLab(b *testing.B, r *Runtime) lab.Spec { return benchLabOf(b, r, flatDefault()) }

// benchLabOf renders a fresh lab of ex, removed even if the benchmark stops
// early.
func benchLabOf(b *testing.B, r *Runtime, ex *exam.Exam) lab.Spec {
	b.Helper()
	spec, err := lab.NewSpec(ex, lab.Session{ID: newSessionID(b), Candidate: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	destroyOnCleanup(b, r, spec.SessionID)
	return spec
}

func benchDestroy(b *testing.B, r *Runtime, sessionID string) {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.Destroy(ctx, sessionID); err != nil {
		b.Fatal(err)
	}
}

func reportPerLab(b *testing.B) {
	b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/lab")
}

// BenchmarkProvisionLab provisions the default eight nodes on one flat
// network.
func BenchmarkProvisionLab(b *testing.B) {
	r := newTestRuntime(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		spec := benchLab(b, r)
		b.StartTimer()
		if err := r.Provision(ctx, spec); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		benchDestroy(b, r, spec.SessionID)
		b.StartTimer()
	}
	b.StopTimer()
	reportPerLab(b)
}

// BenchmarkRawEngineEightContainers is the floor: create the network (the
// engine picks the subnet), then create and start the eight containers with
// the same requests and the same parallelism as Provision, and nothing else.
func BenchmarkRawEngineEightContainers(b *testing.B) {
	r := newTestRuntime(b)
	c := r.client
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The grader's tools volume is made once per runtime, before any lab.
	tools, err := r.toolsVolume(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		spec := benchLab(b, r)
		b.StartTimer()

		body := networkCreate{
			Name: spec.Network, CheckDuplicate: true, Driver: "bridge", Internal: true,
			IPAM:    ipam{Driver: "default", Config: []ipamConfig{}},
			Options: labBridgeOptions, Labels: networkLabels(spec),
		}
		var created struct {
			ID string `json:"Id"`
		}
		if err := c.do(ctx, http.MethodPost, "/networks/create", nil, body, &created); err != nil {
			b.Fatal(err)
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
			sem  = make(chan struct{}, provisionParallel)
		)
		for _, n := range spec.Nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				id, err := c.createContainer(ctx, n.Container, containerSpec(created.ID, n, tools))
				if err == nil {
					err = c.startContainer(ctx, id)
				}
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		benchDestroy(b, r, spec.SessionID)
		b.StartTimer()
	}
	b.StopTimer()
	reportPerLab(b)
}

// BenchmarkProvisionSegmentedLab provisions the default exam's segmented
// lab: switch, eight nodes, wiring, files and setup.
func BenchmarkProvisionSegmentedLab(b *testing.B) {
	r := newTestRuntime(b)
	if !exam.Default().Topology.Segmented() {
		b.Fatal("the default exam has no networks of its own")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		spec := benchLabOf(b, r, exam.Default())
		b.StartTimer()
		if err := r.Provision(ctx, spec); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		benchDestroy(b, r, spec.SessionID)
		b.StartTimer()
	}
	b.StopTimer()
	reportPerLab(b)
}

// BenchmarkRawEngineSegmentedLab is the segmented lab's floor: the switch
// and the eight containers created and started with the same requests and
// parallelism as Provision, the same wiring script run once in the switch,
// and each node's names, files and setup applied, with none of the
// runtime's checks.
func BenchmarkRawEngineSegmentedLab(b *testing.B) {
	r := newTestRuntime(b)
	c := r.client
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	// The grader's tools volume is made once per runtime, before any lab.
	tools, err := r.toolsVolume(ctx)
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		spec := benchLabOf(b, r, exam.Default())
		b.StartTimer()

		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			errs []error
			sem  = make(chan struct{}, provisionParallel)
			ids  = map[string]string{}
		)
		fail := func(err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}
		start := func(name string, cc containerCreate) {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			id, err := c.createContainer(ctx, name, cc)
			if err == nil {
				err = c.startContainer(ctx, id)
			}
			if err != nil {
				fail(err)
				return
			}
			mu.Lock()
			ids[name] = id
			mu.Unlock()
		}
		wg.Add(len(spec.Nodes) + 1)
		go start(lab.SwitchName(spec.SessionID), switchSpec(r.switchImage, networkLabels(spec)))
		for _, n := range spec.Nodes {
			go start(n.Container, containerSpec(networkNone, n, tools))
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}
		conts := map[string]container{}
		pids := map[string]int{}
		for _, n := range append(spec.Nodes, lab.Node{Name: "switch", Container: lab.SwitchName(spec.SessionID)}) {
			ct, err := c.inspectContainer(ctx, ids[n.Container])
			if err != nil {
				b.Fatal(err)
			}
			conts[n.Name] = ct
			pids[n.Name] = ct.State.Pid
		}
		if code, err := r.execIn(ctx, "", conts["switch"], "switch", []string{"sh", "-c", lab.SwitchScript(spec, pids)}, nil, io.Discard, io.Discard); err != nil || code != 0 {
			b.Fatalf("wire: exit %d, %v", code, err)
		}
		for _, n := range spec.Nodes {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				ct := conts[n.Name]
				if code, err := r.execIn(ctx, "", ct, n.Name, []string{"sh", "-c", lab.NodeScript(spec)}, nil, io.Discard, io.Discard); err != nil || code != 0 {
					fail(fmt.Errorf("names in %s: exit %d, %v", n.Name, code, err))
					return
				}
				if !n.Prepared() {
					return
				}
				if len(n.Files) > 0 {
					if err := r.putFiles(ctx, ct.ID, n.Files); err != nil {
						fail(err)
						return
					}
				}
				if code, err := r.execIn(ctx, "", ct, n.Name, []string{"sh", "-c", lab.SetupScript, "setup", n.Setup}, nil, io.Discard, io.Discard); err != nil || code != 0 {
					fail(fmt.Errorf("setup in %s: exit %d, %v", n.Name, code, err))
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			b.Fatal(err)
		}

		b.StopTimer()
		benchDestroy(b, r, spec.SessionID)
		b.StartTimer()
	}
	b.StopTimer()
	reportPerLab(b)
}

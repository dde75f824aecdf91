package docker

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// The two benchmarks bring up the default eight-node lab, one through
// Runtime.Provision and one with bare Engine API calls, so the runtime's
// own cost (subnet allocation, convergence checks, waiting for running) is
// the difference between them. Run with, for example:
//
//	go test ./docker -run '^$' -bench . -benchtime 5x

// benchLab renders a fresh default lab and makes sure it is removed even if
// the benchmark stops early.
func benchLab(b *testing.B, r *Runtime) lab.Spec {
	b.Helper()
	spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: newSessionID(b), Candidate: "bench"})
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
				id, err := c.createContainer(ctx, n.Container, containerSpec(created.ID, n))
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

package nomad_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// provisioner is the part of a runtime a cold start exercises.
type provisioner interface {
	Provision(ctx context.Context, spec lab.Spec) error
	Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error)
	Destroy(ctx context.Context, sessionID string) error
}

// BenchmarkColdStart times a lab from nothing to all eight nodes running.
// The baseline is the one-host Docker runtime on the same engine, in the
// same process; beside it the Nomad runtime against the fake API (whose
// client drives that same engine, so the difference is the Nomad
// protocol: register, evaluation, blocking queries) and, when NOMAD_ADDR
// is set, against a real agent. Teardown is outside the timer.
func BenchmarkColdStart(b *testing.B) {
	b.Run("docker-baseline", func(b *testing.B) {
		coldStart(b, requireDocker(b))
	})
	b.Run("nomad-fake", func(b *testing.B) {
		coldStart(b, newFakeEnv(b).rt)
	})
	b.Run("nomad-agent", func(b *testing.B) {
		if os.Getenv("NOMAD_ADDR") == "" {
			b.Skip(skipWithoutNomad)
		}
		rt, _ := realRuntime(b)
		coldStart(b, rt)
	})
}

func coldStart(b *testing.B, rt provisioner) {
	ctx := context.Background()
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: newSessionID(b), Candidate: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
		start := time.Now()
		b.StartTimer()
		err = rt.Provision(pctx, spec)
		b.StopTimer()
		total += time.Since(start)
		if err == nil {
			var nodes []lab.NodeStatus
			if nodes, err = rt.Status(pctx, spec); err == nil && !lab.AllRunning(nodes) {
				b.Errorf("provision returned with nodes not running: %+v", nodes)
			}
		}
		cancel()
		dctx, dcancel := context.WithTimeout(ctx, provisionTimeout)
		derr := rt.Destroy(dctx, spec.SessionID)
		dcancel()
		if err != nil {
			b.Fatalf("provision: %v", err)
		}
		if derr != nil {
			b.Fatalf("destroy: %v", derr)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "s/lab")
}

package docker

import (
	"context"
	"io"
	"log/slog"
	"testing"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab/redistest"
)

// bareGate lets every exec and freeze through at once: the baseline of
// BenchmarkExecGate, never a runtime's gate.
type bareGate struct{}

func (bareGate) BeginExec(context.Context, string) (func(bool), error) { return func(bool) {}, nil }
func (bareGate) Freeze(context.Context, string) (func(), error)        { return func() {}, nil }

// BenchmarkExecGate runs a short command (`true`, as a grading check or a
// hangup does) in a node through the runtime with no gate (the baseline),
// with the gate of one process, and with the platform's Redis gate; the
// difference is what keeping exec starts out of captures costs each exec.
func BenchmarkExecGate(b *testing.B) {
	r := newTestRuntime(b)
	spec := segmentedLab(b, r, twoNodes)
	provision(b, r, spec)
	// The last exec's note may end after the store has closed: quiet.
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	st, err := store.New(store.Options{Dir: b.TempDir(), Redis: redistest.Client(b), Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	gates := []struct {
		name string
		gate lab.ExecGate
	}{
		{"bare", bareGate{}},
		{"local", lab.NewLocalGate(0)},
		{"redis", st},
	}
	for _, g := range gates {
		b.Run(g.name, func(b *testing.B) {
			r.gate = g.gate
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), execTimeout)
				out, code, err := lab.Output(ctx, r, spec.SessionID, "alpha", "true")
				cancel()
				if err != nil || code != 0 {
					b.Fatalf("exec: exit %d %v %q", code, err, out)
				}
			}
		})
	}
}

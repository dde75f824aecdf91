package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab/redistest"
)

// TestExecGate runs the gate's contract on a real Redis, through two
// stores as a relay's and a worker's would be: exec starts are noted by
// one and freezes made by the other, so what one notes the other must
// see.
func TestExecGate(t *testing.T) {
	labtest.ExecGateSuite(t, func(t *testing.T, lapse time.Duration) lab.ExecGate {
		rdb := redistest.Client(t)
		var two [2]*store.Store
		for i := range two {
			s, err := store.New(store.Options{Dir: t.TempDir(), Redis: rdb, ExecStartTTL: lapse})
			if err != nil {
				t.Fatal(err)
			}
			two[i] = s
		}
		return splitGate{relay: two[0], worker: two[1]}
	})
}

// splitGate notes exec starts through one store and freezes through the
// other.
type splitGate struct{ relay, worker *store.Store }

func (g splitGate) BeginExec(ctx context.Context, id string) (func(bool), error) {
	return g.relay.BeginExec(ctx, id)
}

func (g splitGate) Freeze(ctx context.Context, id string) (func(), error) {
	return g.worker.Freeze(ctx, id)
}

func TestExecGateRefusesABadLabID(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	for _, id := range []string{"", "../../etc", "UPPERCASE123", "short"} {
		if _, err := s.BeginExec(ctx, id); err == nil {
			t.Errorf("BeginExec(%q) accepted", id)
		}
		if _, err := s.Freeze(ctx, id); err == nil {
			t.Errorf("Freeze(%q) accepted", id)
		}
	}
}

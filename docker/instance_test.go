package docker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// TestLabsSeesOnlyItsInstance provisions one small lab per deployment
// instance on the same engine: each runtime's Labs (what the reaper acts
// on) lists its own lab and never the other's.
func TestLabsSeesOnlyItsInstance(t *testing.T) {
	base := newTestRuntime(t)
	ex := exam.Default()
	ex.Topology.Nodes = ex.Topology.Nodes[:1] // tokyo alone keeps this quick
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	rts := map[string]*Runtime{}
	labs := map[string]string{}
	for _, inst := range []string{"inst-a-" + newSessionID(t)[:6], "inst-b-" + newSessionID(t)[:6]} {
		r, err := New(Options{Instance: inst})
		if err != nil {
			t.Fatal(err)
		}
		spec, err := lab.NewSpec(ex, lab.Session{ID: newSessionID(t)})
		if err != nil {
			t.Fatal(err)
		}
		destroyOnCleanup(t, base, spec.SessionID)
		if err := r.Provision(ctx, spec); err != nil {
			t.Fatalf("provision for %s: %v", inst, err)
		}
		rts[inst], labs[inst] = r, spec.SessionID
	}
	for inst, r := range rts {
		got, err := r.Labs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for other, id := range labs {
			if want := other == inst; slices.Contains(got, id) != want {
				t.Errorf("instance %s: Labs lists %s's lab = %v, want %v (got %v)", inst, other, !want, want, got)
			}
		}
	}
	// Without an instance a runtime sees every managed lab, both included.
	all, err := base.Labs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range labs {
		if !slices.Contains(all, id) {
			t.Errorf("instance-less Labs misses %s", id)
		}
	}
}

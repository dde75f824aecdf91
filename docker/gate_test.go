package docker

import (
	"context"
	"testing"
	"time"

	"github.com/examlab/examlab/lab/labtest"
)

// TestCaptureBesideExecStarts captures a lab again and again while execs
// start into its nodes, as a relay hanging up a terminal or a late
// grading check would (labtest.CaptureBesideExecStarts). Without the
// runtime's gate the first capture hangs in its unpause.
func TestCaptureBesideExecStarts(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	var ids, nodes []string
	for _, n := range spec.Nodes {
		c, err := r.client.inspectContainer(context.Background(), n.Container)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID)
		nodes = append(nodes, n.Name)
	}
	labtest.CaptureBesideExecStarts(t, r, spec.SessionID, nodes, labtest.CaptureRace{
		Rounds: 12, Execers: 4, CaptureBudget: 90 * time.Second, ExecBudget: execTimeout,
		Rescue: func() {
			if missed := labtest.ThawByHand(ids); len(missed) > 0 {
				t.Logf("could not thaw %v by hand: the engine may not answer for them", missed)
			}
		},
	})
	assertRunning(t, r, spec)
}

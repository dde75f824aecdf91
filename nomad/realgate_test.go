package nomad_test

import (
	"testing"
	"time"

	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/testlab"
)

// TestRealNomadCaptureBesideExecStarts is the Docker runtime's race on a
// real agent (labtest.CaptureBesideExecStarts): execs start into the
// nodes through alloc exec while the lab is captured again and again,
// frozen on its client by the lab's agent. Without the runtime's gate the
// first capture hangs for its whole budget.
func TestRealNomadCaptureBesideExecStarts(t *testing.T) {
	rt, _ := realRuntime(t)
	eng := testlab.NewEngine(t)
	spec := segmentedLab(t, rt, nil)
	nodes := provisionLab(t, rt, spec)
	var ids []string
	for _, c := range eng.Containers(t, spec.SessionID) {
		ids = append(ids, c.ID)
	}
	labtest.CaptureBesideExecStarts(t, rt, spec.SessionID, nodes, labtest.CaptureRace{
		Rounds: 6, Execers: 4, CaptureBudget: 3 * time.Minute, ExecBudget: time.Minute,
		// This host is the lab's client.
		Rescue: func() { labtest.ThawByHand(ids) },
	})
}

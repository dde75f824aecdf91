package docker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
)

// Named bounds of the race: a capture or an exec still under way after
// them has hung in a frozen cgroup, not gone slowly.
const (
	raceRounds        = 12
	raceExecers       = 4
	raceCaptureBudget = 90 * time.Second
)

// TestCaptureBesideExecStarts captures a lab again and again while execs
// start into its nodes without a pause between them, as a relay hanging
// up a terminal or a late grading check would. An exec whose start
// overlaps the pause stops in the frozen cgroup, and the engine then
// answers neither unpause nor inspect for that node: the gate
// (lab.ExecGate) keeps the two apart. Every capture must end, every exec
// must run, and the nodes must run afterwards.
//
// Should the engine hang all the same, the test thaws the nodes through
// the freezer cgroup (as root, cgroup v1) so that the tests after it have
// an engine that answers, and fails.
func TestCaptureBesideExecStarts(t *testing.T) {
	r := newTestRuntime(t)
	spec := segmentedLab(t, r, twoNodes)
	provision(t, r, spec)
	var ids []string
	var nodes []string
	for _, n := range spec.Nodes {
		c, err := r.client.inspectContainer(context.Background(), n.Container)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, c.ID)
		nodes = append(nodes, n.Name)
	}

	ctx, stop := context.WithCancel(context.Background())
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		ran       int
		beside    int // execs begun while a capture ran
		failed    []string
		stopped   = make(chan struct{})
		capturing atomic.Bool
	)
	for i := range raceExecers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := nodes[i%len(nodes)]
			for ctx.Err() == nil {
				during := capturing.Load()
				ectx, cancel := context.WithTimeout(context.Background(), execTimeout)
				out, code, err := lab.Output(ectx, r, spec.SessionID, node, "true")
				cancel()
				mu.Lock()
				if err != nil || code != 0 {
					failed = append(failed, fmt.Sprintf("%s: exit %d %v %q", node, code, err, out))
				} else {
					ran++
					if during {
						beside++
					}
				}
				mu.Unlock()
			}
		}()
	}
	go func() { wg.Wait(); close(stopped) }()

	for round := range raceRounds {
		done := make(chan error, 1)
		go func() {
			cctx, cancel := context.WithTimeout(context.Background(), raceCaptureBudget)
			defer cancel()
			var s memorySaver
			capturing.Store(true)
			_, err := r.Capture(cctx, spec.SessionID, nodes, lab.SnapshotChanges, s.save)
			capturing.Store(false)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				stop()
				thawByHand(t, ids)
				t.Fatalf("capture %d: %v", round, err)
			}
		case <-time.After(raceCaptureBudget + 10*time.Second):
			stop()
			thawByHand(t, ids)
			t.Fatalf("capture %d has not ended in %s: an exec started into a paused node", round, raceCaptureBudget)
		}
	}
	stop()
	select {
	case <-stopped:
	case <-time.After(execTimeout + 10*time.Second):
		thawByHand(t, ids)
		t.Fatal("the execs have not ended after the captures: one hangs in a frozen node")
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d captures; %d execs, %d of them begun while a capture ran", raceRounds, ran, beside)
	if len(failed) > 0 {
		t.Errorf("%d execs failed beside the captures, first: %s", len(failed), failed[0])
	}
	if beside < raceRounds {
		t.Errorf("only %d execs began while %d captures ran: the race was not run", beside, raceRounds)
	}
	assertRunning(t, r, spec)
}

// thawByHand writes THAWED into each container's freezer cgroup (cgroup
// v1, under the engine's cgroupfs or systemd driver), which frees a
// process stopped mid-start and with it the engine.
func thawByHand(t testing.TB, ids []string) {
	t.Helper()
	for _, id := range ids {
		thawed := false
		for _, dir := range []string{"/sys/fs/cgroup/freezer/docker/" + id, "/sys/fs/cgroup/freezer/system.slice/docker-" + id + ".scope"} {
			if os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644) == nil {
				thawed = true
			}
		}
		if !thawed {
			t.Logf("could not thaw %s by hand: the engine may not answer for it", id[:12])
		}
	}
}

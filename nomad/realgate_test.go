package nomad_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/testlab"
)

// Named bounds of the race on a real agent: a capture or an exec still
// under way after them has hung in a frozen cgroup, not gone slowly.
const (
	realRaceRounds  = 6
	realRaceExecers = 4
	realRaceCapture = 3 * time.Minute
	realRaceExec    = time.Minute
)

// TestRealNomadCaptureBesideExecStarts is the Docker runtime's race on a
// real agent: execs start into the nodes through alloc exec, without a
// pause between them, while the lab is captured again and again (frozen
// on its client by the lab's agent). An exec whose start meets the
// freezer stops mid-start and the client's engine then no longer answers
// for that container; the runtime's gate (lab.ExecGate) keeps the two
// apart. Every capture must end, every exec must run.
func TestRealNomadCaptureBesideExecStarts(t *testing.T) {
	rt, _ := realRuntime(t)
	eng := testlab.NewEngine(t)
	spec := segmentedLab(t, rt, nil)
	id := spec.SessionID
	pctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := rt.Provision(pctx, spec); err != nil {
		t.Fatal(err)
	}
	nodes := make([]string, len(spec.Nodes))
	for i, n := range spec.Nodes {
		nodes[i] = n.Name
	}
	var ids []string
	for _, c := range eng.Containers(t, id) {
		ids = append(ids, c.ID)
	}

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		ran       int
		beside    int
		failed    []string
		capturing atomic.Bool
		stopped   = make(chan struct{})
	)
	for i := range realRaceExecers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := nodes[i%len(nodes)]
			for ctx.Err() == nil {
				during := capturing.Load()
				ectx, cancel := context.WithTimeout(context.Background(), realRaceExec)
				out, code, err := lab.Output(ectx, rt, id, node, "true")
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

	for round := range realRaceRounds {
		done := make(chan error, 1)
		go func() {
			cctx, cancel := context.WithTimeout(context.Background(), realRaceCapture)
			defer cancel()
			capturing.Store(true)
			_, err := rt.Capture(cctx, id, nodes, lab.SnapshotChanges, func(_ string, write func(io.Writer) error) error {
				return write(io.Discard)
			})
			capturing.Store(false)
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				stop()
				thawNodesByHand(t, ids)
				t.Fatalf("capture %d: %v", round, err)
			}
		case <-time.After(realRaceCapture + 10*time.Second):
			stop()
			thawNodesByHand(t, ids)
			t.Fatalf("capture %d has not ended in %s: an exec started into a frozen node", round, realRaceCapture)
		}
	}
	stop()
	select {
	case <-stopped:
	case <-time.After(realRaceExec + 10*time.Second):
		thawNodesByHand(t, ids)
		t.Fatal("the execs have not ended after the captures: one hangs in a frozen node")
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d captures of %d nodes; %d execs, %d of them begun while a capture ran", realRaceRounds, len(nodes), ran, beside)
	if len(failed) > 0 {
		t.Errorf("%d execs failed beside the captures, first: %s", len(failed), failed[0])
	}
	if beside < realRaceRounds {
		t.Errorf("only %d execs began while %d captures ran: the race was not run", beside, realRaceRounds)
	}
}

// thawNodesByHand writes THAWED into each container's freezer cgroup
// (cgroup v1; this host is the client), so that the engine answers the
// tests after a failure.
func thawNodesByHand(t testing.TB, ids []string) {
	t.Helper()
	for _, id := range ids {
		for _, dir := range []string{"/sys/fs/cgroup/freezer/docker/" + id, "/sys/fs/cgroup/freezer/system.slice/docker-" + id + ".scope"} {
			_ = os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644)
		}
	}
}

package labtest

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
)

// CaptureRace says how CaptureBesideExecStarts runs.
type CaptureRace struct {
	// Rounds is how many captures run one after the other; Execers how
	// many goroutines start execs meanwhile, each into one node in turn.
	Rounds, Execers int
	// CaptureBudget and ExecBudget bound one capture and one exec: one
	// still under way after its budget has hung in a frozen cgroup, not
	// gone slowly.
	CaptureBudget, ExecBudget time.Duration
	// Rescue frees an engine that hangs all the same (ThawByHand), so
	// that the tests after a failure have an engine that answers.
	Rescue func()
}

// captureGap is the moment CaptureBesideExecStarts leaves between two
// captures.
const captureGap = 300 * time.Millisecond

// CaptureBesideExecStarts captures lab id's nodes again and again while
// execs (`true`, as a hangup or a grading check runs) start into them
// without a pause between them. Between two captures it leaves a moment
// (captureGap), as there is between any two captures of a lab, in which the
// execs held off by the last one run, so that each capture meets new
// starts: back to back, the next freeze can win every time and hold them
// off to the end. A runtime that freezes the lab for its
// capture must keep the two apart (lab.ExecGate): an exec whose start
// meets the freezer stops mid-start, and the engine then answers neither
// unpause nor inspect for that node. Every capture must end and every
// exec must run, and enough execs must have begun during captures for the
// race to count.
func CaptureBesideExecStarts(t *testing.T, rt lab.Runtime, id string, nodes []string, o CaptureRace) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		ran       int
		beside    int // execs begun while a capture ran
		failed    []string
		capturing atomic.Bool
		stopped   = make(chan struct{})
	)
	for i := range o.Execers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			node := nodes[i%len(nodes)]
			for ctx.Err() == nil {
				during := capturing.Load()
				ectx, cancel := context.WithTimeout(context.Background(), o.ExecBudget)
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

	for round := range o.Rounds {
		if round > 0 {
			time.Sleep(captureGap)
		}
		done := make(chan error, 1)
		go func() {
			cctx, cancel := context.WithTimeout(context.Background(), o.CaptureBudget)
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
				o.Rescue()
				t.Fatalf("capture %d: %v", round, err)
			}
		case <-time.After(o.CaptureBudget + 10*time.Second):
			stop()
			o.Rescue()
			t.Fatalf("capture %d has not ended in %s: an exec started into a frozen node", round, o.CaptureBudget)
		}
	}
	stop()
	select {
	case <-stopped:
	case <-time.After(o.ExecBudget + 10*time.Second):
		o.Rescue()
		t.Fatal("the execs have not ended after the captures: one hangs in a frozen node")
	}
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d captures of %d nodes; %d execs, %d of them begun while a capture ran", o.Rounds, len(nodes), ran, beside)
	if len(failed) > 0 {
		t.Errorf("%d execs failed beside the captures, first: %s", len(failed), failed[0])
	}
	if beside < o.Rounds {
		t.Errorf("only %d execs began while %d captures ran: the race was not run", beside, o.Rounds)
	}
}

// ThawByHand writes THAWED into the freezer cgroup (cgroup v1, under the
// Docker engine's cgroupfs or systemd driver, on this host) of each
// container id, which frees a process stopped mid-start and with it the
// engine. It reports the ids it could not thaw.
func ThawByHand(ids []string) []string {
	var missed []string
	for _, id := range ids {
		thawed := false
		for _, dir := range []string{"/sys/fs/cgroup/freezer/docker/" + id, "/sys/fs/cgroup/freezer/system.slice/docker-" + id + ".scope"} {
			if os.WriteFile(filepath.Join(dir, "freezer.state"), []byte("THAWED"), 0o644) == nil {
				thawed = true
			}
		}
		if !thawed {
			missed = append(missed, id)
		}
	}
	return missed
}

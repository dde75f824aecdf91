package workers_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/workers"
)

// halfway provisions a lab's first nodes, then holds the provision until
// the test lets it bring up the rest: a provision caught in the middle.
type halfway struct {
	*labtest.Flaky
	first   int
	reached chan struct{}
	resume  chan struct{}
}

func (g *halfway) Provision(ctx context.Context, spec lab.Spec) error {
	part := spec
	part.Nodes = spec.Nodes[:g.first]
	if err := g.Flaky.Provision(ctx, part); err != nil {
		return err
	}
	close(g.reached)
	select {
	case <-g.resume:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Flaky.Provision(ctx, spec)
}

// countStates counts the nodes in each state.
func countStates(nodes []lab.NodeStatus) map[lab.State]int {
	out := map[lab.State]int{}
	for _, n := range nodes {
		out[n.State]++
	}
	return out
}

// TestProvisionPushesNodeProgress: while a provision runs, the worker
// leaves the lab's node states in the store node by node (the API shows
// nothing else); once it is over the record has them and the progress is
// gone.
func TestProvisionPushesNodeProgress(t *testing.T) {
	e := newEnv(t)
	rt := &halfway{Flaky: e.flaky, first: 3, reached: make(chan struct{}), resume: make(chan struct{})}
	ex := exam.Default()
	h, err := workers.New(workers.Options{
		Store: e.store, Runtime: rt, Enqueuer: e.enq, RuntimeName: "memory", Observer: e.obs, Now: e.clock,
		Exams:         func(id string) (*exam.Exam, bool) { return ex, id == ex.ID },
		ProgressEvery: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	id := e.started(t, "progress@example.com")
	done := make(chan error, 1)
	go func() { done <- h.Provision(ctx, provisionTask(t, id)) }()

	select {
	case <-rt.reached:
	case err := <-done:
		t.Fatalf("provision ended before it was halfway: %v", err)
	case <-time.After(waitTimeout):
		t.Fatalf("provision not halfway after %s", waitTimeout)
	}
	total := len(ex.Topology.Nodes)
	want := map[lab.State]int{lab.StateRunning: rt.first, lab.StatePending: total - rt.first}
	var seen map[lab.State]int
	for deadline := time.Now().Add(waitTimeout); ; {
		p, err := e.store.ReadProgress(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if p != nil {
			seen = countStates(p.Nodes)
			if seen[lab.StateRunning] == want[lab.StateRunning] && seen[lab.StatePending] == want[lab.StatePending] {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("progress halfway is %v after %s, want %v", seen, waitTimeout, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s := e.get(t, id); s.Status != stateProvisioning || len(s.Nodes) != 0 {
		t.Fatalf("halfway the record is %s with %d nodes, want provisioning with none (progress is not the record)", s.Status, len(s.Nodes))
	}

	close(rt.resume)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s := e.get(t, id)
	if s.Status != stateReady || !lab.AllRunning(s.Nodes) || len(s.Nodes) != total {
		t.Fatalf("after the provision the record is %s with nodes %v, want ready with %d running", s.Status, countStates(s.Nodes), total)
	}
	if p, err := e.store.ReadProgress(ctx, id); err != nil || p != nil {
		t.Fatalf("progress after the provision: %+v, %v; want none", p, err)
	}
}

// TestSweepKeepsRecordNodesInStep: a node of a ready lab that stops, and
// comes back, shows in the record after the next lost-lab sweep, the
// clock untouched; a sweep that finds nothing new writes nothing.
func TestSweepKeepsRecordNodesInStep(t *testing.T) {
	e := newEnv(t)
	id := e.readyLab(t, "crash@example.com")
	if err := e.mem.Crash(id, "tokyo"); err != nil {
		t.Fatal(err)
	}
	if ch := e.sweep(t); len(ch) != 0 {
		t.Fatalf("sweep changed the clock of a lab with one node down: %+v", ch)
	}
	s := e.get(t, id)
	for _, n := range s.Nodes {
		want := lab.StateRunning
		if n.Name == "tokyo" {
			want = lab.StateExited
		}
		if n.State != want {
			t.Errorf("after the crash node %s is %s in the record, want %s", n.Name, n.State, want)
		}
	}
	if s.Paused() {
		t.Errorf("one crashed node paused the clock: %+v", s.Trouble)
	}

	version := s.Version
	e.sweep(t)
	if v := e.get(t, id).Version; v != version {
		t.Errorf("a sweep that found nothing new wrote the record (version %d → %d)", version, v)
	}

	if err := e.mem.Provision(context.Background(), spec(t, id)); err != nil {
		t.Fatal(err)
	}
	e.sweep(t)
	if s := e.get(t, id); !lab.AllRunning(s.Nodes) {
		t.Errorf("after the node came back the record has %v, want all running", countStates(s.Nodes))
	}
}

// TestResetNodeLeavesNoProgress: a reset ends with the record's nodes,
// fresh, and no progress that could stand in for them.
func TestResetNodeLeavesNoProgress(t *testing.T) {
	e := newEnv(t)
	id := e.readyLab(t, "reset@example.com")
	before := e.get(t, id)
	task, err := scheduler.NewResetNodeTask(id, "osaka", "p1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.h.ResetNode(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	after := e.get(t, id)
	if after.Version == before.Version || !lab.AllRunning(after.Nodes) {
		t.Fatalf("record after the reset: version %d (was %d), nodes %v; want rewritten, all running", after.Version, before.Version, countStates(after.Nodes))
	}
	if p, err := e.store.ReadProgress(context.Background(), id); err != nil || p != nil {
		t.Fatalf("progress after the reset: %+v, %v; want none", p, err)
	}
}

// TestSweepKeepsReviewNodesInStep: a ready review lab's record follows
// its nodes as a session's does, for the panel reads only the record.
// (ReviewStart itself, its progress watch on, runs against real Docker in
// the api package's review tests.)
func TestSweepKeepsReviewNodesInStep(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, session.ByCandidate)
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Cleanup(ctx, cleanupTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	rv, _, err := e.store.StartReview(ctx, e.get(t, id), "admin", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// The review lab comes up as ReviewStart brings it, but for the
	// archive's changes, which the in-memory runtime cannot apply.
	spec, err := workers.ReviewSpec(exam.Default(), rv, e.get(t, id))
	if err != nil {
		t.Fatal(err)
	}
	if err := e.mem.Provision(ctx, spec); err != nil {
		t.Fatal(err)
	}
	nodes, err := e.mem.Status(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.UpdateReview(ctx, rv.ID, func(r *store.Review) error {
		r.Status, r.Nodes = store.ReviewReady, nodes
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.mem.Crash(rv.ID, "osaka"); err != nil {
		t.Fatal(err)
	}
	e.sweep(t)
	got, err := e.store.Review(ctx, rv.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range got.Nodes {
		want := lab.StateRunning
		if n.Name == "osaka" {
			want = lab.StateExited
		}
		if n.State != want {
			t.Errorf("review lab node %s is %s in the record after the sweep, want %s", n.Name, n.State, want)
		}
	}
	if len(got.Nodes) == 0 {
		t.Error("the review lab's record has no nodes")
	}
	if p, err := e.store.ReadProgress(ctx, rv.ID); err != nil || p != nil {
		t.Errorf("progress of the ready review lab: %+v, %v; want none", p, err)
	}
}

// allocHealth is the in-memory runtime with a lab health report as the
// Nomad runtime gives one: a single state for the whole lab, running
// while every node runs, else exited.
type allocHealth struct {
	*labtest.Flaky
	mem *labtest.Memory
}

func (a *allocHealth) LabHealth(ctx context.Context, ids []string) (map[string]lab.NodeStatus, error) {
	out := map[string]lab.NodeStatus{}
	for _, id := range ids {
		s, err := lab.NewSpec(exam.Default(), lab.Session{ID: id})
		if err != nil {
			return nil, err
		}
		nodes, err := a.mem.Status(ctx, s)
		if err != nil {
			return nil, err
		}
		st := lab.NodeStatus{State: lab.StateRunning}
		if !lab.AllRunning(nodes) {
			st.State = lab.StateExited
		}
		out[id] = st
	}
	return out, nil
}

// TestHealthSweepReadsNodesWhenTheyDisagree: a sweep that reads only the
// labs' health reads a lab's nodes when its health and its record
// disagree, and writes them into the record.
func TestHealthSweepReadsNodesWhenTheyDisagree(t *testing.T) {
	e := newEnv(t)
	ex := exam.Default()
	h, err := workers.New(workers.Options{
		Store: e.store, Runtime: &allocHealth{Flaky: e.flaky, mem: e.mem}, Enqueuer: e.enq, RuntimeName: "memory", Observer: e.obs, Now: e.clock,
		Exams: func(id string) (*exam.Exam, bool) { return ex, id == ex.ID },
	})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	id := e.readyLab(t, "health@example.com")
	statusCalls := e.flaky.Calls("Status")
	e.sweep(t)
	if n := e.flaky.Calls("Status") - statusCalls; n != 0 {
		t.Errorf("a sweep of a healthy lab whose record agrees read its nodes %d times; want none", n)
	}
	if err := e.mem.Crash(id, "kyoto"); err != nil {
		t.Fatal(err)
	}
	e.sweep(t)
	for _, n := range e.get(t, id).Nodes {
		if want := map[bool]lab.State{true: lab.StateExited, false: lab.StateRunning}[n.Name == "kyoto"]; n.State != want {
			t.Errorf("node %s is %s in the record, want %s", n.Name, n.State, want)
		}
	}
}

// TestSweepLeavesNodesWrittenMeanwhile: a record written while the sweep
// reads the runtime (a node reset's fresh nodes) is newer than what the
// sweep read, and the sweep does not write over it.
func TestSweepLeavesNodesWrittenMeanwhile(t *testing.T) {
	e := newEnv(t)
	id := e.readyLab(t, "meanwhile@example.com")
	fresh := e.get(t, id).Nodes
	if err := e.mem.Crash(id, "tokyo"); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	e.flaky.FailWhen(func(c labtest.Call) error {
		if c.Method != "Status" {
			return nil
		}
		once.Do(func() {
			// The runtime is read after this write: what it says of
			// tokyo (exited) is older news than the record.
			e.advance(time.Second)
			if _, err := e.store.Update(context.Background(), id, func(x *session.Session) error { x.Nodes = fresh; return nil }); err != nil {
				t.Error(err)
			}
		})
		return nil
	})
	e.sweep(t)
	if got := e.get(t, id).Nodes; !lab.AllRunning(got) {
		t.Errorf("the sweep wrote over nodes recorded while it read the runtime: %v", countStates(got))
	}
}

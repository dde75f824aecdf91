package workers_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
	"github.com/examlab/examlab/workers"
)

// fakeRuntime runs no lab: a provision fails when the session is in fail,
// everything else succeeds at once.
type fakeRuntime struct {
	mu        sync.Mutex
	fail      map[string]bool
	destroyed []string
}

func (r *fakeRuntime) Provision(_ context.Context, spec lab.Spec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail[spec.SessionID] {
		return fmt.Errorf("image missing: %w", asynq.SkipRetry)
	}
	return nil
}

func (r *fakeRuntime) Status(_ context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	out := make([]lab.NodeStatus, len(spec.Nodes))
	for i, n := range spec.Nodes {
		out[i] = lab.NodeStatus{Name: n.Name, Container: n.Container, State: lab.StateRunning}
	}
	return out, nil
}

func (r *fakeRuntime) Capture(context.Context, string, []string, lab.SnapshotMode, lab.SaveFunc) ([]lab.NodeCapture, error) {
	return nil, nil
}
func (r *fakeRuntime) Logs(context.Context, string, string, io.Writer) error { return nil }
func (r *fakeRuntime) ResetNode(context.Context, lab.Spec, string) error     { return nil }
func (r *fakeRuntime) Labs(context.Context) ([]string, error)                { return nil, nil }
func (r *fakeRuntime) Ping(context.Context) error                            { return nil }
func (r *fakeRuntime) Exec(context.Context, string, string, lab.ExecRequest) (lab.Process, error) {
	return nil, lab.ErrNotFound
}

func (r *fakeRuntime) Destroy(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.destroyed = append(r.destroyed, id)
	return nil
}

// tasks records the provisions enqueued, once per session as the task id
// would.
type tasks struct {
	mu         sync.Mutex
	provisions []string
}

func (q *tasks) Provision(_ context.Context, id string, _ int) (bool, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if slices.Contains(q.provisions, id) {
		return false, nil
	}
	q.provisions = append(q.provisions, id)
	return true, nil
}
func (q *tasks) Archive(context.Context, string, string) (bool, error) { return true, nil }
func (q *tasks) ArchiveRound(context.Context, string, string, int) (bool, error) {
	return true, nil
}
func (q *tasks) CleanupRound(context.Context, string, string, int) (bool, error) {
	return true, nil
}

func (q *tasks) got() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
	return slices.Clone(q.provisions)
}

func task(t *testing.T, f func(string) (*asynq.Task, error), id string) *asynq.Task {
	t.Helper()
	tk, err := f(id)
	if err != nil {
		t.Fatal(err)
	}
	return tk
}

// TestSlotsComeBack: a sitting of capacity 1 with three candidates. A
// provision that fails for good gives its slot to the second; that lab's
// cleanup gives it to the third; a slot leaked by a cleanup killed before
// its release is found by the admission sweep.
func TestSlotsComeBack(t *testing.T) {
	ctx := context.Background()
	st, err := store.New(store.Options{Dir: t.TempDir(), Redis: redistest.Client(t)})
	if err != nil {
		t.Fatal(err)
	}
	ex := exam.Default()
	rt := &fakeRuntime{fail: map[string]bool{}}
	q := &tasks{}
	h, err := workers.New(workers.Options{Store: st, Runtime: rt, Enqueuer: q,
		Exams: func(id string) (*exam.Exam, bool) { return ex, id == ex.ID }})
	if err != nil {
		t.Fatal(err)
	}
	storetest.OpenSitting(t, st, "cap1", ex.ID, 1)
	var ids []string
	for i := range 3 {
		sess, _ := storetest.SignInTo(t, st, "cap1", fmt.Sprintf("w%d@example.com", i), ex.ID, time.Hour, "docker")
		if _, err := scheduler.Start(ctx, st, q, sess.ID, time.Now()); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, sess.ID)
	}
	status := func(id string) session.State {
		t.Helper()
		s, err := st.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return s.Status
	}

	// The first lab cannot be made: its slot goes to the second.
	rt.fail[ids[0]] = true
	if err := h.Provision(ctx, task(t, scheduler.NewProvisionTask, ids[0])); !errors.Is(err, asynq.SkipRetry) {
		t.Fatalf("failed provision: %v", err)
	}
	if status(ids[0]) != session.StateFailed || status(ids[1]) != session.StateProvisioning || !slices.Equal(q.got(), ids[:2]) {
		t.Fatalf("after a failed provision: %s %s, provisions %v", status(ids[0]), status(ids[1]), q.got())
	}
	if err := h.Provision(ctx, task(t, scheduler.NewProvisionTask, ids[1])); err != nil || status(ids[1]) != session.StateReady {
		t.Fatalf("provision 2: %v %s", err, status(ids[1]))
	}
	// A provision for a session still waiting brings nothing up.
	if err := h.Provision(ctx, task(t, scheduler.NewProvisionTask, ids[2])); err != nil || status(ids[2]) != session.StateQueued {
		t.Fatalf("provision of a queued session: %v %s", err, status(ids[2]))
	}

	// The second lab's cleanup, killed after it ended the session and
	// before it gave the slot back: the third still waits.
	if _, err := st.Update(ctx, ids[1], func(x *session.Session) error { return x.WalkTo(session.StateCompleted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if status(ids[2]) != session.StateQueued {
		t.Fatal("admitted without a slot")
	}
	if err := h.Admission(ctx, scheduler.NewAdmissionTask()); err != nil {
		t.Fatal(err)
	}
	if status(ids[2]) != session.StateProvisioning || !slices.Contains(q.got(), ids[2]) {
		t.Fatalf("after the admission sweep: %s, provisions %v", status(ids[2]), q.got())
	}
	cleanup := func(id string) (*asynq.Task, error) { return scheduler.NewCleanupTask(id, "candidate") }
	// Its cleanup, run again as the retried task, converges.
	if err := h.Cleanup(ctx, task(t, cleanup, ids[1])); err != nil {
		t.Fatal(err)
	}
	qs, err := st.Queue(ctx)
	if err != nil || qs.Running != 1 || qs.Queued != 0 {
		t.Fatalf("queue: %+v %v, want the third running alone", qs, err)
	}
	// The third lab's archive is done; its cleanup removes the lab and
	// gives the slot back.
	if _, err := st.Update(ctx, ids[2], func(x *session.Session) error { return x.WalkTo(session.StateArchiving, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if err := h.Cleanup(ctx, task(t, cleanup, ids[2])); err != nil || status(ids[2]) != session.StateCompleted {
		t.Fatalf("cleanup 3: %v %s", err, status(ids[2]))
	}
	if qs, err := st.Queue(ctx); err != nil || qs.Running != 0 || !slices.Contains(rt.destroyed, ids[2]) {
		t.Fatalf("after the last cleanup: %+v %v, destroyed %v", qs, err, rt.destroyed)
	}
}

package workers_test

import (
	"context"
	"io"
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

// hostTrouble is the in-memory runtime with hosts that fail: the nodes it
// is told of report lost or unknown, as the Nomad runtime reports the
// nodes of a lab whose client is down or stopped reporting. Destroying a
// lab ends its trouble: a fresh lab lands on a healthy host.
type hostTrouble struct {
	*labtest.Flaky
	mu    sync.Mutex
	nodes map[string]map[string]lab.State // session -> node -> state
}

func (h *hostTrouble) set(id string, state lab.State, nodes ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	m := map[string]lab.State{}
	for _, n := range nodes {
		m[n] = state
	}
	h.nodes[id] = m
}

func (h *hostTrouble) clear(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.nodes, id)
}

func (h *hostTrouble) Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error) {
	out, err := h.Flaky.Status(ctx, spec)
	if err != nil {
		return nil, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := range out {
		if st, ok := h.nodes[spec.SessionID][out[i].Name]; ok {
			out[i].State, out[i].Detail = st, "client c2 is "+map[lab.State]string{lab.StateLost: "down", lab.StateUnknown: "disconnected"}[st]
		}
	}
	return out, nil
}

func (h *hostTrouble) Capture(ctx context.Context, sessionID string, nodes []string, mode lab.SnapshotMode, save lab.SaveFunc) ([]lab.NodeCapture, error) {
	h.mu.Lock()
	for _, n := range nodes {
		if _, bad := h.nodes[sessionID][n]; bad {
			h.mu.Unlock()
			// As a lost client does: the whole capture fails.
			return nil, io.ErrUnexpectedEOF
		}
	}
	h.mu.Unlock()
	return h.Flaky.Capture(ctx, sessionID, nodes, mode, save)
}

func (h *hostTrouble) Destroy(ctx context.Context, id string) error {
	h.clear(id)
	return h.Flaky.Destroy(ctx, id)
}

// newLostEnv is newEnv with hosts that can fail under its labs.
func newLostEnv(t *testing.T) (*env, *hostTrouble) {
	t.Helper()
	e := newEnv(t)
	rt := &hostTrouble{Flaky: e.flaky, nodes: map[string]map[string]lab.State{}}
	ex := exam.Default()
	h, err := workers.New(workers.Options{
		Store:       e.store,
		Runtime:     rt,
		Enqueuer:    e.enq,
		Exams:       func(id string) (*exam.Exam, bool) { return ex, id == ex.ID },
		RuntimeName: "memory",
		Observer:    e.obs,
		Now:         e.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.h = h
	return e, rt
}

func (e *env) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func allNodes() []string {
	var out []string
	for _, n := range exam.Default().Topology.Nodes {
		out = append(out, n.Name)
	}
	return out
}

func (e *env) sweep(t *testing.T) []workers.LostChange {
	t.Helper()
	ch, err := e.h.LostSweepOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ch
}

// auditDetail returns the detail of the session's only audit entry of
// action.
func (e *env) auditDetail(t *testing.T, id, action string) map[string]any {
	t.Helper()
	log, err := e.store.AuditLog(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var found []store.AuditEntry
	for _, a := range log {
		if a.Action == action {
			found = append(found, a)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %q audit entries, want 1: %+v", len(found), action, log)
	}
	return found[0].Detail
}

// A lab whose host stops reporting pauses the candidate's clock; the
// deadline does not expire however long it stays so; when the lab comes
// back the paused time is credited to the deadline, audit-logged with the
// seconds. A healthy session beside it is left alone.
func TestLostSweepPausesAndCredits(t *testing.T) {
	e, rt := newLostEnv(t)
	ctx := context.Background()
	hit := e.readyLab(t, "hit@example.com")
	fine := e.readyLab(t, "fine@example.com")
	before := e.get(t, hit)

	if ch := e.sweep(t); len(ch) != 0 {
		t.Fatalf("a sweep over healthy labs changed %+v", ch)
	}
	e.advance(10 * time.Minute)
	rt.set(hit, lab.StateUnknown, allNodes()...)
	ch := e.sweep(t)
	if len(ch) != 1 || ch[0].SessionID != hit || ch[0].State != lab.StateUnknown {
		t.Fatalf("sweep changed %+v, want %s unknown", ch, hit)
	}
	s := e.get(t, hit)
	if !s.Paused() || s.Trouble.State != lab.StateUnknown || s.Notice != session.NoticeLabUnavailable {
		t.Fatalf("after the sweep: paused %v, trouble %+v, notice %q", s.Paused(), s.Trouble, s.Notice)
	}
	for _, n := range s.Nodes {
		if n.State != lab.StateUnknown || n.Detail != "client c2 is disconnected" {
			t.Errorf("node %s recorded %s %q, want unknown with the reason", n.Name, n.State, n.Detail)
		}
	}
	if got := e.auditDetail(t, hit, "lab-unknown"); got["remaining_seconds"] != float64(80*60) {
		t.Errorf("lab-unknown audit detail %v, want 4800 seconds remaining", got)
	}
	// Sweeps that find the same trouble write nothing more.
	if ch := e.sweep(t); len(ch) != 0 {
		t.Errorf("a repeated sweep changed %+v", ch)
	}
	// The host is then declared lost: recorded, the clock still stopped
	// from the first sighting.
	rt.set(hit, lab.StateLost, allNodes()...)
	if ch := e.sweep(t); len(ch) != 1 || ch[0].State != lab.StateLost {
		t.Fatalf("sweep changed %+v, want lost", ch)
	}
	if s := e.get(t, hit); !s.Trouble.Since.Equal(before.ReadyAt.Add(10 * time.Minute)) {
		t.Errorf("paused since %v, want the first sighting", s.Trouble.Since)
	}

	// Two hours on, far past the 90-minute deadline, the expiry sweep
	// leaves the paused session (the healthy one is due and submitted).
	e.advance(2 * time.Hour)
	if err := e.h.Expire(ctx, scheduler.NewExpireTask()); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, hit); s.Status != stateReady {
		t.Fatalf("the paused session is %s after the expiry sweep, want ready", s.Status)
	}
	if s := e.get(t, fine); s.Status != stateSubmitted || s.SubmitReason != session.ByDeadline {
		t.Errorf("the healthy session is %s (%s), want submitted by the deadline", s.Status, s.SubmitReason)
	}

	// The host comes back.
	rt.clear(hit)
	ch = e.sweep(t)
	if len(ch) != 1 || ch[0].State != lab.StateRunning || ch[0].Credit != 2*time.Hour {
		t.Fatalf("sweep changed %+v, want the lab back with 2h credited", ch)
	}
	s = e.get(t, hit)
	if want := before.Deadline.Add(2 * time.Hour); s.Paused() || !s.Deadline.Equal(want) || s.Notice != "" {
		t.Errorf("after the lab came back: paused %v, deadline %v (want %v), notice %q", s.Paused(), s.Deadline, want, s.Notice)
	}
	if got := s.Remaining(e.clock()); got != 80*time.Minute {
		t.Errorf("remaining %v, want the 80m left when the clock stopped", got)
	}
	d := e.auditDetail(t, hit, "lab-back")
	if d["credited_seconds"] != float64(7200) {
		t.Errorf("lab-back audit detail %v, want credited_seconds 7200", d)
	}
	if err := e.h.Expire(ctx, scheduler.NewExpireTask()); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, hit); s.Status != stateReady {
		t.Errorf("the session is %s before its moved deadline", s.Status)
	}
	// At the moved deadline it expires like any other.
	e.advance(80 * time.Minute)
	if err := e.h.Expire(ctx, scheduler.NewExpireTask()); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, hit); s.Status != stateSubmitted {
		t.Errorf("the session is %s at its moved deadline, want submitted", s.Status)
	}
}

// An admin's re-provision replaces the lost lab with a fresh one and
// credits the paused time once that lab is ready; the sweep does not
// credit it early, and a repeated task changes nothing.
func TestReprovisionLostLab(t *testing.T) {
	e, rt := newLostEnv(t)
	ctx := context.Background()
	id := e.readyLab(t, "lost@example.com")
	if _, err := e.store.SaveAnswer(ctx, id, "t1", []byte(`"kept"`)); err != nil {
		t.Fatal(err)
	}
	deadline := e.get(t, id).Deadline
	rt.set(id, lab.StateLost, allNodes()...)
	e.sweep(t)
	e.advance(5*time.Minute + 300*time.Millisecond)
	if _, err := e.store.Update(ctx, id, func(s *session.Session) error { return s.BeginReprovision(e.clock()) }); err != nil {
		t.Fatal(err)
	}
	destroys, provisions := e.flaky.Calls("Destroy"), e.flaky.Calls("Provision")
	task, err := scheduler.NewReprovisionTask(id, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.h.Reprovision(ctx, task); err != nil {
		t.Fatal(err)
	}
	if d, p := e.flaky.Calls("Destroy")-destroys, e.flaky.Calls("Provision")-provisions; d != 1 || p != 1 {
		t.Errorf("reprovision destroyed %d and provisioned %d times, want 1 and 1", d, p)
	}
	s := e.get(t, id)
	if want := deadline.Add(5*time.Minute + time.Second); s.Paused() || !s.Deadline.Equal(want) {
		t.Errorf("after reprovision: paused %v, deadline %v, want %v", s.Paused(), s.Deadline, want)
	}
	for _, n := range s.Nodes {
		if n.State != lab.StateRunning {
			t.Errorf("node %s is %s after reprovision", n.Name, n.State)
		}
	}
	if d := e.auditDetail(t, id, "lab-reprovisioned"); d["credited_seconds"] != float64(301) {
		t.Errorf("lab-reprovisioned audit detail %v, want credited_seconds 301", d)
	}
	answers, err := e.store.Answers(ctx, id)
	if err != nil || len(answers) != 1 || string(answers[0].Value) != `"kept"` {
		t.Errorf("answers after reprovision: %+v, %v", answers, err)
	}
	// Done once: the task again touches nothing.
	if err := e.h.Reprovision(ctx, task); err != nil {
		t.Fatal(err)
	}
	if d := e.flaky.Calls("Destroy") - destroys; d != 1 {
		t.Errorf("a repeated reprovision task destroyed the fresh lab (%d destroys)", d)
	}
	if ch := e.sweep(t); len(ch) != 0 {
		t.Errorf("a sweep after the reprovision changed %+v", ch)
	}
}

// While a fresh lab is being made, a sweep that finds the lab running
// leaves the clock paused: the re-provision credits it.
func TestSweepLeavesReprovisionToCredit(t *testing.T) {
	e, rt := newLostEnv(t)
	ctx := context.Background()
	id := e.readyLab(t, "lost@example.com")
	rt.set(id, lab.StateLost, allNodes()...)
	e.sweep(t)
	if _, err := e.store.Update(ctx, id, func(s *session.Session) error { return s.BeginReprovision(e.clock()) }); err != nil {
		t.Fatal(err)
	}
	rt.clear(id)
	if ch := e.sweep(t); len(ch) != 0 {
		t.Errorf("sweep changed %+v during a reprovision", ch)
	}
	if s := e.get(t, id); !s.Reprovisioning() {
		t.Error("the sweep ended the reprovision")
	}
}

// Archiving what is reachable keeps the nodes that run and lists the lost
// ones as missing in the manifest; grading is left to an examiner.
func TestArchiveReachable(t *testing.T) {
	e, rt := newLostEnv(t)
	ctx := context.Background()
	id := e.readyLab(t, "partial@example.com")
	lost := []string{"g1", "phoenix"}
	rt.set(id, lab.StateLost, lost...)
	if _, err := e.store.Update(ctx, id, func(s *session.Session) error {
		_, err := s.SubmitReachable(e.clock())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Archive(ctx, archiveTask(t, id, session.ByAdmin)); err != nil {
		t.Fatal(err)
	}
	m, err := e.store.Manifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Missing) != 2 || m.Missing[0] != "g1" || m.Missing[1] != "phoenix" {
		t.Errorf("manifest missing %v, want %v", m.Missing, lost)
	}
	tars := 0
	for _, f := range m.Files {
		if len(f.Name) > 4 && f.Name[len(f.Name)-4:] == ".tar" {
			tars++
		}
	}
	if want := len(allNodes()) - len(lost); tars != want {
		t.Errorf("%d node tars archived, want %d", tars, want)
	}
	if n := e.auditCount(t, id, "grade-skipped"); exam.Default().GradesOnSubmit() && n != 1 {
		t.Errorf("%d grade-skipped audit entries, want 1", n)
	}
}

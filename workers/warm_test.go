package workers_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
	"github.com/examlab/examlab/workers"
)

// warmEnv is the handlers on the in-memory runtime with an exam whose
// version a test may change, as a new deployment of a changed exam file
// would.
type warmEnv struct {
	mu  sync.Mutex
	ex  *exam.Exam
	mem *labtest.Memory
	// flaky is the runtime the handlers use: mem, failing what a test asks.
	flaky *labtest.Flaky
	st    *store.Store
	h     *workers.Handlers
	q     *tasks
	now   time.Time
}

func (e *warmEnv) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

func (e *warmEnv) advance(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func (e *warmEnv) exam() *exam.Exam {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.ex
}

func (e *warmEnv) setVersion(v string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	cp := *e.ex
	cp.Version = v
	e.ex = &cp
}

func newWarmEnv(t *testing.T) *warmEnv {
	t.Helper()
	e := &warmEnv{mem: labtest.NewMemory(labtest.MemoryOptions{}), q: &tasks{}, now: time.Now()}
	e.ex = exam.Default()
	e.setVersion("v1")
	var err error
	e.st, err = store.New(store.Options{Dir: t.TempDir(), Redis: redistest.Client(t), Now: e.clock,
		ExamVersion: func(id string) string {
			if ex := e.exam(); id == ex.ID {
				return ex.Fingerprint()
			}
			return ""
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.flaky = labtest.NewFlaky(e.mem)
	e.h, err = workers.New(workers.Options{Store: e.st, Runtime: e.flaky, Enqueuer: e.q, RuntimeName: "memory", Now: e.clock,
		Exams: func(id string) (*exam.Exam, bool) { ex := e.exam(); return ex, id == ex.ID }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// refill runs a refill pass and provisions every lab it made, as the
// queue would.
func (e *warmEnv) refill(t *testing.T) workers.WarmRefillReport {
	t.Helper()
	ctx := context.Background()
	rep, err := e.h.WarmRefillOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range rep.Made {
		if err := e.h.WarmProvision(ctx, task(t, scheduler.NewWarmProvisionTask, id)); err != nil {
			t.Fatal(err)
		}
	}
	return rep
}

func (e *warmEnv) ready(t *testing.T, sittingID string) []string {
	t.Helper()
	labs, err := e.st.WarmPool(context.Background(), sittingID)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, w := range labs {
		if w.State == store.WarmReady {
			out = append(out, w.ID)
		}
	}
	return out
}

func (e *warmEnv) start(t *testing.T, sittingID, email string) *session.Session {
	t.Helper()
	ctx := context.Background()
	sess, _ := storetest.SignInTo(t, e.st, sittingID, email, e.exam().ID, time.Hour, "memory")
	if _, err := scheduler.Start(ctx, e.st, e.q, sess.ID, e.clock()); err != nil {
		t.Fatal(err)
	}
	got, err := e.st.Get(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// TestWarmPoolLifecycle: the refill fills a pool within the sitting's
// capacity; a start is ready at once in a pool lab and queues no
// provision; the pool refills into the slot left; the reaper leaves
// pool and claimed labs alone and removes an orphan; a changed exam
// replaces every warm lab; the claimed lab is removed by the session's
// cleanup; warm 0 empties the pool.
func TestWarmPoolLifecycle(t *testing.T) {
	e := newWarmEnv(t)
	ctx := context.Background()
	storetest.OpenSitting(t, e.st, "pool", e.exam().ID, 3)
	if _, err := e.st.UpdateSitting(ctx, "pool", func(s *sitting.Sitting) error { s.Warm = 2; return nil }); err != nil {
		t.Fatal(err)
	}
	if rep := e.refill(t); len(rep.Made) != 2 {
		t.Fatalf("refill made %v, want 2 labs", rep.Made)
	}
	pool := e.ready(t, "pool")
	if len(pool) != 2 {
		t.Fatalf("ready %v", pool)
	}
	if rep := e.refill(t); len(rep.Made) != 0 {
		t.Fatalf("a full pool made %v", rep.Made)
	}

	sess := e.start(t, "pool", "a@example.com")
	if sess.Status != session.StateReady || !slices.Contains(pool, sess.LabID) || sess.Deadline.IsZero() {
		t.Fatalf("after start: %s in lab %q (pool %v), deadline %v", sess.Status, sess.LabID, pool, sess.Deadline)
	}
	if got := e.q.got(); len(got) != 0 {
		t.Fatalf("a claimed lab queued provisions %v", got)
	}
	// The capacity of 3 holds the session and one ready lab: one more.
	if rep := e.refill(t); len(rep.Made) != 1 {
		t.Fatalf("refill after a claim made %v, want 1", rep.Made)
	}
	if rep := e.refill(t); len(rep.Made) != 0 {
		t.Fatalf("a pool at the sitting's capacity made %v", rep.Made)
	}

	orphan := store.NewSessionID()
	spec, err := lab.NewSpec(e.exam(), lab.Session{ID: orphan})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.mem.Provision(ctx, spec); err != nil {
		t.Fatal(err)
	}
	removed, err := e.h.ReapOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{orphan}) {
		t.Fatalf("reaper removed %v, want only the orphan %s", removed, orphan)
	}
	live, _ := e.mem.Labs(ctx)
	if !slices.Contains(live, sess.LabID) || slices.Contains(live, sess.ID) {
		t.Fatalf("labs %v: want the claimed %s and none named after the session", live, sess.LabID)
	}

	old := e.ready(t, "pool")
	e.setVersion("v2")
	rep := e.refill(t)
	for _, id := range old {
		if _, ok := rep.Retired[id]; !ok {
			t.Fatalf("lab %s of the old exam not retired: %v", id, rep.Retired)
		}
	}
	live, _ = e.mem.Labs(ctx)
	for _, id := range old {
		if slices.Contains(live, id) {
			t.Fatalf("lab %s of the old exam still runs", id)
		}
	}
	if len(rep.Made) != 2 {
		t.Fatalf("after the exam changed the refill made %v, want 2", rep.Made)
	}
	sess2 := e.start(t, "pool", "b@example.com")
	if w, err := e.st.WarmLab(ctx, sess2.LabID); err != nil || w.Version != e.exam().Fingerprint() {
		t.Fatalf("second claim: %+v %v", w, err)
	}

	// The first session ends: its cleanup removes the claimed lab and
	// forgets it.
	if _, _, err := scheduler.Submit(ctx, e.st, e.q, sess.ID, session.ByCandidate, time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := e.st.Update(ctx, sess.ID, func(x *session.Session) error { return x.BeginArchive() }); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Cleanup(ctx, task(t, func(id string) (*asynq.Task, error) { return scheduler.NewCleanupTask(id, "test") }, sess.ID)); err != nil {
		t.Fatal(err)
	}
	live, _ = e.mem.Labs(ctx)
	if slices.Contains(live, sess.LabID) {
		t.Fatal("the claimed lab outlived its session's cleanup")
	}
	if _, err := e.st.WarmLab(ctx, sess.LabID); err == nil {
		t.Fatal("the claimed lab's record outlived its session's cleanup")
	}

	if _, err := e.st.UpdateSitting(ctx, "pool", func(s *sitting.Sitting) error { s.Warm = 0; return nil }); err != nil {
		t.Fatal(err)
	}
	e.refill(t)
	if left, _ := e.st.WarmPool(ctx, "pool"); len(left) != 0 {
		t.Fatalf("warm 0 left %d labs", len(left))
	}
	live, _ = e.mem.Labs(ctx)
	if !slices.Equal(live, []string{sess2.LabID}) {
		t.Fatalf("labs %v, want only the second session's %s", live, sess2.LabID)
	}
}

// TestWarmClaimUnrecorded: a claim whose process died before it recorded
// the session's lab. The reaper leaves the claimed lab alone meanwhile;
// the admission sweep rolls the claim forward into that lab; a claimed lab
// whose session ended is reaped.
func TestWarmClaimUnrecorded(t *testing.T) {
	e := newWarmEnv(t)
	ctx := context.Background()
	storetest.OpenSitting(t, e.st, "pool", e.exam().ID, 0)
	if _, err := e.st.UpdateSitting(ctx, "pool", func(s *sitting.Sitting) error { s.Warm = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	e.refill(t)
	sess, _ := storetest.SignInTo(t, e.st, "pool", "c@example.com", e.exam().ID, time.Hour, "memory")
	cur, err := e.st.Update(ctx, sess.ID, func(x *session.Session) error { return x.Start(e.clock()) })
	if err != nil {
		t.Fatal(err)
	}
	if err := e.st.JoinQueue(ctx, cur); err != nil {
		t.Fatal(err)
	}
	adm, err := e.st.AdmitNext(ctx) // the claim, and then the process dies
	if err != nil || len(adm) != 1 || adm[0].WarmLab == "" {
		t.Fatalf("claim: %+v %v", adm, err)
	}
	labID := adm[0].WarmLab
	if removed, err := e.h.ReapOnce(ctx); err != nil || len(removed) != 0 {
		t.Fatalf("reaper removed %v (%v) during a claim", removed, err)
	}
	if _, _, err := scheduler.Repair(ctx, e.st, e.q, e.clock()); err != nil {
		t.Fatal(err)
	}
	got, err := e.st.Get(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != session.StateReady || got.LabID != labID {
		t.Fatalf("rolled forward: %s in %q, want ready in %s", got.Status, got.LabID, labID)
	}
	e.advance(time.Hour)
	if removed, err := e.h.ReapOnce(ctx); err != nil || slices.Contains(removed, labID) {
		t.Fatalf("reaper removed %v (%v) while the session runs", removed, err)
	}
	// The session fails without its cleanup: the lab is an orphan.
	if _, err := e.st.Update(ctx, sess.ID, func(x *session.Session) error { return x.Fail("test", e.clock()) }); err != nil {
		t.Fatal(err)
	}
	if removed, err := e.h.ReapOnce(ctx); err != nil || !slices.Contains(removed, labID) {
		t.Fatalf("reaper removed %v (%v), want the ended session's lab %s", removed, err, labID)
	}
}

// TestWarmBrokenReplaced: a ready warm lab whose node stops while it
// waits is found by the refill's check once its interval has passed,
// taken out of the pool, destroyed, counted and audited, and replaced; no
// start is handed it. A check the runtime does not answer leaves the lab
// alone until its next interval.
func TestWarmBrokenReplaced(t *testing.T) {
	e := newWarmEnv(t)
	ctx := context.Background()
	storetest.OpenSitting(t, e.st, "pool", e.exam().ID, 0)
	if _, err := e.st.UpdateSitting(ctx, "pool", func(s *sitting.Sitting) error { s.Warm = 2; return nil }); err != nil {
		t.Fatal(err)
	}
	e.refill(t)
	pool := e.ready(t, "pool")
	if len(pool) != 2 {
		t.Fatalf("ready %v", pool)
	}
	every := sitting.DefaultWarmCheck
	broken := pool[0]
	if err := e.mem.Crash(broken, "tokyo"); err != nil {
		t.Fatal(err)
	}
	// Just made: not checked again before the interval has passed.
	if rep := e.refill(t); len(rep.Checked)+len(rep.Unchecked) != 0 || len(rep.Retired) != 0 {
		t.Fatalf("a pass within the check interval checked %v (unanswered %v), retired %v", rep.Checked, rep.Unchecked, rep.Retired)
	}

	e.advance(every)
	rep := e.refill(t)
	slices.Sort(rep.Checked)
	if want := slices.Sorted(slices.Values(pool)); !slices.Equal(rep.Checked, want) {
		t.Fatalf("checked %v, want every ready lab %v", rep.Checked, want)
	}
	if why := rep.Retired[broken]; !strings.Contains(why, "tokyo exited") || len(rep.Retired) != 1 {
		t.Fatalf("retired %v, want only %s for its stopped node", rep.Retired, broken)
	}
	if len(rep.Made) != 1 {
		t.Fatalf("the refill made %v to replace the broken lab, want 1", rep.Made)
	}
	live, _ := e.mem.Labs(ctx)
	if slices.Contains(live, broken) {
		t.Fatalf("the broken lab %s still runs", broken)
	}
	if _, err := e.st.WarmLab(ctx, broken); err == nil {
		t.Fatal("the broken lab's record outlived it")
	}
	now := e.ready(t, "pool")
	if len(now) != 2 || slices.Contains(now, broken) {
		t.Fatalf("ready %v: want two labs, not the broken %s", now, broken)
	}
	if n, _ := e.st.WarmReplacements(ctx); n[store.WarmReplacedBroken] != 1 {
		t.Fatalf("replacements %v, want broken 1", n)
	}
	trail, err := e.st.SittingAudit(ctx, "pool")
	if err != nil {
		t.Fatal(err)
	}
	audited := false
	for _, a := range trail {
		audited = audited || (a.Action == "warm-lab-broken" && a.Detail["lab_id"] == broken)
	}
	if !audited {
		t.Fatalf("no warm-lab-broken entry for %s in %+v", broken, trail)
	}

	// The runtime does not answer about a lab: it stays, unchecked, and
	// the pass asks about no other lab; the next interval checks it again.
	flaky := now[0]
	if err := e.mem.Crash(flaky, "osaka"); err != nil {
		t.Fatal(err)
	}
	e.flaky.FailWhen(func(c labtest.Call) error {
		if c.Method == "Status" && c.SessionID == flaky {
			return fmt.Errorf("%w: engine not answering", lab.ErrUnavailable)
		}
		return nil
	})
	e.advance(every)
	rep = e.refill(t)
	if !slices.Equal(rep.Unchecked, []string{flaky}) || len(rep.Retired) != 0 || len(rep.Made) != 0 {
		t.Fatalf("with no answer about %s: unanswered %v, retired %v, made %v", flaky, rep.Unchecked, rep.Retired, rep.Made)
	}
	live, _ = e.mem.Labs(ctx)
	if !slices.Contains(live, flaky) || !slices.Contains(e.ready(t, "pool"), flaky) {
		t.Fatalf("a lab the runtime gave no answer about was removed (labs %v)", live)
	}
	e.flaky.FailWhen(nil)
	rep = e.refill(t)
	if slices.Contains(rep.Checked, flaky) || len(rep.Retired) != 0 {
		t.Fatalf("checked %v, retired %v before the interval passed again", rep.Checked, rep.Retired)
	}
	e.advance(every)
	rep = e.refill(t)
	if _, ok := rep.Retired[flaky]; !ok || len(rep.Made) != 1 {
		t.Fatalf("at the next interval: retired %v, made %v; want %s replaced", rep.Retired, rep.Made, flaky)
	}
	if n, _ := e.st.WarmReplacements(ctx); n[store.WarmReplacedBroken] != 2 {
		t.Fatalf("replacements %v, want broken 2", n)
	}

	// Starts claim the fresh labs, whose nodes all run.
	for i := range 2 {
		sess := e.start(t, "pool", fmt.Sprintf("broken%d@example.com", i))
		if sess.Status != session.StateReady || sess.LabID == broken || sess.LabID == flaky {
			t.Fatalf("start %d: %s in lab %q (broken labs %s, %s)", i, sess.Status, sess.LabID, broken, flaky)
		}
		spec, err := lab.NewSpec(e.exam(), lab.Session{ID: sess.LabID})
		if err != nil {
			t.Fatal(err)
		}
		if nodes, err := e.mem.Status(ctx, spec); err != nil || !lab.AllRunning(nodes) {
			t.Fatalf("start %d was handed lab %s: %+v %v", i, sess.LabID, nodes, err)
		}
	}
}

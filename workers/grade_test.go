package workers_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
	"github.com/examlab/examlab/testlab/redistest"
	"github.com/examlab/examlab/workers"
)

// gradingEnv is env on testdata/checks.yaml, whose lab the grader judges
// (testlab.Graded runs the checks' snippets in memory nodes), with every
// runtime call logged in order.
type gradingEnv struct {
	*env
	graded testlab.Graded
	gobs   *gradeObserver

	logMu sync.Mutex
	log   []labtest.Call
}

func newGradingEnv(t *testing.T, terminalWait time.Duration) *gradingEnv {
	t.Helper()
	ex, err := exam.Load("testdata/checks.yaml")
	if err != nil {
		t.Fatal(err)
	}
	g := &gradingEnv{graded: testlab.NewGraded(), gobs: &gradeObserver{}}
	e := &env{
		mem:   g.graded.Memory,
		redis: redistest.Socket(t),
		enq:   &recorder{queued: map[string]bool{}},
		obs:   &observer{},
		now:   time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC),
	}
	g.env = e
	e.flaky = labtest.NewFlaky(g.graded)
	e.flaky.FailWhen(func(c labtest.Call) error {
		g.logMu.Lock()
		g.log = append(g.log, c)
		g.logMu.Unlock()
		return nil
	})
	e.rdb = redis.NewClient(&redis.Options{Network: "unix", Addr: e.redis})
	t.Cleanup(func() { e.rdb.Close() })
	if e.store, err = store.New(store.Options{Dir: t.TempDir(), Redis: e.rdb, Now: e.clock}); err != nil {
		t.Fatal(err)
	}
	e.h, err = workers.New(workers.Options{
		Store: e.store, Runtime: e.flaky, Enqueuer: e.enq,
		Exams:       func(string) (*exam.Exam, bool) { return ex, true },
		RuntimeName: "memory", Observer: e.obs, Grading: g.gobs, TerminalWait: terminalWait, Now: e.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// calls returns the logged runtime calls of the session and clears the log.
func (g *gradingEnv) calls(id string) []labtest.Call {
	g.logMu.Lock()
	defer g.logMu.Unlock()
	var out []labtest.Call
	for _, c := range g.log {
		if c.SessionID == id {
			out = append(out, c)
		}
	}
	g.log = nil
	return out
}

type gradeObserver struct {
	mu       sync.Mutex
	checks   int
	passed   int
	triggers []string
}

func (o *gradeObserver) CheckRan(passed, _ bool, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.checks++
	if passed {
		o.passed++
	}
}

func (o *gradeObserver) Graded(trigger string, _ time.Duration) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.triggers = append(o.triggers, trigger)
}

// workedLab is a ready lab where the candidate got tokyo right (10 points
// and the hidden 5) but not osaka, submitted for reason.
func (g *gradingEnv) workedLab(t *testing.T, email, reason string) string {
	t.Helper()
	id := g.readyLab(t, email)
	if _, code, err := lab.Output(context.Background(), g.mem, id, "tokyo", "sh", "-c", "echo yes > /root/done.txt"); err != nil || code != 0 {
		t.Fatalf("work in tokyo: %d %v", code, err)
	}
	g.submit(t, id, reason)
	g.calls(id)
	return id
}

func TestArchiveGradesBeforeTheSnapshot(t *testing.T) {
	for _, tc := range []struct{ reason, trigger string }{
		{session.ByCandidate, grading.TriggerSubmit},
		{session.ByDeadline, grading.TriggerDeadline},
	} {
		t.Run(tc.reason, func(t *testing.T) {
			g := newGradingEnv(t, time.Second)
			ctx := context.Background()
			id := g.workedLab(t, "ada@example.com", tc.reason)
			if err := g.h.Archive(ctx, archiveTask(t, id, tc.reason)); err != nil {
				t.Fatal(err)
			}
			var order []string
			for _, c := range g.calls(id) {
				if len(order) == 0 || order[len(order)-1] != c.Method {
					order = append(order, c.Method)
				}
			}
			if !slices.Equal(order, []string{"Exec", "Capture", "CaptureNode", "Logs"}) {
				t.Fatalf("runtime calls %v: the checks must all run before the first export", order)
			}
			res, err := g.store.LatestResults(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if res.Trigger != tc.trigger || res.Score != 15 || res.MaxScore != 40 || res.ExamVersion != "2026.1" || res.SessionID != id {
				t.Fatalf("results: trigger %s score %d/%d version %s", res.Trigger, res.Score, res.MaxScore, res.ExamVersion)
			}
			m, err := g.store.Manifest(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			p, _ := g.store.Path(id, store.ResultsFile)
			b, _ := os.ReadFile(p)
			sum := sha256.Sum256(b)
			if m.Results == nil || m.Results.SHA256 != hex.EncodeToString(sum[:]) || m.Results.Size != int64(len(b)) {
				t.Fatalf("manifest's results %+v do not describe results.json", m.Results)
			}
			if g.gobs.checks != 3 || g.gobs.passed != 2 || !slices.Equal(g.gobs.triggers, []string{tc.trigger}) {
				t.Errorf("observed %d checks, %d passed, gradings %v", g.gobs.checks, g.gobs.passed, g.gobs.triggers)
			}
			audit, _ := g.store.AuditLog(ctx, id)
			if !slices.ContainsFunc(audit, func(e store.AuditEntry) bool { return e.Action == "graded" && e.Detail["trigger"] == tc.trigger }) {
				t.Errorf("no graded audit entry: %+v", audit)
			}
		})
	}
}

func TestArchiveRerunDoesNotRegrade(t *testing.T) {
	g := newGradingEnv(t, time.Second)
	ctx := context.Background()
	id := g.workedLab(t, "ada@example.com", session.ByCandidate)
	// The first run grades, then dies in the snapshot.
	g.flaky.FailNext("Capture", 1, nil)
	if err := g.h.Archive(ctx, archiveTask(t, id, "candidate")); err == nil {
		t.Fatal("the archive succeeded through a failed export")
	}
	g.calls(id)
	// The candidate's lab changed meanwhile (a node restarting, say): the
	// rerun keeps the results of the lab as it was submitted.
	if _, code, err := lab.Output(ctx, g.mem, id, "osaka", "sh", "-c", "touch /root/ready"); err != nil || code != 0 {
		t.Fatal(code, err)
	}
	if err := g.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	for _, c := range g.calls(id) {
		if c.Method == "Exec" {
			t.Fatalf("the rerun ran checks again: %+v", c)
		}
	}
	h, err := g.store.ResultsHistory(ctx, id)
	if err != nil || len(h) != 1 || h[0].Score != 15 {
		t.Fatalf("history after the rerun: %d gradings (%v)", len(h), err)
	}
}

func TestArchiveClosesTerminalsBeforeGrading(t *testing.T) {
	g := newGradingEnv(t, 10*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	id := g.workedLab(t, "ada@example.com", session.ByCandidate)
	if err := g.store.TerminalOpened(ctx, id, "shell-1"); err != nil {
		t.Fatal(err)
	}
	// A relay: asked to end the session's shells, it takes a moment to
	// hang them up.
	reqs := g.store.EndTerminalsRequests(ctx)
	time.Sleep(100 * time.Millisecond)
	var closedAt time.Time
	var mu sync.Mutex
	go func() {
		for rid := range reqs {
			if rid == id {
				time.Sleep(300 * time.Millisecond)
				mu.Lock()
				closedAt = time.Now()
				mu.Unlock()
				g.store.TerminalClosed(context.Background(), id, "shell-1")
				return
			}
		}
	}()
	var firstExec time.Time
	g.flaky.FailWhen(func(c labtest.Call) error {
		mu.Lock()
		defer mu.Unlock()
		if c.Method == "Exec" && firstExec.IsZero() {
			firstExec = time.Now()
		}
		return nil
	})
	if err := g.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if closedAt.IsZero() || firstExec.IsZero() || firstExec.Before(closedAt) {
		t.Fatalf("terminal closed at %v, first check at %v: checks must wait for the terminals", closedAt, firstExec)
	}
}

func TestArchiveGradesPastAStuckTerminalNote(t *testing.T) {
	g := newGradingEnv(t, 300*time.Millisecond)
	ctx := context.Background()
	id := g.workedLab(t, "ada@example.com", session.ByCandidate)
	// A relay that crashed left its note behind.
	if err := g.store.TerminalOpened(ctx, id, "orphan"); err != nil {
		t.Fatal(err)
	}
	if err := g.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	if _, err := g.store.LatestResults(ctx, id); err != nil {
		t.Fatalf("no results: %v", err)
	}
	audit, _ := g.store.AuditLog(ctx, id)
	if !slices.ContainsFunc(audit, func(e store.AuditEntry) bool { return e.Action == "grade-terminals-open" }) {
		t.Errorf("the audit does not say terminals were still noted: %+v", audit)
	}
}

package workers_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/scheduler"
)

// auditCount counts the session's audit entries of action.
func (e *env) auditCount(t *testing.T, id, action string) int {
	t.Helper()
	log, err := e.store.AuditLog(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range log {
		if a.Action == action {
			n++
		}
	}
	return n
}

func TestExpire(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	now := e.clock()
	late := e.readyLab(t, "late@example.com")
	e.setDeadline(t, late, now.Add(-time.Minute))
	onTime := e.readyLab(t, "ontime@example.com")
	e.setDeadline(t, onTime, now.Add(time.Hour))
	waiting := e.login(t, "waiting@example.com")

	// Several workers may sweep at once, and sweeps repeat.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range 2 {
		wg.Go(func() { errs[i] = e.h.Expire(ctx, scheduler.NewExpireTask()) })
	}
	wg.Wait()
	errs[2] = e.h.Expire(ctx, scheduler.NewExpireTask())
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	s := e.get(t, late)
	if s.Status != stateSubmitted || s.SubmitReason != "deadline" || !s.SubmittedAt.Equal(now) {
		t.Errorf("late session: %s by %q at %v; want submitted by the deadline now", s.Status, s.SubmitReason, s.SubmittedAt)
	}
	// A sweep that lost the race still enqueues the archive; its task id
	// makes that a no-op.
	archives, _ := e.enq.calls()
	for _, a := range archives {
		if a != (enqueued{late, "deadline"}) {
			t.Errorf("archive enqueued for %v", a)
		}
	}
	// Each of the three sweeps enqueues it at most twice: as due, and as
	// a submitted session whose archive may not be queued.
	if len(archives) == 0 || len(archives) > 6 {
		t.Errorf("archives enqueued %v, want the late session's, at most twice per sweep", archives)
	}
	if n := e.auditCount(t, late, "deadline-submit"); n != 1 {
		t.Errorf("%d deadline-submit audit entries, want 1", n)
	}
	if s := e.get(t, onTime); s.Status != stateReady {
		t.Errorf("the session on time is %s", s.Status)
	}
	if s := e.get(t, waiting); s.Status != stateCreated {
		t.Errorf("the session without a lab is %s", s.Status)
	}
}

func TestExpireReportsEnqueueFailures(t *testing.T) {
	e := newEnv(t)
	id := e.readyLab(t, "ada@example.com")
	e.setDeadline(t, id, e.clock().Add(-time.Minute))
	e.enq.err = errors.New("redis away")
	if err := e.h.Expire(context.Background(), scheduler.NewExpireTask()); err == nil {
		t.Error("the sweep hid a failed enqueue")
	}
}

func TestReap(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	live := e.readyLab(t, "live@example.com")
	ended := e.readyLab(t, "ended@example.com")
	e.fail(t, ended) // ended without its cleanup ever running
	orphan := labtest.NewSessionID()
	if err := e.mem.Provision(ctx, spec(t, orphan)); err != nil {
		t.Fatal(err)
	}

	removed, err := e.h.ReapOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(removed)
	want := []string{ended, orphan}
	slices.Sort(want)
	if !slices.Equal(removed, want) {
		t.Errorf("reaped %v, want %v", removed, want)
	}
	if labs, _ := e.mem.Labs(ctx); !slices.Equal(labs, []string{live}) {
		t.Errorf("labs left %v, want only the live one %s", labs, live)
	}
	if removed, err := e.h.ReapOnce(ctx); err != nil || len(removed) != 0 {
		t.Errorf("second pass reaped %v (%v), want nothing", removed, err)
	}

	e.flaky.FailNext("Labs", 1, nil)
	if err := e.h.Reap(ctx, scheduler.NewReapTask()); !errors.Is(err, labtest.ErrInjected) {
		t.Errorf("reap with the runtime away: %v, want its error", err)
	}
}

// A submit whose archive could not be queued (Redis down for a moment) is
// not forgotten: the next sweep queues it.
func TestExpireQueuesTheArchiveOfAStraggler(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.readyLab(t, "straggler@example.com")
	e.enq.mu.Lock()
	e.enq.err = errors.New("redis: connection refused")
	e.enq.mu.Unlock()
	if _, _, err := scheduler.Submit(ctx, e.store, e.enq, id, "candidate", e.clock()); !errors.Is(err, scheduler.ErrNotQueued) {
		t.Fatalf("submit with the queue down: %v", err)
	}
	if s := e.get(t, id); s.Status != stateSubmitted {
		t.Fatalf("the submit was not recorded: %s", s.Status)
	}
	e.enq.mu.Lock()
	e.enq.err = nil
	e.enq.mu.Unlock()
	if err := e.h.Expire(ctx, scheduler.NewExpireTask()); err != nil {
		t.Fatal(err)
	}
	archives, _ := e.enq.calls()
	if len(archives) != 1 || archives[0] != (enqueued{id, "candidate"}) {
		t.Fatalf("archives queued = %v, want the straggler's", archives)
	}
}

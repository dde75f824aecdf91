package workers_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

func roundTask(t *testing.T, f func(id, reason string, round int) (*asynq.Task, error), id, reason string, round int) *asynq.Task {
	t.Helper()
	task, err := f(id, reason, round)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

// deadLease leaves the session as a worker killed mid-op does: its lease
// of op in round taken and never renewed (run out at once).
func (e *env) deadLease(t *testing.T, op, id string, round int) *store.Lease {
	t.Helper()
	l, err := e.store.TakeLease(context.Background(), op, id, round, time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
	return l
}

// noLeases fails the test if any session holds a lease of op.
func (e *env) noLeases(t *testing.T, op string) {
	t.Helper()
	if ids, err := e.store.Leased(context.Background(), op); err != nil || len(ids) != 0 {
		t.Errorf("%s leases left: %v %v", op, ids, err)
	}
}

// TestArchiveRestartAfterWorkerStops: an archive whose worker stopped
// mid-capture, holding the snapshot lock, is restarted in a new round by
// the sweep, which frees the dead run's lock at once; the stopped
// worker's task, run later by the queue, does nothing; the new round's
// archives the lab whole, records it and chains the cleanup.
func TestArchiveRestartAfterWorkerStops(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	if _, err := e.store.Update(ctx, id, func(s *record) error { return s.BeginArchive() }); err != nil {
		t.Fatal(err)
	}
	dead := e.deadLease(t, scheduler.LeaseArchive, id, 0)
	if _, err := e.store.TryLockUnder(ctx, "snapshot", dead, time.Minute); err != nil {
		t.Fatal(err)
	}

	restarted, err := e.h.RestartOnce(ctx)
	if err != nil || !slices.Equal(restarted, []string{id}) {
		t.Fatalf("restart pass: %v %v, want %s restarted", restarted, err, id)
	}
	s := e.get(t, id)
	if s.Status != stateArchiving || s.ArchiveRestarts != 1 {
		t.Fatalf("after restart: %s archive restarts=%d", s.Status, s.ArchiveRestarts)
	}
	if !slices.Contains(e.audited(t, id), "archive-restarted") {
		t.Errorf("audit %v has no archive-restarted", e.audited(t, id))
	}
	e.enq.mu.Lock()
	queued := e.enq.queued["archive:a1:"+id]
	e.enq.mu.Unlock()
	if !queued {
		t.Fatalf("round 1's archive was not enqueued: %+v", e.enq.archives)
	}
	lock, err := e.store.TryLock(ctx, "snapshot", id, time.Minute)
	if err != nil {
		t.Fatalf("the dead run's snapshot lock is still held: %v", err)
	}
	lock.Unlock(ctx)
	if again, err := e.h.RestartOnce(ctx); err != nil || len(again) != 0 {
		t.Fatalf("second pass restarted %v (%v)", again, err)
	}

	// The stopped worker's task, recovered by the queue, is of round 0.
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.Manifest(ctx, id); err == nil || e.flaky.Calls("Capture") != 0 {
		t.Fatalf("the stale round archived: manifest err %v, %d captures", err, e.flaky.Calls("Capture"))
	}
	if err := e.h.Archive(ctx, roundTask(t, scheduler.NewArchiveRoundTask, id, "candidate", 1)); err != nil {
		t.Fatal(err)
	}
	e.checkSnapshot(t, id, "candidate")
	if s := e.get(t, id); s.Status != stateArchiving || s.ArchivedAt.IsZero() {
		t.Fatalf("after round 1: %s archived at %v", s.Status, s.ArchivedAt)
	}
	if _, cleanups := e.enq.calls(); !slices.Equal(cleanups, []enqueued{{id, "candidate"}}) {
		t.Errorf("cleanups enqueued %v, want one for %s", cleanups, id)
	}
	e.noLeases(t, scheduler.LeaseArchive)

	// A worker that dies once the archive is whole (before it gave its
	// lease back) is not archived again: the lab may be going down. Its
	// cleanup is queued, which the task id makes a no-op.
	e.deadLease(t, scheduler.LeaseArchive, id, 1)
	captures := e.flaky.Calls("Capture")
	if again, err := e.h.RestartOnce(ctx); err != nil || len(again) != 0 {
		t.Fatalf("a whole archive was restarted: %v (%v)", again, err)
	}
	if s := e.get(t, id); s.ArchiveRestarts != 1 {
		t.Errorf("archive restarts = %d after a whole archive's worker stopped", s.ArchiveRestarts)
	}
	if err := e.h.Archive(ctx, roundTask(t, scheduler.NewArchiveRoundTask, id, "candidate", 1)); err != nil || e.flaky.Calls("Capture") != captures {
		t.Fatalf("a rerun of a whole archive: %v, %d captures, want none more", err, e.flaky.Calls("Capture")-captures)
	}
	e.noLeases(t, scheduler.LeaseArchive)
}

// TestCleanupRestartAfterWorkerStops: a cleanup whose worker stopped is
// restarted in a new round; the stale round does nothing, the new one
// ends the session with its lab gone and gives its lease back. A cleanup
// whose worker stopped after the session ended is restarted too (its
// slot and seal may be missing), and converges.
func TestCleanupRestartAfterWorkerStops(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "deadline")
	if err := e.h.Archive(ctx, archiveTask(t, id, "deadline")); err != nil {
		t.Fatal(err)
	}
	e.deadLease(t, scheduler.LeaseCleanup, id, 0)
	if restarted, err := e.h.RestartOnce(ctx); err != nil || !slices.Equal(restarted, []string{id}) {
		t.Fatalf("restart pass: %v %v, want %s restarted", restarted, err, id)
	}
	if s := e.get(t, id); s.Status != stateArchiving || s.CleanupRestarts != 1 {
		t.Fatalf("after restart: %s cleanup restarts=%d", s.Status, s.CleanupRestarts)
	}
	if !slices.Contains(e.audited(t, id), "cleanup-restarted") {
		t.Errorf("audit %v has no cleanup-restarted", e.audited(t, id))
	}
	if err := e.h.Cleanup(ctx, cleanupTask(t, id, "deadline")); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateArchiving || e.flaky.Calls("Destroy") != 0 {
		t.Fatalf("the stale round ran: %s, %d destroys", s.Status, e.flaky.Calls("Destroy"))
	}
	if err := e.h.Cleanup(ctx, roundTask(t, scheduler.NewCleanupRoundTask, id, "deadline", 1)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateExpired {
		t.Fatalf("after round 1: %s", s.Status)
	}
	if inv := e.mem.Inventory(id); len(inv.Nodes) != 0 {
		t.Errorf("cleanup left %d nodes", len(inv.Nodes))
	}
	e.noLeases(t, scheduler.LeaseCleanup)

	e.deadLease(t, scheduler.LeaseCleanup, id, 1)
	if restarted, err := e.h.RestartOnce(ctx); err != nil || !slices.Equal(restarted, []string{id}) {
		t.Fatalf("restart of an ended session's cleanup: %v %v", restarted, err)
	}
	if err := e.h.Cleanup(ctx, roundTask(t, scheduler.NewCleanupRoundTask, id, "deadline", 2)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateExpired || s.CleanupRestarts != 2 {
		t.Fatalf("after round 2: %s cleanup restarts=%d", s.Status, s.CleanupRestarts)
	}
	e.noLeases(t, scheduler.LeaseCleanup)
}

// TestArchiveOfAnEarlierRoundDoesNothing: an archive restarted before
// its first run began (the worker died having taken its lease) leaves
// that run, when the queue runs it, nothing to do.
func TestArchiveOfAnEarlierRoundDoesNothing(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	// The sweep restarted the archive while round 0 was about to run:
	// round 0 finds itself of an earlier round.
	if _, err := scheduler.RestartArchive(ctx, e.store, e.enq, id, 0); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != session.StateSubmitted || e.flaky.Calls("Capture") != 0 {
		t.Fatalf("the taken-over run acted: %s, %d captures", s.Status, e.flaky.Calls("Capture"))
	}
}

package scheduler_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
)

// provisions records the provisions the admission enqueues, once per
// session as the task id would.
type provisions struct {
	mu   sync.Mutex
	ids  []string
	fail bool
}

func (p *provisions) Provision(_ context.Context, id string, _ int) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail {
		return false, errors.New("redis went away")
	}
	if slices.Contains(p.ids, id) {
		return false, nil
	}
	p.ids = append(p.ids, id)
	return true, nil
}

func (p *provisions) got() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.ids)
}

// line makes a sitting of the given capacity and signs n candidates in.
func line(t *testing.T, maxLabs, capacity, n int) (*store.Store, []string) {
	t.Helper()
	st, err := store.New(store.Options{Dir: t.TempDir(), Redis: redistest.Client(t), MaxLabs: maxLabs})
	if err != nil {
		t.Fatal(err)
	}
	storetest.OpenSitting(t, st, "sit", "exam1", capacity)
	var ids []string
	for i := range n {
		sess, _ := storetest.SignInTo(t, st, "sit", fmt.Sprintf("c%d@example.com", i+1), "exam1", time.Hour, "docker")
		ids = append(ids, sess.ID)
	}
	return st, ids
}

func statuses(t *testing.T, st *store.Store, ids ...string) []session.State {
	t.Helper()
	var out []session.State
	for _, id := range ids {
		sess, err := st.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sess.Status)
	}
	return out
}

func position(t *testing.T, st *store.Store, id string) int {
	t.Helper()
	sess, err := st.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	p, ok, err := st.QueuePlace(context.Background(), sess)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return 0
	}
	return p.Position
}

var (
	t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	t1 = t0.Add(time.Minute)
	t2 = t0.Add(time.Hour)
)

const (
	Q = session.StateQueued
	P = session.StateProvisioning
	F = session.StateFailed
)

// TestStartWaitsForASlot: capacity 2, five starts: two are admitted with
// their provision queued, three wait at 1, 2, 3 and none fails; a
// duplicate start keeps its place; each release admits the next.
func TestStartWaitsForASlot(t *testing.T) {
	st, ids := line(t, 0, 2, 5)
	q := &provisions{}
	ctx := context.Background()
	for i, id := range ids {
		sess, err := scheduler.Start(ctx, st, q, id, t0.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatalf("start %d: %v", i, err)
		}
		if want := []session.State{P, P, Q, Q, Q}[i]; sess.Status != want {
			t.Fatalf("start %d: %s, want %s", i, sess.Status, want)
		}
	}
	if got := q.got(); !slices.Equal(got, ids[:2]) {
		t.Fatalf("provisions %v, want the first two", got)
	}
	for i, want := range []int{1, 2, 3} {
		if got := position(t, st, ids[2+i]); got != want {
			t.Fatalf("start %d at %d, want %d", 2+i, got, want)
		}
	}
	// A duplicate start, later, keeps its place.
	if sess, err := scheduler.Start(ctx, st, q, ids[3], t0.Add(time.Hour)); err != nil || sess.Status != Q || position(t, st, ids[3]) != 2 {
		t.Fatalf("duplicate start: %v %v at %d", sess, err, position(t, st, ids[3]))
	}
	for i := range 3 {
		if err := scheduler.Release(ctx, st, q, ids[i], t0.Add(time.Minute)); err != nil {
			t.Fatal(err)
		}
		if got := q.got(); !slices.Equal(got, ids[:3+i]) {
			t.Fatalf("after release %d: provisions %v", i, got)
		}
	}
	if got := statuses(t, st, ids[2:]...); !slices.Equal(got, []session.State{P, P, P}) {
		t.Fatalf("after three releases: %v", got)
	}
}

// TestAdmissionAdminAndLeaving: an admin admits beyond the capacity or
// removes a candidate from the line; a session submitted while it waited
// gives its slot straight back when the line reaches it.
func TestAdmissionAdminAndLeaving(t *testing.T) {
	st, ids := line(t, 0, 1, 5)
	q := &provisions{}
	ctx := context.Background()
	for i, id := range ids {
		if _, err := scheduler.Start(ctx, st, q, id, t0.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	// The last in line is admitted now, beyond the capacity of one.
	sess, err := scheduler.AdmitNow(ctx, st, q, ids[3], t1)
	if err != nil || sess.Status != P || !sess.AdmittedAt.Equal(t1) {
		t.Fatalf("admit now: %+v %v", sess, err)
	}
	if _, err := scheduler.AdmitNow(ctx, st, q, ids[0], t1); err != nil {
		t.Fatalf("admitting an admitted session again: %v", err)
	}
	// The second is removed from the line, with the reason.
	sess, err = scheduler.Withdraw(ctx, st, ids[1], "asked to leave", t1)
	if err != nil || sess.Status != F || sess.Error != "removed from the queue by the exam staff: asked to leave" {
		t.Fatalf("withdraw: %+v %v", sess, err)
	}
	if _, err := scheduler.Withdraw(ctx, st, ids[0], "", t1); !errors.Is(err, scheduler.ErrNotQueuedForAdmission) {
		t.Fatalf("withdrawing an admitted session: %v", err)
	}
	if _, err := scheduler.AdmitNow(ctx, st, q, ids[1], t1); !errors.Is(err, scheduler.ErrNotQueuedForAdmission) {
		t.Fatalf("admitting a removed session: %v", err)
	}
	if got := position(t, st, ids[2]); got != 1 {
		t.Fatalf("third at %d, want 1 once the second was removed", got)
	}
	// The third is submitted while it waits (an admin's force submit): it
	// leaves the line at once.
	if _, _, err := scheduler.Submit(ctx, st, nopArchive{}, ids[2], session.ByAdmin, t1); err != nil {
		t.Fatal(err)
	}
	if got := position(t, st, ids[4]); got != 1 {
		t.Fatalf("fifth at %d, want 1 once the third was submitted", got)
	}
	// The fifth is submitted by a process that died before taking it out
	// of the line: when the line reaches it, it gives the slot straight back.
	if _, err := st.Update(ctx, ids[4], func(x *session.Session) error { _, err := x.Submit(session.ByAdmin, t1); return err }); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{ids[0], ids[3]} {
		if err := scheduler.Release(ctx, st, q, id, t2); err != nil {
			t.Fatal(err)
		}
	}
	if got := q.got(); slices.Contains(got, ids[2]) || slices.Contains(got, ids[4]) {
		t.Fatalf("a submitted session was provisioned: %v", got)
	}
	qs, err := st.Queue(ctx)
	if err != nil || qs.Running != 0 || qs.Queued != 0 {
		t.Fatalf("queue = %+v %v, want it empty", qs, err)
	}
}

type nopArchive struct{}

func (nopArchive) Archive(context.Context, string, string) (bool, error) { return true, nil }

// TestRepairFinishesAdmissions: a process that gave slots and died before
// recording them, or before queuing the provision, loses no one: the
// admission sweep rolls both forward.
func TestRepairFinishesAdmissions(t *testing.T) {
	st, ids := line(t, 0, 2, 3)
	ctx := context.Background()
	down := &provisions{fail: true}
	for i, id := range ids {
		if _, err := scheduler.Start(ctx, st, down, id, t0.Add(time.Duration(i)*time.Second)); err != nil && !errors.Is(err, scheduler.ErrNotQueued) {
			t.Fatalf("start %d: %v", i, err)
		}
	}
	// The first was admitted but its provision never got queued.
	if got := statuses(t, st, ids...); !slices.Equal(got, []session.State{P, P, Q}) {
		t.Fatalf("after starts with the task queue down: %v", got)
	}
	// A lab ends and a pass gives its slot out, then dies unrecorded.
	if _, err := st.Update(ctx, ids[1], func(x *session.Session) error { return x.WalkTo(session.StateCompleted, t1) }); err != nil {
		t.Fatal(err)
	}
	if _, err := st.ReleaseSlot(ctx, ids[1]); err != nil {
		t.Fatal(err)
	}
	if adm, err := st.AdmitNext(ctx); err != nil || len(adm) != 1 || adm[0].SessionID != ids[2] {
		t.Fatalf("admit: %+v %v", adm, err)
	}
	q := &provisions{}
	rep, admitted, err := scheduler.Repair(ctx, st, q, t2)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(rep.Unrecorded, ids[2:]) || !slices.Equal(admitted, ids[2:]) {
		t.Fatalf("repair: %+v, admitted %v", rep, admitted)
	}
	if got := q.got(); !slices.Contains(got, ids[0]) || !slices.Contains(got, ids[2]) {
		t.Fatalf("provisions after the sweep: %v", got)
	}
	if got := statuses(t, st, ids[2]); got[0] != P {
		t.Fatalf("unrecorded admission is %s after the sweep", got[0])
	}
}

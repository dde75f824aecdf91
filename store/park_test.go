package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// TestAdmissionHold runs the hold's rules on a real Redis: a parked start
// goes back to its place and holds admission; a slot given back lifts a
// no-capacity hold to one probe; the probe's end passes it on; with
// nobody waiting the hold goes; the records rebuild the same keys.
func TestAdmissionHold(t *testing.T) {
	ctx := context.Background()
	s, _ := queueStore(t, 0)
	openSitting(t, s, "sit", 0)
	ids := make([]string, 4)
	for i, name := range []string{"lab", "a", "b", "c"} {
		ids[i] = signedIn(t, s, "sit", name).ID
	}
	running(t, s, ids[0])
	lab, a, b, c := ids[0], ids[1], ids[2], ids[3]
	startAt(t, s, a, q0)
	if got := admitAll(t, s); !slices.Equal(got, []string{a}) {
		t.Fatalf("admitted %v, want a", got)
	}
	sa, err := s.Get(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	startAt(t, s, b, q0.Add(time.Second))
	startAt(t, s, c, q0.Add(2*time.Second))
	// b and c waited for no slot: nothing limits them, so they would be
	// admitted; a parks before that pass.
	if err := s.ParkSlot(ctx, sa, session.ParkNoCapacity, "cpu exhausted"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, a, func(x *session.Session) error { return x.Park(session.ParkNoCapacity, "cpu exhausted", q0) }); err != nil {
		t.Fatal(err)
	}
	if got := positions(t, s, a, b, c); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("positions %v, want the parked start first", got)
	}
	if got := admitAll(t, s); len(got) != 0 {
		t.Fatalf("admitted %v under a hold, want nobody", got)
	}
	rep, err := s.RepairQueue(ctx)
	if err != nil || len(rep.Fixed) != 0 || len(rep.Unrecorded) != 0 {
		t.Fatalf("repair of a parked start: %+v %v, want nothing to fix", rep, err)
	}
	q, err := s.Queue(ctx)
	if err != nil || q.Hold == nil || q.Hold.Reason != session.ParkNoCapacity || q.Hold.Detail != "cpu exhausted" || q.Running != 1 {
		t.Fatalf("queue %+v %v, want the hold and one lab running", q, err)
	}

	// The lab ends: its slot lifts the hold to one probe, the parked a.
	if _, err := s.ReleaseSlot(ctx, lab); err != nil {
		t.Fatal(err)
	}
	if got := admitAll(t, s); !slices.Equal(got, []string{a}) {
		t.Fatalf("admitted %v after a lab ended, want a alone", got)
	}
	if h, ok, _ := s.AdmissionHold(ctx); !ok || h.State != store.HoldProbing || h.Probe != a {
		t.Fatalf("hold %+v, want a probing", h)
	}
	if ended, err := s.EndProbe(ctx, b); err != nil || ended {
		t.Fatalf("b ended a's probe: %v %v", ended, err)
	}
	if ended, err := s.EndProbe(ctx, a); err != nil || !ended {
		t.Fatalf("a's probe did not end: %v %v", ended, err)
	}
	if got := admitAll(t, s); !slices.Equal(got, []string{b}) {
		t.Fatalf("admitted %v, want b alone next", got)
	}
	// b leaves while probing (submitted): the probe passes to c, the last.
	if _, err := s.ReleaseSlot(ctx, b); err != nil {
		t.Fatal(err)
	}
	if got := admitAll(t, s); !slices.Equal(got, []string{c}) {
		t.Fatalf("admitted %v, want c", got)
	}
	if _, err := s.EndProbe(ctx, c); err != nil {
		t.Fatal(err)
	}
	if got := admitAll(t, s); len(got) != 0 {
		t.Fatalf("admitted %v with nobody waiting", got)
	}
	if _, ok, _ := s.AdmissionHold(ctx); ok {
		t.Fatal("the hold stays with nobody waiting")
	}
}

// TestUnavailableHoldOpens: an unavailable hold lifted open admits every
// waiting start at once, in line order.
func TestUnavailableHoldOpens(t *testing.T) {
	ctx := context.Background()
	s, _ := queueStore(t, 0)
	openSitting(t, s, "sit", 0)
	a, b := signedIn(t, s, "sit", "a").ID, signedIn(t, s, "sit", "b").ID
	startAt(t, s, a, q0)
	admitAll(t, s)
	sa, _ := s.Get(ctx, a)
	startAt(t, s, b, q0.Add(time.Second))
	if err := s.ParkSlot(ctx, sa, session.ParkUnavailable, "connection refused"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, a, func(x *session.Session) error { return x.Park(session.ParkUnavailable, "connection refused", q0) }); err != nil {
		t.Fatal(err)
	}
	if lifted, err := s.LiftHold(ctx, session.ParkNoCapacity, true); err != nil || lifted {
		t.Fatalf("a no-capacity lift took an unavailable hold: %v %v", lifted, err)
	}
	if lifted, err := s.LiftHold(ctx, session.ParkUnavailable, true); err != nil || !lifted {
		t.Fatalf("lift: %v %v", lifted, err)
	}
	if got := admitAll(t, s); !slices.Equal(got, []string{a, b}) {
		t.Fatalf("admitted %v, want a then b", got)
	}
}

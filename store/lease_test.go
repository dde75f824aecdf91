package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/examlab/examlab/store"
)

// TestWorkLeases runs a lease's life on a real Redis: held while renewed,
// run out once its holder stops, claimed by one sweep only, taken over by
// a later run (whose predecessor's renewal then fails), released by its
// holder alone.
func TestWorkLeases(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newStore(t)
	const id, other = "abcdefgh2345", "zyxwvuts2345"
	// Renewals come at a sixth of the ttl, so that a loaded machine's late
	// wake-ups do not let a renewed lease run out.
	const ttl = 600 * time.Millisecond

	if _, err := s.TakeLease(ctx, "provision", "../x", 0, ttl); !errors.Is(err, store.ErrBadID) {
		t.Fatalf("lease of a bad id: %v", err)
	}
	l, err := s.TakeLease(ctx, "provision", id, 2, ttl)
	if err != nil {
		t.Fatal(err)
	}
	idle, err := s.TakeLease(ctx, "provision", other, 0, ttl)
	if err != nil {
		t.Fatal(err)
	}
	// Renewed past its TTL, it never runs out; the idle one does.
	for range 8 {
		time.Sleep(ttl / 6)
		if held, err := l.Renew(ctx); err != nil || !held {
			t.Fatalf("renew: %v %v", held, err)
		}
	}
	exp, err := s.ExpiredLeases(ctx, "provision", 10)
	if err != nil || len(exp) != 1 || exp[0].ID != other || exp[0].Round != 0 {
		t.Fatalf("run out: %+v %v, want only %s", exp, err, other)
	}
	if got, err := s.ExpiredLeases(ctx, "archive", 10); err != nil || len(got) != 0 {
		t.Fatalf("another operation's leases: %+v %v", got, err)
	}

	// Two sweeps claim it; one gets it. The claim is a lease in turn: it
	// keeps others off until it runs out.
	c1, ok1, err1 := s.ClaimLease(ctx, exp[0], time.Minute)
	_, ok2, err2 := s.ClaimLease(ctx, exp[0], time.Minute)
	if err1 != nil || err2 != nil || !ok1 || ok2 {
		t.Fatalf("claims: %v %v / %v %v, want the first only", ok1, err1, ok2, err2)
	}
	if got, _ := s.ExpiredLeases(ctx, "provision", 10); len(got) != 0 {
		t.Fatalf("a claimed lease is listed as run out: %+v", got)
	}
	// Its old holder, back, finds it gone and cannot release it.
	if held, err := idle.Renew(ctx); err != nil || held {
		t.Fatalf("renew of a claimed lease: %v %v", held, err)
	}
	if err := idle.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c1.Release(ctx); err != nil {
		t.Fatal(err)
	}

	// A later run of the same session takes the lease over.
	next, err := s.TakeLease(ctx, "provision", id, 3, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if held, err := l.Renew(ctx); err != nil || held {
		t.Fatalf("renew after a takeover: %v %v", held, err)
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	exp, err = s.ExpiredLeases(ctx, "provision", 10)
	if err != nil || len(exp) != 1 || exp[0].ID != id || exp[0].Round != 3 {
		t.Fatalf("the later run's lease (left to run out): %+v %v", exp, err)
	}
	// A claim of a lease renewed after the sweep listed it fails.
	if held, err := next.Renew(ctx); err != nil || !held {
		t.Fatalf("late renew: %v %v", held, err)
	}
	if _, ok, err := s.ClaimLease(ctx, exp[0], time.Minute); err != nil || ok {
		t.Fatalf("claim of a renewed lease: %v %v", ok, err)
	}
	if err := next.Release(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl + 50*time.Millisecond)
	if got, _ := s.ExpiredLeases(ctx, "provision", 10); len(got) != 0 {
		t.Fatalf("released leases listed: %+v", got)
	}
}

// TestOpLockRenewed: a renewed lock outlives its ttl while its holder
// works; one whose holder stopped frees itself a ttl later, and its old
// holder, back, finds it gone and cannot unlock the next holder's.
func TestOpLockRenewed(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newStore(t)
	const id = "abcdefgh2345"
	const ttl = 600 * time.Millisecond
	l, err := s.TryLock(ctx, "snapshot", id, ttl)
	if err != nil {
		t.Fatal(err)
	}
	for range 8 {
		time.Sleep(ttl / 6)
		if held, err := l.Renew(ctx); err != nil || !held {
			t.Fatalf("renew: %v %v", held, err)
		}
	}
	if _, err := s.TryLock(ctx, "snapshot", id, ttl); !errors.Is(err, store.ErrBusy) {
		t.Fatalf("second lock while held: %v", err)
	}
	time.Sleep(ttl + 50*time.Millisecond) // the holder stopped
	next, err := s.TryLock(ctx, "snapshot", id, time.Minute)
	if err != nil {
		t.Fatalf("lock after the holder stopped: %v", err)
	}
	if held, err := l.Renew(ctx); err != nil || held {
		t.Fatalf("the old holder's renew: %v %v", held, err)
	}
	l.Unlock(ctx)
	if _, err := s.TryLock(ctx, "snapshot", id, ttl); !errors.Is(err, store.ErrBusy) {
		t.Fatalf("the old holder unlocked the next one's lock: %v", err)
	}
	next.Unlock(ctx)
	if again, err := s.TryLock(ctx, "snapshot", id, ttl); err != nil {
		t.Fatalf("lock after unlock: %v", err)
	} else {
		again.Unlock(ctx)
	}
}

package store_test

import (
	"context"
	"errors"
	"os"
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
	// A run of an earlier round (one that read the record before a restart
	// moved it on) is refused and leaves the later round's lease alone.
	if _, err := s.TakeLease(ctx, "provision", id, 2, ttl); !errors.Is(err, store.ErrLaterRound) {
		t.Fatalf("lease of an earlier round: %v, want ErrLaterRound", err)
	}
	if held, err := next.Renew(ctx); err != nil || !held {
		t.Fatalf("the later round's lease after an earlier round tried to take it: %v %v", held, err)
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

// TestLockUnderLease: a lock taken under a work lease is freed by whoever
// claims the lease once it ran out, and only then; a plain lock, or one
// under another lease, is left alone. Leased lists the sessions with a
// lease until each is released.
func TestLockUnderLease(t *testing.T) {
	ctx := context.Background()
	s, _, _ := newStore(t)
	const id = "abcdefgh2345"
	dead, err := s.TakeLease(ctx, "archive", id, 0, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryLockUnder(ctx, "snapshot", dead, time.Minute); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TryLock(ctx, "snapshot", id, time.Minute); !errors.Is(err, store.ErrBusy) {
		t.Fatalf("lock while the leased one is held: %v", err)
	}
	if ids, err := s.Leased(ctx, "archive"); err != nil || len(ids) != 1 || ids[0] != id {
		t.Fatalf("leased: %v %v", ids, err)
	}
	time.Sleep(100 * time.Millisecond)
	expired, err := s.ExpiredLeases(ctx, "archive", 10)
	if err != nil || len(expired) != 1 {
		t.Fatalf("expired: %+v %v", expired, err)
	}
	// Another lock of the session, taken plainly, is not the lease's.
	if freed, err := s.FreeLockOf(ctx, "other", expired[0]); err != nil || freed {
		t.Fatalf("freed a lock the lease never took: %v %v", freed, err)
	}
	claim, ok, err := s.ClaimLease(ctx, expired[0], time.Minute)
	if err != nil || !ok {
		t.Fatalf("claim: %v %v", ok, err)
	}
	if freed, err := s.FreeLockOf(ctx, "snapshot", expired[0]); err != nil || !freed {
		t.Fatalf("free the dead holder's lock: %v %v", freed, err)
	}
	next, err := s.TryLock(ctx, "snapshot", id, time.Minute)
	if err != nil {
		t.Fatalf("lock after the dead holder's was freed: %v", err)
	}
	// A second free (another sweep, late) leaves the new holder's lock.
	if freed, err := s.FreeLockOf(ctx, "snapshot", expired[0]); err != nil || freed {
		t.Fatalf("freed the next holder's lock: %v %v", freed, err)
	}
	next.Unlock(ctx)
	if err := claim.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if ids, err := s.Leased(ctx, "archive"); err != nil || len(ids) != 0 {
		t.Fatalf("leased after release: %v %v", ids, err)
	}
}

// TestRemoveTemps: the temp files of killed writers go, whole files stay.
func TestRemoveTemps(t *testing.T) {
	s, _, _ := newStore(t)
	const id = "abcdefgh2345"
	whole, err := s.Path(id, store.SnapshotDir, "exam-abcdefgh-tokyo.tar")
	if err != nil {
		t.Fatal(err)
	}
	if err := store.WriteFileAtomic(whole, []byte("whole")); err != nil {
		t.Fatal(err)
	}
	half, err := store.CreateAtomic(whole)
	if err != nil {
		t.Fatal(err)
	}
	half.Write([]byte("ha")) // its writer dies here
	if n, err := s.RemoveTemps(id, store.SnapshotDir); err != nil || n != 1 {
		t.Fatalf("removed %d (%v), want the one temp file", n, err)
	}
	if b, err := os.ReadFile(whole); err != nil || string(b) != "whole" {
		t.Fatalf("the whole file: %q %v", b, err)
	}
	if _, err := os.Stat(half.Name()); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the temp file is still there: %v", err)
	}
	half.Close()
}

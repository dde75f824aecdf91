package store_test

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
)

// warmStore is a store whose exams are at version "v1", with a deployment
// limit of maxLabs.
func warmStore(t *testing.T, maxLabs int) (*store.Store, *redis.Client) {
	t.Helper()
	rdb := redistest.Client(t)
	s, err := store.New(store.Options{Dir: t.TempDir(), Redis: rdb, MaxLabs: maxLabs,
		ExamVersion: func(string) string { return "v1" }})
	if err != nil {
		t.Fatal(err)
	}
	return s, rdb
}

func warmSitting(t *testing.T, s *store.Store, id string, capacity, warm int) {
	t.Helper()
	storetest.OpenSitting(t, s, id, "exam1", capacity)
	if _, err := s.UpdateSitting(context.Background(), id, func(st *sitting.Sitting) error { st.Warm = warm; return nil }); err != nil {
		t.Fatal(err)
	}
}

// readyLab makes a warm lab of version in the sitting's pool and, unless
// making, marks it ready.
func readyLab(t *testing.T, s *store.Store, sittingID, version string, capacity, size int, making bool) string {
	t.Helper()
	ctx := context.Background()
	id, made, err := s.NewWarmLab(ctx, sittingID, "exam1", version, capacity, size)
	if err != nil || !made {
		t.Fatalf("new warm lab: made %v, %v", made, err)
	}
	if !making {
		ok, err := s.WarmReady(ctx, id, []lab.NodeStatus{{Name: "a", State: lab.StateRunning}})
		if err != nil || !ok {
			t.Fatalf("warm lab ready: %v %v", ok, err)
		}
	}
	return id
}

// queueFake puts a queued session in the sitting's line: the admission
// script sees only ids and places.
func queueFake(t *testing.T, s *store.Store, sittingID string, at time.Time) string {
	t.Helper()
	sess := &session.Session{ID: store.NewSessionID(), SittingID: sittingID, Status: session.StateQueued, StartedAt: at}
	if err := s.JoinQueue(context.Background(), sess); err != nil {
		t.Fatal(err)
	}
	return sess.ID
}

// TestWarmClaimRace runs two admitting processes and a remover against
// one pool, many times: a lab is never given to two sessions, never both
// given out and removed, never given when it is making or of an old exam
// version, and the sitting's slots never exceed its capacity.
func TestWarmClaimRace(t *testing.T) {
	s, rdb := warmStore(t, 0)
	ctx := context.Background()
	const capacity = 6
	for i := range 40 {
		sid := fmt.Sprintf("race-%d", i)
		warmSitting(t, s, sid, capacity, 4)
		var ready []string
		for range 3 {
			ready = append(ready, readyLab(t, s, sid, "v1", capacity, 4, false))
		}
		making := readyLab(t, s, sid, "v1", capacity, 4, true)
		old := readyLab(t, s, sid, "v0", capacity, 4, false)
		for j := range 6 {
			queueFake(t, s, sid, q0.Add(time.Duration(j)*time.Second))
		}
		var (
			mu      sync.Mutex
			got     []store.Admission
			removed = map[string]bool{}
			wg      sync.WaitGroup
		)
		for range 2 {
			wg.Go(func() {
				for range 5 {
					adm, err := s.AdmitNext(ctx)
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					got = append(got, adm...)
					mu.Unlock()
				}
			})
		}
		wg.Go(func() {
			for _, id := range ready[1:] {
				ok, err := s.RemoveWarm(ctx, id, "", "")
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				removed[id] = ok
				mu.Unlock()
			}
		})
		wg.Wait()

		given := map[string]string{}
		for _, a := range got {
			if a.SittingID != sid {
				continue
			}
			if a.WarmLab == "" {
				continue
			}
			if prev, dup := given[a.WarmLab]; dup {
				t.Fatalf("round %d: lab %s given to %s and %s", i, a.WarmLab, prev, a.SessionID)
			}
			given[a.WarmLab] = a.SessionID
			if a.WarmLab == making || a.WarmLab == old {
				t.Fatalf("round %d: lab %s handed out (making %s, old version %s)", i, a.WarmLab, making, old)
			}
			if removed[a.WarmLab] {
				t.Fatalf("round %d: lab %s both removed and given to %s", i, a.WarmLab, a.SessionID)
			}
			w, err := s.WarmLab(ctx, a.WarmLab)
			if err != nil || w.State != store.WarmClaimed || w.ClaimedBy != a.SessionID {
				t.Fatalf("round %d: claimed lab record %+v, %v", i, w, err)
			}
			if claim, _ := s.WarmClaimOf(ctx, a.SessionID); claim != a.WarmLab {
				t.Fatalf("round %d: claim of %s on record is %q, want %s", i, a.SessionID, claim, a.WarmLab)
			}
		}
		if _, ok := given[ready[0]]; !ok {
			t.Fatalf("round %d: the first ready lab was not claimed: %v", i, given)
		}
		for _, id := range ready[1:] {
			if _, ok := given[id]; !ok && !removed[id] {
				t.Fatalf("round %d: lab %s neither claimed nor removed", i, id)
			}
		}
		held, err := rdb.SCard(ctx, "examlab:queue:held:"+sid).Result()
		if err != nil {
			t.Fatal(err)
		}
		if held > capacity {
			t.Fatalf("round %d: %d slots held, capacity %d", i, held, capacity)
		}
	}
}

// TestWarmSlots: a warm lab holds a slot of its sitting and of the
// deployment; the pool fills only as far as slots are free and never
// past its size; a claim moves the slot to the session without a free
// one; a removal gives it back.
func TestWarmSlots(t *testing.T) {
	s, rdb := warmStore(t, 3)
	ctx := context.Background()
	warmSitting(t, s, "slots", 0, 5)
	var labs []string
	for {
		id, made, err := s.NewWarmLab(ctx, "slots", "exam1", "v1", 0, 5)
		if err != nil {
			t.Fatal(err)
		}
		if !made {
			break
		}
		labs = append(labs, id)
	}
	if len(labs) != 3 {
		t.Fatalf("the pool took %d labs under a deployment limit of 3", len(labs))
	}
	for _, id := range labs {
		if ok, err := s.WarmReady(ctx, id, nil); err != nil || !ok {
			t.Fatal(ok, err)
		}
	}
	sess := queueFake(t, s, "slots", q0)
	adm, err := s.AdmitNext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(adm) != 1 || adm[0].SessionID != sess || !slices.Contains(labs, adm[0].WarmLab) {
		t.Fatalf("admission with every slot held by the pool: %+v, want %s claiming one of %v", adm, sess, labs)
	}
	// labs[0] is the claimed one from here on.
	i := slices.Index(labs, adm[0].WarmLab)
	labs[0], labs[i] = labs[i], labs[0]
	if n := rdb.SCard(ctx, "examlab:queue:held").Val(); n != 3 {
		t.Fatalf("after a claim %d slots are held, want 3 (moved, not added)", n)
	}
	// A full pool of its size takes no more.
	if _, made, _ := s.NewWarmLab(ctx, "slots", "exam1", "v1", 0, 2); made {
		t.Fatal("a pool of 2 ready labs made a third")
	}
	if ok, err := s.RemoveWarm(ctx, labs[1], "", ""); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if n := rdb.SCard(ctx, "examlab:queue:held").Val(); n != 2 {
		t.Fatalf("after a removal %d slots are held, want 2", n)
	}
	// A claimed lab is never removed by the pool.
	if ok, _ := s.RemoveWarm(ctx, labs[0], "", ""); ok {
		t.Fatal("a claimed lab was removed")
	}
	// The admission sweep leaves the warm labs' slots alone.
	if _, err := s.RepairQueue(ctx); err != nil {
		t.Fatal(err)
	}
	if !rdb.SIsMember(ctx, "examlab:queue:held", labs[2]).Val() {
		t.Fatal("the admission sweep took a ready warm lab's slot")
	}
	stats, claims, err := s.WarmStats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if stats["slots"].Ready != 1 || claims[store.WarmOutcomeClaimed] != 1 {
		t.Fatalf("stats %+v claims %v", stats, claims)
	}
}

// TestWarmVersionNotClaimed: a lab of another exam version is never
// handed out; the start waits for a slot as without a pool.
func TestWarmVersionNotClaimed(t *testing.T) {
	s, _ := warmStore(t, 0)
	ctx := context.Background()
	warmSitting(t, s, "ver", 1, 1)
	old := readyLab(t, s, "ver", "v0", 1, 1, false)
	queueFake(t, s, "ver", q0)
	adm, err := s.AdmitNext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(adm) != 0 {
		t.Fatalf("admitted %+v with the one slot held by a lab of an old version", adm)
	}
	w, _ := s.WarmLab(ctx, old)
	if w.State != store.WarmReady {
		t.Fatalf("old lab is %s", w.State)
	}
	_, claims, _ := s.WarmStats(ctx)
	if claims[store.WarmOutcomeClaimed] != 0 {
		t.Fatal("claimed counted")
	}
}

// TestWarmCheckAndReplaced: a ready lab's health check is taken once per
// interval, whoever asks, and never for a making lab; a replacement is
// counted once by its reason, a removal that replaces nothing not at all.
func TestWarmCheckAndReplaced(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); defer mu.Unlock(); now = now.Add(d) }
	s, err := store.New(store.Options{Dir: t.TempDir(), Redis: redistest.Client(t), Now: clock,
		ExamVersion: func(string) string { return "v1" }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	warmSitting(t, s, "chk", 0, 4)
	ready := readyLab(t, s, "chk", "v1", 0, 4, false)
	making := readyLab(t, s, "chk", "v1", 0, 4, true)
	const every = 20 * time.Second
	for i, step := range []struct {
		advance time.Duration
		want    bool
	}{
		{0, false}, // just ready: checked as it came up
		{every - time.Second, false},
		{time.Second, true}, // due
		{0, false},          // taken: a second pass does not check it
		{every / 2, false},
		{every / 2, true},
	} {
		advance(step.advance)
		got, err := s.TakeWarmCheck(ctx, ready, every)
		if err != nil || got != step.want {
			t.Fatalf("step %d: check due %v (%v), want %v", i, got, err, step.want)
		}
		if got, _ := s.TakeWarmCheck(ctx, making, every); got {
			t.Fatalf("step %d: a making lab's check was due", i)
		}
	}
	if w, _ := s.WarmLab(ctx, ready); !w.CheckedAt.Equal(clock()) {
		t.Fatalf("checked at %v, want %v", w.CheckedAt, clock())
	}

	if ok, err := s.RemoveWarm(ctx, ready, store.WarmReady, store.WarmReplacedBroken); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if got, _ := s.TakeWarmCheck(ctx, ready, 0); got {
		t.Fatal("a removed lab's check was due")
	}
	// A second remover finds it removing: the lab is its to destroy too,
	// but the replacement is counted once.
	if ok, err := s.RemoveWarm(ctx, ready, "", store.WarmReplacedBroken); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if ok, _ := s.RemoveWarm(ctx, making, store.WarmReady, store.WarmReplacedBroken); ok {
		t.Fatal("a making lab was removed as a ready one")
	}
	if ok, err := s.RemoveWarm(ctx, making, "", ""); err != nil || !ok {
		t.Fatal(ok, err)
	}
	got, err := s.WarmReplacements(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int64{store.WarmReplacedBroken: 1}
	for _, r := range store.WarmReplacedReasons {
		if got[r] != want[r] {
			t.Errorf("replaced %s: %d, want %d", r, got[r], want[r])
		}
	}
	if len(got) != len(store.WarmReplacedReasons) {
		t.Errorf("replacements %v: want exactly the reasons %v", got, store.WarmReplacedReasons)
	}
}

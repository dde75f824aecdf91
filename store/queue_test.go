package store_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
)

var q0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

// queueStore is a store with a deployment limit of maxLabs.
func queueStore(t *testing.T, maxLabs int) (*store.Store, *redis.Client) {
	t.Helper()
	rdb := redistest.Client(t)
	s, err := store.New(store.Options{Dir: t.TempDir(), Redis: rdb, MaxLabs: maxLabs})
	if err != nil {
		t.Fatal(err)
	}
	return s, rdb
}

func openSitting(t *testing.T, s *store.Store, id string, capacity int) {
	t.Helper()
	storetest.OpenSitting(t, s, id, "exam1", capacity)
}

func signedIn(t *testing.T, s *store.Store, sittingID, name string) *session.Session {
	t.Helper()
	sess, _ := storetest.SignInTo(t, s, sittingID, name+"@example.com", "exam1", time.Hour, "docker")
	return sess
}

// startAt records a start at `at` and puts the session in its line, the
// way scheduler.Start does before its admission pass.
func startAt(t *testing.T, s *store.Store, id string, at time.Time) *session.Session {
	t.Helper()
	ctx := context.Background()
	sess, err := s.Update(ctx, id, func(x *session.Session) error { return x.Start(at) })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.JoinQueue(ctx, sess); err != nil {
		t.Fatal(err)
	}
	return sess
}

// running walks a session to ready and gives it a slot: a lab that runs.
func running(t *testing.T, s *store.Store, id string) {
	t.Helper()
	ctx := context.Background()
	sess, err := s.Update(ctx, id, func(x *session.Session) error { return x.WalkTo(session.StateReady, q0) })
	if err != nil {
		t.Fatal(err)
	}
	if err := s.TakeSlot(ctx, sess); err != nil {
		t.Fatal(err)
	}
}

// TestAdmitNext runs the admission rule on a real Redis for a table of
// lines: who gets a slot, and in what order.
func TestAdmitNext(t *testing.T) {
	type start struct {
		name, sitting string
		at            time.Duration // after q0
	}
	tests := []struct {
		name     string
		maxLabs  int
		capacity map[string]int
		running  []start // labs up before the pass
		starts   []start
		want     []string
	}{
		{
			name:     "capacity 2, five starts: the first two",
			capacity: map[string]int{"sa": 2},
			starts:   []start{{"s1", "sa", 1}, {"s2", "sa", 2}, {"s3", "sa", 3}, {"s4", "sa", 4}, {"s5", "sa", 5}},
			want:     []string{"s1", "s2"},
		},
		{
			name:     "first come, first served: by start time, not sign-in order",
			capacity: map[string]int{"sa": 2},
			starts:   []start{{"late", "sa", 9}, {"early", "sa", 1}, {"middle", "sa", 5}},
			want:     []string{"early", "middle"},
		},
		{
			name:     "running labs count against the capacity",
			capacity: map[string]int{"sa": 2},
			running:  []start{{"up", "sa", 0}},
			starts:   []start{{"s1", "sa", 1}, {"s2", "sa", 2}},
			want:     []string{"s1"},
		},
		{
			name:     "deployment limit across sittings: oldest first",
			maxLabs:  3,
			capacity: map[string]int{"sa": 0, "sb": 0},
			starts:   []start{{"a1", "sa", 1}, {"b1", "sb", 2}, {"a2", "sa", 3}, {"b2", "sb", 4}},
			want:     []string{"a1", "b1", "a2"},
		},
		{
			name:     "a full sitting does not hold up another",
			capacity: map[string]int{"sa": 1, "sb": 0},
			running:  []start{{"up", "sa", 0}},
			starts:   []start{{"a1", "sa", 1}, {"b1", "sb", 2}},
			want:     []string{"b1"},
		},
		{
			name:     "capacity and deployment limit together",
			maxLabs:  3,
			capacity: map[string]int{"sa": 1, "sb": 5},
			running:  []start{{"up", "sb", 0}},
			starts:   []start{{"a1", "sa", 1}, {"a2", "sa", 2}, {"b1", "sb", 3}, {"b2", "sb", 4}},
			want:     []string{"a1", "b1"},
		},
		{
			name:     "no limits: everyone at once",
			capacity: map[string]int{"sa": 0},
			starts:   []start{{"s1", "sa", 1}, {"s2", "sa", 2}, {"s3", "sa", 3}},
			want:     []string{"s1", "s2", "s3"},
		},
		{
			name:     "the deployment is full",
			maxLabs:  1,
			capacity: map[string]int{"sa": 0},
			running:  []start{{"up", "sa", 0}},
			starts:   []start{{"s1", "sa", 1}},
			want:     nil,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := queueStore(t, tc.maxLabs)
			ctx := context.Background()
			for id, c := range tc.capacity {
				openSitting(t, s, id, c)
			}
			names := map[string]string{}
			for _, r := range tc.running {
				sess := signedIn(t, s, r.sitting, r.name)
				running(t, s, sess.ID)
			}
			for _, st := range tc.starts {
				sess := signedIn(t, s, st.sitting, st.name)
				names[sess.ID] = st.name
				startAt(t, s, sess.ID, q0.Add(st.at*time.Second))
			}
			adm, err := s.AdmitNext(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, a := range adm {
				got = append(got, names[a.SessionID])
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("admitted %v, want %v", got, tc.want)
			}
			// A second pass right away gives out nothing more.
			if again, err := s.AdmitNext(ctx); err != nil || len(again) != 0 {
				t.Fatalf("second pass admitted %v (%v)", again, err)
			}
		})
	}
}

// positions answers each session's place in line, 0 for one not in line.
func positions(t *testing.T, s *store.Store, ids ...string) []int {
	t.Helper()
	ctx := context.Background()
	var out []int
	for _, id := range ids {
		sess, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		p, ok, err := s.QueuePlace(ctx, sess)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			p.Position = 0
		}
		out = append(out, p.Position)
	}
	return out
}

// admitAll records every admission of a pass, as scheduler.Admit does.
func admitAll(t *testing.T, s *store.Store) []string {
	t.Helper()
	ctx := context.Background()
	adm, err := s.AdmitNext(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, a := range adm {
		if _, err := s.Update(ctx, a.SessionID, func(x *session.Session) error { return x.Admit(time.Now()) }); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, a.SessionID)
	}
	return ids
}

// TestPositionsAdvance: capacity 2 and five starts leave three in line at
// 1, 2, 3; as labs end the line moves up; a duplicate start keeps its place.
func TestPositionsAdvance(t *testing.T) {
	s, _ := queueStore(t, 0)
	ctx := context.Background()
	openSitting(t, s, "cap2", 2)
	var ids []string
	for i, n := range []string{"s1", "s2", "s3", "s4", "s5"} {
		ids = append(ids, startAt(t, s, signedIn(t, s, "cap2", n).ID, q0.Add(time.Duration(i)*time.Second)).ID)
	}
	if got := admitAll(t, s); !slices.Equal(got, ids[:2]) {
		t.Fatalf("admitted %v, want the first two", got)
	}
	if got := positions(t, s, ids...); !slices.Equal(got, []int{0, 0, 1, 2, 3}) {
		t.Fatalf("positions %v, want [0 0 1 2 3]", got)
	}
	// A duplicate start of the third keeps its place.
	startAt(t, s, ids[2], q0.Add(time.Hour))
	if got := positions(t, s, ids[2]); got[0] != 1 {
		t.Fatalf("after a duplicate start: position %d, want 1", got[0])
	}
	for round, want := range [][]int{{0, 1, 2}, {0, 0, 1}, {0, 0, 0}} {
		// A lab ends; its slot goes to the head of the line.
		released, err := s.ReleaseSlot(ctx, ids[round])
		if err != nil || !released {
			t.Fatalf("release %d: %v %v", round, released, err)
		}
		if again, err := s.ReleaseSlot(ctx, ids[round]); err != nil || again {
			t.Fatalf("a second release gave back a slot again: %v %v", again, err)
		}
		if got := admitAll(t, s); !slices.Equal(got, ids[2+round:3+round]) {
			t.Fatalf("round %d admitted %v", round, got)
		}
		if got := positions(t, s, ids[2:]...); !slices.Equal(got, want) {
			t.Fatalf("round %d: positions %v, want %v", round, got, want)
		}
	}
	qs, err := s.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if qs.Running != 2 || qs.Queued != 0 || len(qs.Sittings) != 1 || qs.Sittings[0].Running != 2 || qs.Sittings[0].Capacity != 2 {
		t.Fatalf("queue state = %+v", qs)
	}
}

// TestQueueRepairsFromRecords loses the queue keys, leaks a slot, and
// kills an admission between its slot and its record: RepairQueue puts
// everything back from the session records.
func TestQueueRepairsFromRecords(t *testing.T) {
	s, rdb := queueStore(t, 0)
	ctx := context.Background()
	openSitting(t, s, "cap2", 2)
	var ids []string
	for i, n := range []string{"s1", "s2", "s3", "s4", "s5"} {
		ids = append(ids, startAt(t, s, signedIn(t, s, "cap2", n).ID, q0.Add(time.Duration(i)*time.Second)).ID)
	}
	admitAll(t, s)
	before, err := s.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := s.RepairQueue(ctx); err != nil || len(rep.Fixed)+len(rep.Unrecorded) != 0 || len(rep.Provisioning) != 2 {
		t.Fatalf("repair of a sound queue: %+v %v", rep, err)
	}

	// Redis loses every queue key.
	keys, err := rdb.Keys(ctx, "examlab:queue:*").Result()
	if err != nil || len(keys) == 0 {
		t.Fatalf("queue keys: %v %v", keys, err)
	}
	if err := rdb.Del(ctx, keys...).Err(); err != nil {
		t.Fatal(err)
	}
	rep, err := s.RepairQueue(ctx)
	if err != nil || len(rep.Fixed) != 5 {
		t.Fatalf("repair after the keys were lost: %+v %v", rep, err)
	}
	after, err := s.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.Running != after.Running || !sameLines(before, after) {
		t.Fatalf("after repair:\n%+v\nbefore:\n%+v", after, before)
	}

	// A lab ended without giving its slot back.
	if _, err := s.Update(ctx, ids[0], func(x *session.Session) error { return x.WalkTo(session.StateCompleted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.RepairQueue(ctx); err != nil || !slices.Equal(rep.Fixed, []string{ids[0]}) {
		t.Fatalf("repair of a leaked slot: %+v %v", rep, err)
	}
	// An admission pass dies between the slot and the record.
	adm, err := s.AdmitNext(ctx)
	if err != nil || len(adm) != 1 || adm[0].SessionID != ids[2] {
		t.Fatalf("admit after the leak was repaired: %+v %v", adm, err)
	}
	rep, err = s.RepairQueue(ctx)
	if err != nil || !slices.Equal(rep.Unrecorded, []string{ids[2]}) || len(rep.Fixed) != 0 {
		t.Fatalf("repair of an unrecorded admission: %+v %v", rep, err)
	}
	if got := positions(t, s, ids[3], ids[4]); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("positions %v, want [1 2]", got)
	}
	// The whole index rebuilt from the files brings the same back.
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	// s3's admission was never recorded and its slot is gone with the
	// keys: by its record it waits, at the head of the line again.
	if got := positions(t, s, ids[2], ids[3], ids[4]); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("after rebuild-index: positions %v, want [1 2 3]", got)
	}
	qs, _ := s.Queue(ctx)
	if qs.Running != 1 {
		t.Fatalf("after rebuild-index: %d running, want 1 (s2): %+v", qs.Running, qs)
	}
}

func sameLines(a, b store.QueueState) bool {
	if len(a.Sittings) != len(b.Sittings) {
		return false
	}
	for i := range a.Sittings {
		x, y := a.Sittings[i], b.Sittings[i]
		if x.SittingID != y.SittingID || x.Running != y.Running || len(x.Queued) != len(y.Queued) {
			return false
		}
		for j := range x.Queued {
			if x.Queued[j].SessionID != y.Queued[j].SessionID || !x.Queued[j].QueuedAt.Equal(y.Queued[j].QueuedAt) {
				return false
			}
		}
	}
	return true
}

func TestJoinQueueOnlyWhenQueued(t *testing.T) {
	s, _ := queueStore(t, 0)
	openSitting(t, s, "sa", 0)
	sess := signedIn(t, s, "sa", "kim")
	if err := s.JoinQueue(context.Background(), sess); !errors.Is(err, session.ErrNotAllowed) {
		t.Fatalf("a created session joined the queue: %v", err)
	}
}

func TestEstimateWait(t *testing.T) {
	now := q0.Add(time.Hour)
	ago := func(d ...time.Duration) []time.Time {
		var out []time.Time
		for _, x := range d {
			out = append(out, now.Add(-x))
		}
		return out
	}
	tests := []struct {
		name  string
		ahead int
		ends  []time.Time
		want  time.Duration
		ok    bool
	}{
		{"nothing ended yet", 2, nil, 0, false},
		{"one end is no rate", 2, ago(time.Minute), 0, false},
		{"next in line", 0, ago(4*time.Minute, 2*time.Minute), 2 * time.Minute, true},
		{"third in line", 2, ago(4*time.Minute, 2*time.Minute), 6 * time.Minute, true},
		{"order of ends does not matter", 2, ago(2*time.Minute, 4*time.Minute), 6 * time.Minute, true},
		{"rounds up to a second", 0, ago(1500*time.Millisecond, time.Second), time.Second, true},
		{"a quiet spell slows the estimate", 0, ago(60*time.Minute, 59*time.Minute), 30 * time.Minute, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := store.EstimateWait(tc.ahead, tc.ends, now)
			if got != tc.want || ok != tc.ok {
				t.Fatalf("EstimateWait = %v %v, want %v %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

// TestQueuePlaceEstimate: once labs have ended, a queued session gets an
// estimate from how fast slots came free.
func TestQueuePlaceEstimate(t *testing.T) {
	clock := q0
	rdb := redistest.Client(t)
	s, err := store.New(store.Options{Dir: t.TempDir(), Redis: rdb, Now: func() time.Time { return clock }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	openSitting(t, s, "cap1", 1)
	var ids []string
	for i, n := range []string{"s1", "s2", "s3", "s4"} {
		ids = append(ids, startAt(t, s, signedIn(t, s, "cap1", n).ID, q0.Add(time.Duration(i)*time.Second)).ID)
	}
	admitAll(t, s)
	last, _ := s.Get(ctx, ids[3])
	if p, ok, err := s.QueuePlace(ctx, last); err != nil || !ok || p.Position != 3 || p.HasEstimate {
		t.Fatalf("before any lab ended: %+v %v %v", p, ok, err)
	}
	for i := range 2 {
		clock = clock.Add(3 * time.Minute)
		if _, err := s.ReleaseSlot(ctx, ids[i]); err != nil {
			t.Fatal(err)
		}
		admitAll(t, s)
	}
	clock = clock.Add(time.Minute) // ends at +3m and +6m, now +7m
	p, ok, err := s.QueuePlace(ctx, last)
	// One slot came free every 2 minutes lately, and it is next in line.
	if err != nil || !ok || p.Position != 1 || !p.HasEstimate || p.Estimate != 2*time.Minute {
		t.Fatalf("after two ends: %+v %v %v (want next in line, about 2m)", p, ok, err)
	}
}

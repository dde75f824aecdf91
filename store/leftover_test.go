package store_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab/redistest"
)

func netLeftover(name, subnet, msg string) lab.Leftover {
	return lab.Leftover{Kind: lab.LeftoverNetwork, Name: name, ID: "id-" + name, Subnet: subnet, Err: msg}
}

// clockStore is a store on a real Redis whose clock the test moves.
func clockStore(t *testing.T) (*store.Store, *time.Time) {
	t.Helper()
	now := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	s, err := store.New(store.Options{Dir: t.TempDir(), Redis: redistest.Client(t), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return s, &now
}

// TestLeftoversAreKeptUntilGone runs the records' rules on a real Redis:
// a first refusal starts a record, each later one counts an attempt and
// keeps the first-seen time, a part no longer reported is dropped, and
// records of other sessions and runtimes are left alone.
func TestLeftoversAreKeptUntilGone(t *testing.T) {
	ctx := context.Background()
	s, now := clockStore(t)
	const a, b = "aaaaaaaaaaaa", "bbbbbbbbbbbb"
	first := *now

	added, dropped, err := s.NoteLeftovers(ctx, "docker", a, []lab.Leftover{netLeftover("exam-aaaaaaaa-net", "10.213.0.0/26", "has active endpoints")})
	if err != nil || added != 1 || dropped != 0 {
		t.Fatalf("first note: %d added %d dropped %v, want 1 0", added, dropped, err)
	}
	if _, _, err := s.NoteLeftovers(ctx, "docker", b, []lab.Leftover{netLeftover("exam-bbbbbbbb-net", "10.213.0.64/26", "has active endpoints")}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.NoteLeftovers(ctx, "nomad", a, []lab.Leftover{{Kind: lab.LeftoverJob, Name: "exam-aaaaaaaa", Err: "500 no leader"}}); err != nil {
		t.Fatal(err)
	}

	*now = now.Add(time.Minute)
	added, dropped, err = s.NoteLeftovers(ctx, "docker", a, []lab.Leftover{netLeftover("exam-aaaaaaaa-net", "10.213.0.0/26", "still has active endpoints")})
	if err != nil || added != 0 || dropped != 0 {
		t.Fatalf("second note: %d added %d dropped %v, want 0 0", added, dropped, err)
	}
	got, err := s.SessionLeftovers(ctx, a)
	if err != nil || len(got) != 2 {
		t.Fatalf("leftovers of a: %+v %v, want its network and its job", got, err)
	}
	var net store.Leftover
	for _, l := range got {
		if l.Kind == lab.LeftoverNetwork {
			net = l
		}
	}
	want := store.Leftover{SessionID: a, Runtime: "docker", Kind: lab.LeftoverNetwork, Name: "exam-aaaaaaaa-net", ID: "id-exam-aaaaaaaa-net",
		Subnet: "10.213.0.0/26", FirstSeen: first, LastTried: *now, Attempts: 2, LastError: "still has active endpoints"}
	if net != want {
		t.Fatalf("network record\n%+v, want\n%+v", net, want)
	}
	held, err := s.HeldSubnets(ctx)
	slices.Sort(held)
	if err != nil || !slices.Equal(held, []string{"10.213.0.0/26", "10.213.0.64/26"}) {
		t.Fatalf("held subnets %v %v, want both networks'", held, err)
	}

	// The docker removal of a's lab now leaves nothing: only a's docker
	// record goes.
	added, dropped, err = s.NoteLeftovers(ctx, "docker", a, nil)
	if err != nil || added != 0 || dropped != 1 {
		t.Fatalf("clearing note: %d added %d dropped %v, want 0 1", added, dropped, err)
	}
	all, err := s.Leftovers(ctx)
	if err != nil || len(all) != 2 {
		t.Fatalf("all leftovers %+v %v, want b's network and a's nomad job", all, err)
	}
	for _, l := range all {
		if l.Runtime == "docker" && l.SessionID == a {
			t.Fatalf("a's docker record survived its clearing: %+v", l)
		}
	}
	if held, _ := s.HeldSubnets(ctx); !slices.Equal(held, []string{"10.213.0.64/26"}) {
		t.Fatalf("held subnets %v after a's network went, want only b's", held)
	}
	// Clearing again changes nothing.
	if added, dropped, err := s.NoteLeftovers(ctx, "docker", a, nil); err != nil || added != 0 || dropped != 0 {
		t.Fatalf("second clearing: %d %d %v, want nothing to do", added, dropped, err)
	}
	none, err := s.SessionLeftovers(ctx, "cccccccccccc")
	if err != nil || none == nil || len(none) != 0 {
		t.Fatalf("leftovers of a session with none: %#v %v, want an empty list", none, err)
	}
}

// TestLeftoverNotesRefuseBadInput: a malformed id never reaches Redis.
func TestLeftoverNotesRefuseBadInput(t *testing.T) {
	ctx := context.Background()
	s, _ := clockStore(t)
	for _, tc := range []struct{ name, runtime, id string }{
		{"empty id", "docker", ""},
		{"path in id", "docker", "../etc/pass"},
		{"slash in runtime", "dock/er", "aaaaaaaaaaaa"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, err := s.NoteLeftovers(ctx, tc.runtime, tc.id, nil); !errors.Is(err, store.ErrBadID) {
				t.Fatalf("note: %v, want ErrBadID", err)
			}
		})
	}
	if _, err := s.SessionLeftovers(ctx, "../x"); !errors.Is(err, store.ErrBadID) {
		t.Fatalf("session leftovers of a bad id: %v, want ErrBadID", err)
	}
}

// TestConcurrentLeftoverNotesCountEveryAttempt: workers noting the same
// lab at once (a cleanup and a reaper pass) lose no attempt and make one
// record.
func TestConcurrentLeftoverNotesCountEveryAttempt(t *testing.T) {
	ctx := context.Background()
	s, _ := clockStore(t)
	const id, n = "dddddddddddd", 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	added, errs := 0, []error{}
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, _, err := s.NoteLeftovers(ctx, "docker", id, []lab.Leftover{netLeftover("exam-dddddddd-net", "10.213.1.0/26", fmt.Sprint("try ", i))})
			mu.Lock()
			defer mu.Unlock()
			added += a
			if err != nil {
				errs = append(errs, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	got, err := s.SessionLeftovers(ctx, id)
	if err != nil || len(got) != 1 || got[0].Attempts != n || added != 1 {
		t.Fatalf("after %d notes: %+v %v (added %d), want one record of %d attempts added once", n, got, err, added, n)
	}
}

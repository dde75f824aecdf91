package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
)

// Two stores on one Redis stand for two processes (api and worker): what
// one writes, the other's listing shows on its next call, deletions too,
// and a Redis that was emptied and rebuilt does not leave stale rows.
func TestListSeesOtherProcessesChanges(t *testing.T) {
	a, rdb, dir := newStore(t)
	b, err := store.New(store.Options{Dir: dir, Redis: rdb})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ids := map[string]string{}
	for _, email := range []string{"ann@example.com", "bob@example.com", "cy@example.com"} {
		sess, _ := storetest.SignIn(t, a, email, "exam1", time.Hour, "docker")
		ids[email] = sess.ID
	}
	count := func(st *store.Store, status session.State) int {
		t.Helper()
		res, err := st.List(ctx, store.ListQuery{Status: []session.State{status}})
		if err != nil {
			t.Fatal(err)
		}
		return res.Total
	}
	if got := count(b, session.StateCreated); got != 3 {
		t.Fatalf("b lists %d created sessions, want 3", got)
	}

	steps := []struct {
		name   string
		change func() error
		status session.State
		want   int
	}{
		{"a moves one to ready", func() error {
			_, err := a.Update(ctx, ids["bob@example.com"], func(x *session.Session) error { return x.WalkTo(session.StateReady, time.Now()) })
			return err
		}, session.StateReady, 1},
		{"created count drops with it", func() error { return nil }, session.StateCreated, 2},
		{"a deletes one", func() error {
			sess, err := a.Get(ctx, ids["cy@example.com"])
			if err != nil {
				return err
			}
			return a.Delete(ctx, sess)
		}, session.StateCreated, 1},
		{"redis emptied and rebuilt from files", func() error {
			if err := rdb.FlushDB(ctx).Err(); err != nil {
				return err
			}
			_, err := a.Rebuild(ctx)
			return err
		}, session.StateReady, 1},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			if err := st.change(); err != nil {
				t.Fatal(err)
			}
			if got := count(b, st.status); got != st.want {
				t.Fatalf("b lists %d %s sessions, want %d", got, st.status, st.want)
			}
		})
	}
	counts, err := b.CountByStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if counts[session.StateReady] != 1 || counts[session.StateCreated] != 1 || counts[session.StateCompleted] != 0 {
		t.Fatalf("counts = %v", counts)
	}
	if len(counts) != len(session.States) {
		t.Fatalf("counts has %d states, want every one of %d", len(counts), len(session.States))
	}
}

func TestEndedBeforeKeepsLiveAndRecentSessions(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	mk := func(email string, to session.State) string {
		sess, _ := storetest.SignIn(t, s, email, "exam1", time.Hour, "docker")
		if to != session.StateCreated {
			if _, err := s.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(to, time.Now()) }); err != nil {
				t.Fatal(err)
			}
		}
		return sess.ID
	}
	done := mk("done@example.com", session.StateCompleted)
	mk("live@example.com", session.StateReady)
	failed := mk("failed@example.com", session.StateFailed)

	got, err := s.EndedBefore(ctx, time.Now().Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].ID != done || got[1].ID != failed {
		t.Fatalf("ended before now+1m = %+v, want %s then %s", got, done, failed)
	}
	if got, _ := s.EndedBefore(ctx, time.Now().Add(-time.Hour)); len(got) != 0 {
		t.Fatalf("ended before an hour ago = %+v, want none", got)
	}
}

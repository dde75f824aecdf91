package store_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
)

func newSitting(t *testing.T, s *store.Store, id string) *sitting.Sitting {
	t.Helper()
	now := time.Now().UTC()
	st := &sitting.Sitting{ID: id, ExamID: "exam1", Opens: now.Add(-time.Hour), Closes: now.Add(time.Hour), Capacity: 2}
	if err := s.CreateSitting(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	return st
}

func mustNormalize(t *testing.T, code string) string {
	t.Helper()
	n, err := sitting.NormalizeCode(code)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSittingsAndRoster(t *testing.T) {
	s, rdb, dir := newStore(t)
	ctx := context.Background()
	newSitting(t, s, "dec-am")
	if err := s.CreateSitting(ctx, &sitting.Sitting{ID: "dec-am", ExamID: "exam1", Opens: time.Now(), Closes: time.Now().Add(time.Hour)}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	if _, err := s.GetSitting(ctx, "../x"); !errors.Is(err, store.ErrBadID) {
		t.Fatalf("bad id: %v", err)
	}
	if _, err := s.UpdateSitting(ctx, "dec-am", func(x *sitting.Sitting) error { x.Capacity = -3; return nil }); !errors.Is(err, sitting.ErrInvalid) {
		t.Fatalf("invalid update: %v", err)
	}

	rows := []sitting.Row{{Line: 2, Email: "ada@example.com", Name: "Ada"}, {Line: 3, Email: "bob@example.com", Name: "Bob", ExternalID: "B7"}}
	issued, err := s.AddEntries(ctx, "dec-am", rows, false)
	if err != nil || len(issued) != 2 {
		t.Fatalf("add: %v %v", issued, err)
	}
	// The roster file holds hashes only.
	roster, _ := s.Roster(ctx, "dec-am")
	if len(roster) != 2 || roster[0].Email != "ada@example.com" || roster[1].ExternalID != "B7" {
		t.Fatalf("roster = %+v", roster)
	}
	filepath.WalkDir(filepath.Join(dir, "sittings"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			for _, ic := range issued {
				if contains(b, mustNormalize(t, ic.Code)) || contains(b, ic.Code) {
					t.Errorf("%s holds a code in clear", p)
				}
			}
		}
		return nil
	})

	// A code admits its entry; an email already on the roster refuses a
	// whole later import.
	st, e, err := s.EntryByCode(ctx, mustNormalize(t, issued[1].Code))
	if err != nil || st.ID != "dec-am" || e.Email != "bob@example.com" {
		t.Fatalf("EntryByCode = %v %v %v", st, e, err)
	}
	_, err = s.AddEntries(ctx, "dec-am", []sitting.Row{{Line: 2, Email: "cy@example.com", Name: "Cy"}, {Line: 3, Email: "ada@example.com", Name: "Ada"}}, false)
	if !errors.Is(err, sitting.ErrInvalid) {
		t.Fatalf("import with a taken email: %v", err)
	}
	if r, _ := s.Roster(ctx, "dec-am"); len(r) != 2 {
		t.Fatalf("a refused import left %d entries", len(r))
	}
	if _, err := s.EntryByEmail(ctx, "dec-am", "cy@example.com"); !errors.Is(err, store.ErrNoEntry) {
		t.Fatalf("refused row indexed: %v", err)
	}

	// Reissue: the old code stops working at once.
	re, err := s.ReissueCode(ctx, "dec-am", e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EntryByCode(ctx, mustNormalize(t, issued[1].Code)); !errors.Is(err, sitting.ErrUnknownCode) {
		t.Fatalf("old code after reissue: %v", err)
	}
	if _, e2, err := s.EntryByCode(ctx, mustNormalize(t, re.Code)); err != nil || e2.ID != e.ID {
		t.Fatalf("new code: %v %v", e2, err)
	}
	// An entry of another sitting is not this sitting's.
	newSitting(t, s, "dec-pm")
	if _, err := s.ReissueCode(ctx, "dec-pm", e.ID); !errors.Is(err, store.ErrNoEntry) {
		t.Fatalf("reissue through another sitting: %v", err)
	}

	// Export rotates every code.
	all, err := s.ReissueAll(ctx, "dec-am")
	if err != nil || len(all) != 2 {
		t.Fatal(all, err)
	}
	if _, _, err := s.EntryByCode(ctx, mustNormalize(t, re.Code)); !errors.Is(err, sitting.ErrUnknownCode) {
		t.Fatalf("code before the export: %v", err)
	}

	// The index comes back from the files.
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EntryByCode(ctx, mustNormalize(t, all[0].Code)); !errors.Is(err, sitting.ErrUnknownCode) {
		t.Fatalf("after flush: %v", err)
	}
	if _, err := s.Rebuild(ctx); err != nil {
		t.Fatal(err)
	}
	if _, e3, err := s.EntryByCode(ctx, mustNormalize(t, all[0].Code)); err != nil || e3.Email != "ada@example.com" {
		t.Fatalf("after rebuild: %v %v", e3, err)
	}

	// A removed entry's code admits no one; a running session blocks it.
	sess, _, err := s.SignIn(ctx, store.SignIn{SittingID: "dec-am", EntryID: all[0].Entry.ID, ExamID: "exam1", Duration: time.Hour, Runtime: "docker"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateReady, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveEntry(ctx, "dec-am", all[0].Entry.ID); !errors.Is(err, store.ErrLiveSession) {
		t.Fatalf("remove with a running lab: %v", err)
	}
	if err := s.RemoveEntry(ctx, "dec-am", all[1].Entry.ID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.EntryByCode(ctx, mustNormalize(t, all[1].Code)); !errors.Is(err, sitting.ErrUnknownCode) {
		t.Fatalf("removed entry's code: %v", err)
	}
	if r, _ := s.Roster(ctx, "dec-am"); len(r) != 1 {
		t.Fatalf("roster after remove: %d entries", len(r))
	}
}

func contains(b []byte, s string) bool { return bytes.Contains(b, []byte(s)) }

package store_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
)

func newStore(t *testing.T) (*store.Store, *redis.Client, string) {
	t.Helper()
	rdb := redistest.Client(t)
	dir := t.TempDir()
	s, err := store.New(store.Options{Dir: dir, Redis: rdb, MaxAnswerBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	return s, rdb, dir
}

func TestSignInKeepsOneSessionPerEntry(t *testing.T) {
	s, _, dir := newStore(t)
	ctx := context.Background()
	a, tokA := storetest.SignIn(t, s, " Ada@Example.com ", "exam1", time.Hour, "docker")
	if len(a.ID) != 12 || a.Short != a.ID[:8] || a.Email != "ada@example.com" || a.Status != session.StateCreated ||
		a.SittingID != storetest.Sitting || a.EntryID == "" {
		t.Fatalf("session = %+v", a)
	}
	if _, err := os.Stat(filepath.Join(dir, "sessions", a.ID, "metadata.json")); err != nil {
		t.Fatalf("metadata.json not written: %v", err)
	}
	b, tokB := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker")
	if b.ID != a.ID {
		t.Fatalf("second sign-in got session %s, want the entry's %s", b.ID, a.ID)
	}
	for _, tok := range []string{tokA, tokB} {
		got, err := s.ByToken(ctx, tok)
		if err != nil || got.ID != a.ID {
			t.Fatalf("ByToken = %v, %v", got, err)
		}
	}
	if _, err := s.ByToken(ctx, "nope"); !errors.Is(err, store.ErrUnauthorized) {
		t.Fatalf("unknown token: %v", err)
	}
	// A submitted candidate signs back in to the same session, never a
	// second lab: only an admin's reset frees the entry, and only once the
	// session has ended.
	if _, err := s.Update(ctx, a.ID, func(x *session.Session) error { return x.WalkTo(session.StateSubmitted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if c, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker"); c.ID != a.ID {
		t.Fatalf("sign-in after submit made session %s", c.ID)
	}
	if _, err := s.ResetEntry(ctx, storetest.Sitting, a.EntryID); !errors.Is(err, store.ErrLiveSession) {
		t.Fatalf("reset while the session still has a lab: %v", err)
	}
	if _, err := s.Update(ctx, a.ID, func(x *session.Session) error { return x.WalkTo(session.StateCompleted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResetEntry(ctx, storetest.Sitting, a.EntryID); err != nil {
		t.Fatalf("reset after the session ended: %v", err)
	}
	if c, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker"); c.ID == a.ID {
		t.Fatal("sign-in after a reset returned the old session")
	}
	if _, err := store.NormalizeEmail("not-an-email"); !errors.Is(err, store.ErrBadID) {
		t.Fatalf("bad email: %v", err)
	}
}

func TestTransitionsAreForwardOnly(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "b@example.com", "exam1", time.Hour, "docker")
	if _, err := s.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateReady, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	_, err := s.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateProvisioning, time.Now()) })
	if !errors.Is(err, session.ErrNotAllowed) {
		t.Fatalf("backwards transition: %v", err)
	}
	// Update cannot sneak a backwards move past the state machine either.
	_, err = s.Update(ctx, sess.ID, func(x *session.Session) error { x.Status = session.StateCreated; return nil })
	if !errors.Is(err, session.ErrNotAllowed) {
		t.Fatalf("backwards update: %v", err)
	}
	got, _ := s.Get(ctx, sess.ID)
	if got.Status != session.StateReady {
		t.Fatalf("status = %s after refused moves", got.Status)
	}
}

func TestAnswersAreDurableAndConfined(t *testing.T) {
	s, rdb, dir := newStore(t)
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "c@example.com", "exam1", time.Hour, "docker")

	a, err := s.SaveAnswer(ctx, sess.ID, "t1", json.RawMessage(`{"text": "first"}`))
	if err != nil {
		t.Fatal(err)
	}
	a2, err := s.SaveAnswer(ctx, sess.ID, "t1", json.RawMessage(`"second"`))
	if err != nil {
		t.Fatal(err)
	}
	if a.Revision != 1 || a2.Revision != 2 || a2.SavedAt.Before(a.SavedAt) {
		t.Fatalf("revisions %d, %d", a.Revision, a2.Revision)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "sessions", sess.ID, "answers", "t1.json"))
	if err != nil || !strings.Contains(string(raw), `"second"`) {
		t.Fatalf("answer file = %s, %v", raw, err)
	}
	bad := []struct {
		name, task, value string
		want              error
	}{
		{"traversal", "../../x", `"x"`, store.ErrBadID},
		{"slash", "a/b", `"x"`, store.ErrBadID},
		{"dotfile", ".t1", `"x"`, store.ErrBadID},
		{"not json", "t2", `{`, store.ErrBadID},
		{"too large", "t2", `"` + strings.Repeat("x", 2000) + `"`, store.ErrTooLarge},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.SaveAnswer(ctx, sess.ID, tc.task, json.RawMessage(tc.value)); !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := s.SaveAnswer(ctx, "../../etc", "t1", json.RawMessage(`"x"`)); !errors.Is(err, store.ErrBadID) {
		t.Fatalf("bad session id: %v", err)
	}
	// Nothing but t1.json (and no temp files) landed in the sessions.
	var files []string
	filepath.WalkDir(filepath.Join(dir, "sessions"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, dir))
		}
		return nil
	})
	want := fmt.Sprintf("[/sessions/%[1]s/answers/t1.json /sessions/%[1]s/metadata.json]", sess.ID)
	if fmt.Sprint(files) != want {
		t.Fatalf("files = %v, want %s", files, want)
	}

	// Redis loses everything; the files rebuild the index.
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Rebuild(ctx); err != nil || n != 1 {
		t.Fatalf("rebuild = %d, %v", n, err)
	}
	as, err := s.Answers(ctx, sess.ID)
	if err != nil || len(as) != 1 || string(as[0].Value) != `"second"` {
		t.Fatalf("answers after rebuild = %+v, %v", as, err)
	}
	res, err := s.List(ctx, store.ListQuery{Search: "c@example"})
	if err != nil || res.Total != 1 {
		t.Fatalf("list after rebuild = %+v, %v", res, err)
	}
	if _, err := s.SaveAnswer(ctx, sess.ID, "t1", json.RawMessage(`"x"`)); err != nil {
		t.Fatalf("save after rebuild: %v", err)
	}
	if _, err := s.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateSubmitted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SaveAnswer(ctx, sess.ID, "t1", json.RawMessage(`"late"`)); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("answer after submit: %v", err)
	}
}

func TestListFiltersSortsAndPages(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	var ids []string
	for i := 0; i < 7; i++ {
		sess, _ := storetest.SignIn(t, s, fmt.Sprintf("user%d@example.com", i), "exam1", time.Hour, "docker")
		ids = append(ids, sess.ID)
		if i%2 == 0 {
			if _, err := s.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateReady, time.Now()) }); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	tests := []struct {
		name      string
		q         store.ListQuery
		wantTotal int
		wantFirst string
		wantLen   int
	}{
		{"all newest first", store.ListQuery{Desc: true}, 7, ids[6], 7},
		{"ready only", store.ListQuery{Status: []session.State{session.StateReady}}, 4, ids[0], 4},
		{"search email", store.ListQuery{Search: "USER3@"}, 1, ids[3], 1},
		{"search id prefix", store.ListQuery{Search: ids[5][:6]}, 1, ids[5], 1},
		{"by email desc paged", store.ListQuery{Sort: "email", Desc: true, Offset: 2, Limit: 2}, 7, ids[4], 2},
		{"past the end", store.ListQuery{Offset: 50}, 7, "", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := s.List(ctx, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if res.Total != tc.wantTotal || len(res.Sessions) != tc.wantLen {
				t.Fatalf("total %d len %d, want %d %d", res.Total, len(res.Sessions), tc.wantTotal, tc.wantLen)
			}
			if tc.wantFirst != "" && res.Sessions[0].ID != tc.wantFirst {
				t.Fatalf("first = %s (%s), want %s", res.Sessions[0].ID, res.Sessions[0].Email, tc.wantFirst)
			}
		})
	}
	if _, err := s.List(ctx, store.ListQuery{Sort: "password"}); !errors.Is(err, store.ErrBadQuery) {
		t.Fatalf("bad sort: %v", err)
	}
}

func TestAtomicFileNeverShowsAPart(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f.json")
	if err := store.WriteFileAtomic(p, []byte("old")); err != nil {
		t.Fatal(err)
	}
	f, err := store.CreateAtomic(p)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("new but unfinished")
	if b, _ := os.ReadFile(p); string(b) != "old" {
		t.Fatalf("reader saw %q before commit", b)
	}
	f.Abort()
	entries, _ := os.ReadDir(dir)
	if b, _ := os.ReadFile(p); string(b) != "old" || len(entries) != 1 {
		t.Fatalf("after abort: %q, %d entries", b, len(entries))
	}
}

// TestLateSaveKeepsNewerAnswer: a save that reached the store first but
// got the session after a newer save of the same task (it waited for the
// lock while its client gave up) writes nothing and returns the newer
// answer, which stays on disk.
func TestLateSaveKeepsNewerAnswer(t *testing.T) {
	rdb := redistest.Client(t)
	dir := t.TempDir()
	var s *store.Store
	var armed atomic.Bool
	var clock atomic.Int64
	base := time.Date(2026, 1, 1, 9, 0, 0, 0, time.UTC)
	var id string
	var newer store.Answer
	var newerErr error
	now := func() time.Time {
		at := base.Add(time.Duration(clock.Add(1)) * time.Millisecond)
		// The first save has taken its arrival time and not yet the
		// session: the second arrives and is saved in between.
		if armed.CompareAndSwap(true, false) {
			newer, newerErr = s.SaveAnswer(context.Background(), id, "t1", json.RawMessage(`"newer"`))
		}
		return at
	}
	var err error
	s, err = store.New(store.Options{Dir: dir, Redis: rdb, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	sess, _ := storetest.SignIn(t, s, "late@example.com", "exam1", time.Hour, "docker")
	id = sess.ID
	armed.Store(true)
	late, err := s.SaveAnswer(context.Background(), id, "t1", json.RawMessage(`"older"`))
	if err != nil || newerErr != nil {
		t.Fatalf("saves: %v, %v", err, newerErr)
	}
	if string(late.Value) != `"newer"` || late.Revision != newer.Revision || late.Revision != 1 {
		t.Errorf("the late save returned %s rev %d, want the newer answer (rev %d)", late.Value, late.Revision, newer.Revision)
	}
	as, err := s.Answers(context.Background(), id)
	if err != nil || len(as) != 1 || string(as[0].Value) != `"newer"` {
		t.Fatalf("answers = %+v, %v, want the newer one", as, err)
	}
	// A save that arrives after both is written as usual.
	a, err := s.SaveAnswer(context.Background(), id, "t1", json.RawMessage(`"latest"`))
	if err != nil || a.Revision != 2 || string(a.Value) != `"latest"` {
		t.Fatalf("a later save: %+v %v", a, err)
	}
}

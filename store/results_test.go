package store_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
)

func results(id string, score int, trigger string, at time.Time) *grading.Results {
	return &grading.Results{SessionID: id, ExamID: "exam1", Trigger: trigger, GradedAt: at, Score: score, MaxScore: 30,
		Tasks: []grading.TaskResult{
			{ID: "t1", Kind: "command", Points: score, MaxPoints: 20, Checks: []grading.CheckResult{{Name: "c", Node: "tokyo", Passed: score > 0, Points: score, MaxPoints: 20}}},
			{ID: "t2", Kind: "text", MaxPoints: 10, Manual: true},
		}}
}

func TestResultsKeepEveryGrading(t *testing.T) {
	s, _, dir := newStore(t)
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker")
	if _, err := s.LatestResults(ctx, sess.ID); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("latest results of a session never graded: %v, want not found", err)
	}
	if h, err := s.ResultsHistory(ctx, sess.ID); err != nil || len(h) != 0 {
		t.Fatalf("history of a session never graded: %v, %v", h, err)
	}
	at := time.Date(2026, 3, 2, 10, 0, 0, 0, time.UTC)
	for i, score := range []int{0, 5, 20} {
		if err := s.SaveResults(ctx, sess.ID, results(sess.ID, score, grading.TriggerRegrade, at.Add(time.Duration(i)*time.Minute))); err != nil {
			t.Fatal(err)
		}
	}
	sdir := filepath.Join(dir, "sessions", sess.ID)
	var names []string
	entries, _ := os.ReadDir(sdir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "results") || strings.HasPrefix(e.Name(), ".results") {
			names = append(names, e.Name())
		}
	}
	if want := []string{"results.1.json", "results.2.json", "results.json"}; !slices.Equal(names, want) {
		t.Fatalf("results files %v, want %v (and no temp file left)", names, want)
	}
	latest, err := s.LatestResults(ctx, sess.ID)
	if err != nil || latest.Score != 20 {
		t.Fatalf("latest = %+v, %v; want the score 20 of the last grading", latest, err)
	}
	h, err := s.ResultsHistory(ctx, sess.ID)
	if err != nil {
		t.Fatal(err)
	}
	var scores []int
	for _, r := range h {
		scores = append(scores, r.Score)
	}
	if !slices.Equal(scores, []int{0, 5, 20}) {
		t.Fatalf("history scores %v, want oldest first 0 5 20", scores)
	}

	// A crash between keeping results.json as results.3.json and writing
	// the new one: the latest is the newest kept.
	if err := os.Rename(filepath.Join(sdir, "results.json"), filepath.Join(sdir, "results.3.json")); err != nil {
		t.Fatal(err)
	}
	if latest, err := s.LatestResults(ctx, sess.ID); err != nil || latest.Score != 20 {
		t.Fatalf("latest after a torn save = %+v, %v", latest, err)
	}
	if err := s.SaveResults(ctx, sess.ID, results(sess.ID, 7, grading.TriggerSubmit, at.Add(time.Hour))); err != nil {
		t.Fatal(err)
	}
	if h, _ := s.ResultsHistory(ctx, sess.ID); len(h) != 4 || h[3].Score != 7 {
		t.Fatalf("history after the repair: %d gradings", len(h))
	}
}

func TestResultsConcurrentSavesLoseNothing(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker")
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			if err := s.SaveResults(ctx, sess.ID, results(sess.ID, i, grading.TriggerRegrade, time.Now())); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	h, err := s.ResultsHistory(ctx, sess.ID)
	if err != nil || len(h) != 8 {
		t.Fatalf("%d gradings kept of 8 (%v)", len(h), err)
	}
}

func TestMarks(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker")
	bad := []struct {
		name string
		m    store.Mark
		want error
	}{
		{"negative points", store.Mark{Task: "t2", Points: -1, By: "admin"}, store.ErrInvalid},
		{"more than the task's points", store.Mark{Task: "t2", Points: 11, By: "admin"}, store.ErrInvalid},
		{"malformed task", store.Mark{Task: "../x", Points: 1, By: "admin"}, store.ErrBadID},
		{"no examiner", store.Mark{Task: "t2", Points: 1}, store.ErrInvalid},
		{"a huge note", store.Mark{Task: "t2", Points: 1, By: "admin", Note: strings.Repeat("x", store.MaxMarkNote+1)}, store.ErrTooLarge},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.SetMark(ctx, sess.ID, tc.m, 10); !errors.Is(err, tc.want) {
				t.Fatalf("SetMark = %v, want %v", err, tc.want)
			}
		})
	}
	if _, err := s.SetMark(ctx, "nosuchsessio", store.Mark{Task: "t2", Points: 1, By: "admin"}, 10); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("mark of a missing session: %v", err)
	}
	if _, err := s.SetMark(ctx, sess.ID, store.Mark{Task: "t2", Points: 4, Note: "partly right", By: "admin"}, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := s.SetMark(ctx, sess.ID, store.Mark{Task: "t2", Points: 8, Note: "on appeal", By: "admin"}, 10); err != nil {
		t.Fatal(err)
	}
	marks, err := s.Marks(ctx, sess.ID)
	if err != nil || marks["t2"].Points != 8 || marks["t2"].Note != "on appeal" || marks["t2"].By != "admin" || marks["t2"].At.IsZero() {
		t.Fatalf("marks = %+v, %v", marks, err)
	}
	audit, _ := s.AuditLog(ctx, sess.ID)
	var seen []any
	for _, e := range audit {
		if e.Action == "mark" {
			seen = append(seen, e.Detail["points"])
		}
	}
	if len(seen) != 2 {
		t.Fatalf("audit has %d marks, want 2: %+v", len(seen), audit)
	}

	// The score adds the mark to the graded tasks, and the listing shows it.
	if err := s.SaveResults(ctx, sess.ID, results(sess.ID, 20, grading.TriggerSubmit, time.Now())); err != nil {
		t.Fatal(err)
	}
	res, _ := s.LatestResults(ctx, sess.ID)
	sc := store.Score(res, marks, 30)
	if sc.Score != 28 || sc.Tasks["t1"] != 20 || sc.Tasks["t2"] != 8 {
		t.Fatalf("scorecard = %+v, want 28 of t1 20 + t2 8", sc)
	}
	list, err := s.List(ctx, store.ListQuery{})
	if err != nil || len(list.Sessions) != 1 || list.Sessions[0].Score == nil || *list.Sessions[0].Score != 28 || list.Sessions[0].MaxScore != 30 {
		t.Fatalf("listing = %+v, %v", list, err)
	}
}

func TestListByScore(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	for i, score := range []int{10, 25, 0} {
		sess, _ := storetest.SignIn(t, s, string(rune('a'+i))+"@example.com", "exam1", time.Hour, "docker")
		if err := s.SaveResults(ctx, sess.ID, results(sess.ID, score, grading.TriggerSubmit, time.Now())); err != nil {
			t.Fatal(err)
		}
	}
	storetest.SignIn(t, s, "ungraded@example.com", "exam1", time.Hour, "docker")
	ptr := func(n int) *int { return &n }
	yes, no := true, false
	pass := func(string) int { return 15 }
	cases := []struct {
		name string
		q    store.ListQuery
		want []string
	}{
		{"by score, highest first", store.ListQuery{Sort: "score", Desc: true}, []string{"b@example.com", "a@example.com", "c@example.com", "ungraded@example.com"}},
		{"a score range", store.ListQuery{Sort: "score", MinScore: ptr(5), MaxScore: ptr(20)}, []string{"a@example.com"}},
		{"passed", store.ListQuery{Sort: "score", Passed: &yes, PassMark: pass}, []string{"b@example.com"}},
		{"not passed", store.ListQuery{Sort: "score", Passed: &no, PassMark: pass}, []string{"c@example.com", "a@example.com"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := s.List(ctx, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range res.Sessions {
				got = append(got, r.Email)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	if _, err := s.List(ctx, store.ListQuery{Passed: &yes}); !errors.Is(err, store.ErrBadQuery) {
		t.Fatalf("a pass filter without pass marks: %v", err)
	}
}

func TestCandidateChecksAreCountedAndLimited(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker")
	var wg sync.WaitGroup
	var mu sync.Mutex
	granted := 0
	for range 10 {
		wg.Go(func() {
			_, ok, err := s.CandidateCheck(ctx, sess.ID, "t1", 3)
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				granted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if granted != 3 {
		t.Fatalf("%d of 10 concurrent runs granted, want the limit of 3", granted)
	}
	if left, ok, err := s.CandidateCheck(ctx, sess.ID, "t2", 3); !ok || left != 2 || err != nil {
		t.Fatalf("another task's first run: %d left, %v, %v", left, ok, err)
	}
	used, err := s.CandidateChecksUsed(ctx, sess.ID)
	if err != nil || used["t1"] != 3 || used["t2"] != 1 {
		t.Fatalf("used = %v, %v", used, err)
	}
	if _, _, err := s.CandidateCheck(ctx, sess.ID, "../t", 3); !errors.Is(err, store.ErrBadID) {
		t.Fatalf("a malformed task: %v", err)
	}
}

func TestLiveTerminals(t *testing.T) {
	s, _, _ := newStore(t)
	ctx := context.Background()
	sess, _ := storetest.SignIn(t, s, "ada@example.com", "exam1", time.Hour, "docker")
	reqs := s.EndTerminalsRequests(ctx)
	time.Sleep(100 * time.Millisecond) // the subscription is in place
	for _, tag := range []string{"a", "b"} {
		if err := s.TerminalOpened(ctx, sess.ID, tag); err != nil {
			t.Fatal(err)
		}
	}
	// A relay that hears the request closes its shells.
	go func() {
		for id := range reqs {
			if id == sess.ID {
				s.TerminalClosed(ctx, id, "a")
				s.TerminalClosed(ctx, id, "b")
				return
			}
		}
	}()
	closed, err := s.WaitTerminalsClosed(ctx, sess.ID, 5*time.Second)
	if err != nil || !closed {
		t.Fatalf("WaitTerminalsClosed = %v, %v", closed, err)
	}
	// A shell nobody closes: the wait gives up at its bound.
	s.TerminalOpened(ctx, sess.ID, "stuck")
	start := time.Now()
	closed, err = s.WaitTerminalsClosed(ctx, sess.ID, 300*time.Millisecond)
	if err != nil || closed || time.Since(start) > 3*time.Second {
		t.Fatalf("WaitTerminalsClosed with a stuck shell = %v, %v after %s", closed, err, time.Since(start))
	}
}

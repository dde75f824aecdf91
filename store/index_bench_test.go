package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab/redistest"
)

// seedSessions writes n session records straight to disk (no fsync: this
// is setup, not the code under test) and rebuilds the index from them, the
// way an operator would after restoring a state directory.
func seedSessions(tb testing.TB, s *store.Store, dir string, n int) {
	tb.Helper()
	states := []session.State{session.StateCompleted, session.StateCompleted, session.StateCompleted,
		session.StateExpired, session.StateReady, session.StateFailed, session.StateCreated}
	base := time.Date(2026, 1, 1, 8, 0, 0, 0, time.UTC)
	for i := range n {
		id := fmt.Sprintf("s%011d", i)
		st := states[i%len(states)]
		sess := session.Session{
			ID: id, Short: id[:8], Email: fmt.Sprintf("cand%05d@team%d.example.com", i, i%40),
			ExamID: "netops", Runtime: "docker", Status: st,
			CreatedAt: base.Add(time.Duration(i) * time.Minute), UpdatedAt: base.Add(time.Duration(i)*time.Minute + 3*time.Hour),
			DurationSeconds: 10800, Version: 1,
		}
		if st == session.StateReady {
			sess.Deadline = sess.UpdatedAt.Add(time.Hour)
		}
		b, err := json.Marshal(sess)
		if err != nil {
			tb.Fatal(err)
		}
		p := filepath.Join(dir, "sessions", id)
		if err := os.MkdirAll(p, 0o750); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "metadata.json"), b, 0o640); err != nil {
			tb.Fatal(err)
		}
	}
	got, err := s.Rebuild(context.Background())
	if err != nil || got != n {
		tb.Fatalf("rebuild: indexed %d of %d: %v", got, n, err)
	}
}

// BenchmarkList10k answers the admin list over 10,000 sessions. The
// baseline is a bare HGETALL of the summary hash: what any listing that
// reads every summary must pay before it filters or sorts anything.
func BenchmarkList10k(b *testing.B) {
	addr := redistest.Socket(b)
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: addr})
	b.Cleanup(func() { rdb.Close() })
	dir := b.TempDir()
	s, err := store.New(store.Options{Dir: dir, Redis: rdb})
	if err != nil {
		b.Fatal(err)
	}
	seedSessions(b, s, dir, 10_000)
	ctx := context.Background()
	// perReq runs one request b.N times, timing only what timed does, and
	// reports milliseconds per request.
	perReq := func(b *testing.B, setup func(), timed func()) {
		b.StopTimer()
		var total time.Duration
		for range b.N {
			if setup != nil {
				setup()
			}
			t0 := time.Now()
			timed()
			total += time.Since(t0)
		}
		b.ReportMetric(float64(total.Microseconds())/1000/float64(b.N), "ms/req")
	}
	list := func(b *testing.B, st *store.Store, q store.ListQuery, want int) {
		res, err := st.List(ctx, q)
		if err != nil {
			b.Fatal(err)
		}
		if res.Total != want {
			b.Fatalf("total = %d, want %d", res.Total, want)
		}
	}
	completed, completedTeam7 := 0, 0
	for i := range 10_000 {
		if i%7 < 3 {
			completed++
			if i%40 == 7 {
				completedTeam7++
			}
		}
	}
	filtered := store.ListQuery{Status: []session.State{session.StateCompleted}, Search: "@team7.", Sort: "updated", Desc: true, Limit: 50}

	b.Run("baseline-hgetall", func(b *testing.B) {
		perReq(b, nil, func() {
			if n := len(rdb.HGetAll(ctx, "examlab:idx:summary").Val()); n != 10_000 {
				b.Fatalf("hgetall returned %d fields", n)
			}
		})
	})
	cases := []struct {
		name string
		q    store.ListQuery
		want int
	}{
		{"unfiltered-page", store.ListQuery{Sort: "created", Desc: true, Limit: 50}, 10_000},
		{"status-filter-sorted", store.ListQuery{Status: []session.State{session.StateCompleted}, Sort: "email", Limit: 50, Offset: 100}, completed},
		{"filter-search-sorted", filtered, completedTeam7},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			perReq(b, nil, func() { list(b, s, tc.q, tc.want) })
		})
	}
	// A process that has not listed before decodes every summary once.
	b.Run("filter-search-sorted-cold", func(b *testing.B) {
		var fresh *store.Store
		perReq(b, func() {
			var err error
			if fresh, err = store.New(store.Options{Dir: dir, Redis: rdb}); err != nil {
				b.Fatal(err)
			}
		}, func() { list(b, fresh, filtered, completedTeam7) })
	})
	// Another writer changed a session since this process last listed.
	b.Run("filter-search-sorted-after-write", func(b *testing.B) {
		other, err := store.New(store.Options{Dir: dir, Redis: rdb})
		if err != nil {
			b.Fatal(err)
		}
		i := 0
		perReq(b, func() {
			i++
			id := fmt.Sprintf("s%011d", 4+7*i) // a ready session
			if _, err := other.Update(ctx, id, func(x *session.Session) error { x.Error = fmt.Sprint("note ", i); return nil }); err != nil {
				b.Fatal(err)
			}
		}, func() { list(b, s, filtered, completedTeam7) })
	})
}

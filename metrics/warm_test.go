package metrics_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/metrics"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// TestWarmMetrics: the pool by state, the claims by outcome and the
// replacements by reason, read from Redis.
func TestWarmMetrics(t *testing.T) {
	sock := strings.TrimPrefix(testlab.Redis(t), "unix://")
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: sock})
	t.Cleanup(func() { rdb.Close() })
	st, err := store.New(store.Options{Dir: t.TempDir(), Redis: rdb, ExamVersion: func(string) string { return "v1" }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	storetest.OpenSitting(t, st, "hall", "exam1", 0)
	if _, err := st.UpdateSitting(ctx, "hall", func(s *sitting.Sitting) error { s.Warm = 3; return nil }); err != nil {
		t.Fatal(err)
	}
	var labs []string
	for range 3 {
		id, made, err := st.NewWarmLab(ctx, "hall", "exam1", "v1", 0, 3)
		if err != nil || !made {
			t.Fatal(made, err)
		}
		labs = append(labs, id)
	}
	for _, id := range labs[:2] {
		if ok, err := st.WarmReady(ctx, id, nil); err != nil || !ok {
			t.Fatal(ok, err)
		}
	}
	// Three starts: two claim the ready labs, the third finds none.
	for i := range 3 {
		sess := &session.Session{ID: store.NewSessionID(), SittingID: "hall", Status: session.StateQueued, StartedAt: time.Now().Add(time.Duration(i) * time.Second)}
		if err := st.JoinQueue(ctx, sess); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.AdmitNext(ctx); err != nil {
		t.Fatal(err)
	}
	// One more lab breaks while it waits: replaced.
	broken, made, err := st.NewWarmLab(ctx, "hall", "exam1", "v1", 0, 3)
	if err != nil || !made {
		t.Fatal(made, err)
	}
	if ok, err := st.WarmReady(ctx, broken, nil); err != nil || !ok {
		t.Fatal(ok, err)
	}
	if ok, err := st.RemoveWarm(ctx, broken, store.WarmReady, store.WarmReplacedBroken); err != nil || !ok {
		t.Fatal(ok, err)
	}
	out := scrape(t, metrics.New(metrics.Options{Warm: st}))
	for _, want := range []string{
		`examlab_warm_labs{sitting="hall",state="making"} 1`,
		`examlab_warm_labs{sitting="hall",state="ready"} 0`,
		`examlab_warm_claims_total{outcome="claimed"} 2`,
		`examlab_warm_claims_total{outcome="empty"} 1`,
		`examlab_warm_replaced_total{reason="broken"} 1`,
		`examlab_warm_replaced_total{reason="old_version"} 0`,
		`examlab_warm_replaced_total{reason="too_old"} 0`,
		`examlab_warm_replaced_total{reason="stuck"} 0`,
		`examlab_warm_replaced_total{reason="failed"} 0`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("scrape lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", out)
	}
}

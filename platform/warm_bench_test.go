package platform_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// BenchmarkWarmClaim measures what a candidate waits for when their
// sitting keeps a warm pool: from the start request to the lab ready,
// with a lab claimed from the pool (warm-claim), beside the same start
// without a pool (cold-start, the baseline in the same run, same exam:
// two nodes on Docker, and the shipped eight-node exam). It also reports how long the pool takes to be
// full again after a claim (refill-ms-*: the refill sweep every 5s, then
// one provision).
//
//	make bench   (or: go test ./platform -run '^$' -bench WarmClaim -benchtime 5x)
func BenchmarkWarmClaim(b *testing.B) {
	b.Run("two-nodes", func(b *testing.B) { benchWarm(b, "v1") })
	b.Run("shipped", func(b *testing.B) { benchWarm(b, "") })
}

// benchWarm runs the cold start and the warm claim of the warm test exam
// at version, or of the shipped exam when version is empty.
func benchWarm(b *testing.B, version string) {
	redisAddr := testlab.Redis(b)
	instance := "t-" + strings.ToLower(store.NewSessionID())
	var st *testlab.Stack
	if version != "" {
		st = warmStack(b, redisAddr, b.TempDir(), instance, version)
	} else {
		st = testlab.Start(b, testlab.Options{Redis: redisAddr, Config: func(c *config.Config) { c.Instance = instance }})
	}
	b.Cleanup(func() {
		ids, _ := st.Runtime.Labs(context.Background())
		for _, id := range ids {
			st.Runtime.Destroy(context.Background(), id)
		}
	})
	admin := st.Admin()
	ctx := context.Background()
	n := 0
	// start times one start to ready; the lab is destroyed after.
	start := func(b *testing.B) time.Duration {
		c := st.Client()
		n++
		id := c.Login(b, fmt.Sprintf("bench%d@example.com", n))
		t0 := time.Now()
		if code, err := c.Do("POST", "/api/session/"+id+"/start", nil, nil); err != nil || (code != 200 && code != 202) {
			b.Fatalf("start: %d %v", code, err)
		}
		c.WaitStatus(b, id, testlab.ProvisionTimeout, "ready")
		d := time.Since(t0)
		sess, err := st.Store.Get(ctx, id)
		if err != nil {
			b.Fatal(err)
		}
		if err := st.Runtime.Destroy(ctx, sess.Lab()); err != nil {
			b.Fatal(err)
		}
		return d
	}
	b.Run("cold-start", func(b *testing.B) {
		var ds []time.Duration
		for i := 0; i < b.N; i++ {
			ds = append(ds, start(b))
		}
		testlab.ReportDurations(b, ds)
	})
	b.Run("warm-claim", func(b *testing.B) {
		const size = 2
		if code, msg := setWarm(b, admin, map[string]any{"warm": size}); code != 200 {
			b.Fatalf("set warm: %d %s", code, msg)
		}
		waitPool(b, admin, size, version)
		var claims, refills []time.Duration
		for i := 0; i < b.N; i++ {
			d := start(b)
			claims = append(claims, d)
			t0 := time.Now()
			waitPool(b, admin, size, version)
			refills = append(refills, time.Since(t0)+d)
		}
		testlab.ReportDurations(b, claims)
		med, p95 := testlab.Percentiles(refills)
		b.ReportMetric(float64(med.Microseconds())/1000, "refill-ms-median")
		b.ReportMetric(float64(p95.Microseconds())/1000, "refill-ms-p95")
		if code, msg := setWarm(b, admin, map[string]any{"warm": 0}); code != 200 {
			b.Fatalf("set warm 0: %d %s", code, msg)
		}
	})
}

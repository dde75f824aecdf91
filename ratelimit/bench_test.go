package ratelimit

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/examlab/examlab/testlab/redistest"
)

// hallSize is one exam hall signing in from behind one address.
const hallSize = 500

// BenchmarkSignin times each of a hall's 500 sign-in checks from one
// address (both attempt budgets charged, both failure budgets checked, in
// one script) beside the baseline of a bare INCR round trip on the same
// redis-server: what a check costs over the least any Redis call costs.
func BenchmarkSignin(b *testing.B) {
	rdb := redistest.Client(b)
	ctx := context.Background()
	s, err := NewSignin(SigninOptions{Redis: rdb, Prefix: "bench:"})
	if err != nil {
		b.Fatal(err)
	}
	accounts := make([]string, hallSize)
	for i := range accounts {
		accounts[i] = fmt.Sprintf("candidate-%d@example.com", i)
	}
	cases := []struct {
		name  string
		check func(i int) error
	}{
		{"baseline-incr", func(i int) error { return rdb.Incr(ctx, "bench:incr").Err() }},
		{"signin", func(i int) error { return s.Attempt(ctx, hall, accounts[i]) }},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N*hallSize)
			for b.Loop() {
				b.StopTimer()
				// A fresh hall each round: the default budget admits 600
				// a minute, and the benchmark runs several rounds.
				if err := rdb.FlushDB(ctx).Err(); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				for i := range hallSize {
					t0 := time.Now()
					if err := c.check(i); err != nil {
						b.Fatalf("check %d: %v", i, err)
					}
					lat = append(lat, time.Since(t0))
				}
			}
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "us-p50")
			b.ReportMetric(float64(lat[len(lat)*95/100].Nanoseconds())/1e3, "us-p95")
			b.ReportMetric(0, "ns/op")
		})
	}
}

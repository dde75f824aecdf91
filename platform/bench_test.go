package platform_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// BenchmarkSessionColdStart measures what a candidate waits for: from the
// start request to all eight nodes running, through the API, the asynq
// queue, a worker and the Docker runtime. The raw-engine case is the
// baseline in the same process: the same eight containers created and
// started on a fresh network with bare Engine API calls.
//
//	make bench   (or: go test ./platform -run '^$' -bench ColdStart -benchtime 5x)
func BenchmarkSessionColdStart(b *testing.B) {
	b.Run("examlab", func(b *testing.B) {
		st := testlab.Start(b, testlab.Options{})
		ctx := context.Background()
		var ds []time.Duration
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			c := st.Client()
			id := c.Login(b, fmt.Sprintf("bench%d@example.com", i))
			b.StartTimer()
			t0 := time.Now()
			c.StartLab(b, id)
			ds = append(ds, time.Since(t0))
			b.StopTimer()
			if err := st.Runtime.Destroy(ctx, id); err != nil {
				b.Fatal(err)
			}
		}
		testlab.ReportDurations(b, ds)
	})
	b.Run("raw-engine", func(b *testing.B) {
		eng := testlab.NewEngine(b)
		ctx := context.Background()
		var ds []time.Duration
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: store.NewSessionID()})
			if err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			t0 := time.Now()
			if err := eng.RawLab(ctx, spec); err != nil {
				eng.RemoveRawLab(ctx, spec)
				b.Fatal(err)
			}
			ds = append(ds, time.Since(t0))
			b.StopTimer()
			if err := eng.RemoveRawLab(ctx, spec); err != nil {
				b.Fatal(err)
			}
		}
		testlab.ReportDurations(b, ds)
	})
}

package changeset_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/examlab/examlab/changeset"
)

// BenchmarkRestoreNode restores one node of the lab image with a
// candidate's light work (candidateWork) applied, from the two kinds of
// snapshot the archive may hold: a change set, and — the baseline, in the
// same run — a full export of the same node. Each iteration applies to a
// fresh node (its provision is not timed). It reports the snapshot's size
// and the time to apply it.
func BenchmarkRestoreNode(b *testing.B) {
	rt := runtime(b)
	cand := newLab(b, rt)
	sh(b, rt, cand, imageLike)
	sh(b, rt, cand, candidateWork)
	dir := b.TempDir()
	full := filepath.Join(dir, "full.tar")
	f, err := os.Create(full)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if err := rt.ExportFS(ctx, cand, "n1", f); err != nil {
		b.Fatal(err)
	}
	f.Close()
	changes := changeSetOf(b, rt, cand, nil)
	for _, v := range []struct {
		name string
		path string
		want changeset.Expect
	}{
		{"change set", changes, changeset.Expect{}},
		{"full export (baseline)", full, changeset.Expect{Full: true}},
	} {
		b.Run(v.name, func(b *testing.B) {
			info, _ := os.Stat(v.path)
			var total time.Duration
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				fresh := newLab(b, rt)
				sh(b, rt, fresh, imageLike)
				b.StartTimer()
				start := time.Now()
				if _, err := changeset.Apply(ctx, rt, fresh, "n1", opener(v.path), v.want); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
			}
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/apply")
			b.ReportMetric(float64(info.Size()), "snapshot-bytes")
		})
	}
}

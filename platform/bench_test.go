package platform_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// BenchmarkSessionColdStart measures what a candidate waits for: from the
// start request to the lab ready, through the API, the asynq queue, a
// worker and the Docker runtime. The examlab case is the shipped exam, its
// segments wired and its files and setup applied; examlab-flat is the same
// eight nodes on one flat network, the shape of the baseline. The
// raw-engine case is the baseline in the same process: those eight
// containers created and started on a fresh network with bare Engine API
// calls.
//
//	make bench   (or: go test ./platform -run '^$' -bench ColdStart -benchtime 5x)
func BenchmarkSessionColdStart(b *testing.B) {
	flatFile, flat := flatExam(b)
	b.Run("examlab", func(b *testing.B) { benchColdStart(b, "") })
	b.Run("examlab-flat", func(b *testing.B) { benchColdStart(b, flatFile) })
	b.Run("raw-engine", func(b *testing.B) {
		eng := testlab.NewEngine(b)
		ctx := context.Background()
		var ds []time.Duration
		b.StopTimer()
		for i := 0; i < b.N; i++ {
			spec, err := lab.NewSpec(flat, lab.Session{ID: store.NewSessionID()})
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

// benchColdStart starts labs of the exam in examFile (empty: the shipped
// one) one after another, timing each from the start request to ready.
func benchColdStart(b *testing.B, examFile string) {
	st := testlab.Start(b, testlab.Options{Config: func(c *config.Config) { c.ExamFile = examFile }})
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
}

// flatExam writes the shipped exam without its segments, files and setup
// to a file, and returns the file and the exam: its eight nodes on one
// flat network.
func flatExam(b *testing.B) (string, *exam.Exam) {
	b.Helper()
	out, err := yaml.Marshal(labtest.Flatten(exam.Default()))
	if err != nil {
		b.Fatal(err)
	}
	path := filepath.Join(b.TempDir(), "flat.yaml")
	if err := os.WriteFile(path, out, 0o600); err != nil {
		b.Fatal(err)
	}
	flat, err := exam.Load(path)
	if err != nil {
		b.Fatal(err)
	}
	return path, flat
}

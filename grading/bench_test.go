package grading_test

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
)

// The benchmarks grade the shipped exam's checks on labs where a candidate
// has solved t3, t4 and t6, so every check passes and none waits out a
// ping's timeout: once on one lab, once on 20 labs at once. Beside each,
// the same snippets run by plain exec (the node's own sh, no busybox, no
// watchdog, no output limit) in the same order and concurrency: each node
// in turn, the nodes and labs at once. The difference is what the grader's
// own tools and its kill-at-timeout cost.
//
// The labs are made once per run of the test binary, whatever b.N, and
// destroyed by TestMain: provisioning 20 segmented labs takes minutes and
// is measured by the docker package's benchmarks, not here.
//
//	go test ./grading -run '^$' -bench . -benchtime 5x

// benchLabs is how many labs the many-labs benchmarks grade at once.
const benchLabs = 20

var bench struct {
	once sync.Once
	err  error
	rt   *docker.Runtime
	ex   *exam.Exam
	sids []string
	mu   sync.Mutex
}

func TestMain(m *testing.M) {
	code := m.Run()
	if bench.rt != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		for _, sid := range bench.sids {
			if err := bench.rt.Destroy(ctx, sid); err != nil {
				fmt.Fprintf(os.Stderr, "destroy bench lab %s: %v\n", sid, err)
				code = 1
			}
		}
		cancel()
	}
	os.Exit(code)
}

// benchSolvedLabs returns n solved labs of the shipped exam, making those
// that do not exist yet (a few at a time).
func benchSolvedLabs(b *testing.B, n int) (*docker.Runtime, *exam.Exam, []string) {
	b.Helper()
	bench.once.Do(func() {
		bench.rt = newRuntime(b)
		bench.ex = exam.Default()
	})
	if bench.rt == nil {
		b.Fatal("no runtime for the benchmarks")
	}
	bench.mu.Lock()
	defer bench.mu.Unlock()
	missing := n - len(bench.sids)
	if missing <= 0 {
		return bench.rt, bench.ex, bench.sids[:n]
	}
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sem := make(chan struct{}, 4)
	var firstErr error
	for range missing {
		spec, err := lab.NewSpec(bench.ex, lab.Session{ID: newSessionID(b), Candidate: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		bench.sids = append(bench.sids, spec.SessionID)
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			err := bench.rt.Provision(ctx, spec)
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = fmt.Errorf("provision %s: %w", spec.SessionID, err)
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	for _, sid := range bench.sids[n-missing : n] {
		solveShippedExam(b, bench.rt, sid)
	}
	b.Logf("made %d solved labs in %s", missing, time.Since(start).Round(time.Second))
	return bench.rt, bench.ex, bench.sids[:n]
}

// plainExec runs the exam's checks' snippets in lab sid as the grader
// would, each node's in turn and the nodes at once, but with the node's own
// sh and tools and lab.Output, and reports how many did not exit 0.
func plainExec(ctx context.Context, rt lab.Runner, ex *exam.Exam, sid string) (failed int, err error) {
	byNode := map[string][]exam.Check{}
	for _, t := range ex.Tasks {
		for _, c := range t.Checks {
			byNode[c.Node] = append(byNode[c.Node], c)
		}
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for node, checks := range byNode {
		wg.Go(func() {
			for _, c := range checks {
				_, code, e := lab.Output(ctx, rt, sid, node, "sh", "-c", c.Run)
				mu.Lock()
				if e != nil && err == nil {
					err = e
				}
				if code != 0 {
					failed++
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed, err
}

// gradeAll grades every lab at once, or runs plainExec on each, and
// returns the checks that failed.
func gradeAll(b *testing.B, rt *docker.Runtime, ex *exam.Exam, sids []string, plain bool) int {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	var firstErr error
	for _, sid := range sids {
		wg.Go(func() {
			var n int
			var err error
			if plain {
				n, err = plainExec(ctx, rt, ex, sid)
			} else {
				var res *grading.Results
				res, err = grading.Grade(ctx, rt, ex, sid, grading.Options{Trigger: grading.TriggerSubmit})
				if err == nil {
					for _, tr := range res.Tasks {
						for _, c := range tr.Checks {
							if !c.Passed {
								n++
								b.Logf("lab %s: %q failed after %dms: exit %d %s", sid, c.Name, c.DurationMS, c.ExitCode, c.Error)
							}
						}
					}
				}
			}
			mu.Lock()
			defer mu.Unlock()
			failed += n
			if err != nil && firstErr == nil {
				firstErr = err
			}
		})
	}
	wg.Wait()
	if firstErr != nil {
		b.Fatal(firstErr)
	}
	return failed
}

func BenchmarkGradeShippedExam(b *testing.B) {
	for _, labs := range []int{1, benchLabs} {
		for _, how := range []string{"grader", "plain-exec"} {
			b.Run(fmt.Sprintf("labs=%d/%s", labs, how), func(b *testing.B) {
				rt, ex, sids := benchSolvedLabs(b, labs)
				failed := 0
				b.ResetTimer()
				for range b.N {
					failed += gradeAll(b, rt, ex, sids, how == "plain-exec")
				}
				b.StopTimer()
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N), "ms/grading")
				b.ReportMetric(float64(b.Elapsed().Microseconds())/1000/float64(b.N*labs), "ms/lab")
				// Every check should pass on a solved lab; the failures
				// of a grading are logged.
				b.ReportMetric(float64(failed)/float64(b.N*labs), "failed-checks/lab")
			})
		}
	}
}

package nomad_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
)

// provisioner is the part of a runtime a cold start exercises.
type provisioner interface {
	Provision(ctx context.Context, spec lab.Spec) error
	Status(ctx context.Context, spec lab.Spec) ([]lab.NodeStatus, error)
	Destroy(ctx context.Context, sessionID string) error
}

// BenchmarkColdStart times a lab from nothing to all eight nodes running.
// The baseline is the one-host Docker runtime on the same engine, in the
// same process; beside it the Nomad runtime against the fake API (whose
// client drives that same engine, so the difference is the Nomad
// protocol: register, evaluation, blocking queries) and, when NOMAD_ADDR
// is set, against a real agent. Teardown is outside the timer.
func BenchmarkColdStart(b *testing.B) {
	b.Run("docker-baseline", func(b *testing.B) {
		coldStart(b, requireDocker(b))
	})
	b.Run("nomad-fake", func(b *testing.B) {
		coldStart(b, newFakeEnv(b).rt)
	})
	b.Run("nomad-agent", func(b *testing.B) {
		if os.Getenv("NOMAD_ADDR") == "" {
			b.Skip(skipWithoutNomad)
		}
		rt, client := realRuntime(b)
		coldStart(b, rt, func(sessionID string, start, ready time.Time) {
			logTimeline(b, client, sessionID, start, ready)
		})
	})
}

func coldStart(b *testing.B, rt provisioner, after ...func(sessionID string, start, ready time.Time)) {
	ctx := context.Background()
	var total time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		spec, err := lab.NewSpec(exam.Default(), lab.Session{ID: newSessionID(b), Candidate: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		pctx, cancel := context.WithTimeout(ctx, provisionTimeout)
		start := time.Now()
		b.StartTimer()
		err = rt.Provision(pctx, spec)
		b.StopTimer()
		ready := time.Now()
		total += ready.Sub(start)
		if err == nil {
			var nodes []lab.NodeStatus
			if nodes, err = rt.Status(pctx, spec); err == nil && !lab.AllRunning(nodes) {
				b.Errorf("provision returned with nodes not running: %+v", nodes)
			}
			for _, f := range after {
				f(spec.SessionID, start, ready)
			}
		}
		cancel()
		dctx, dcancel := context.WithTimeout(ctx, provisionTimeout)
		derr := rt.Destroy(dctx, spec.SessionID)
		dcancel()
		if err != nil {
			b.Fatalf("provision: %v", err)
		}
		if derr != nil {
			b.Fatalf("destroy: %v", derr)
		}
		b.StartTimer()
	}
	b.StopTimer()
	b.ReportMetric(total.Seconds()/float64(b.N), "s/lab")
}

// logTimeline prints where a cold start's time went on a real agent, each
// moment as seconds since Provision was called: the allocation created
// (the scheduler's part), the client's first task event (the client
// picked the allocation up), and per task when it was received, set up
// started and, for the lifecycle tasks that run once, ended, in the
// order they started; then when the lab's agent left its state (the lab
// wired and prepared) and when Provision returned.
func logTimeline(b *testing.B, client *api.Client, sessionID string, start, ready time.Time) {
	stubs, _, err := client.Jobs().Allocations(jobspecs.JobName(sessionID), true, nil)
	if err != nil || len(stubs) == 0 {
		b.Logf("timeline: allocations of %s: %v (%d)", sessionID, err, len(stubs))
		return
	}
	alloc, _, err := client.Allocations().Info(stubs[0].ID, nil)
	if err != nil {
		b.Logf("timeline: allocation %s: %v", stubs[0].ID, err)
		return
	}
	at := func(ns int64) string {
		if ns == 0 {
			return "      -"
		}
		return fmt.Sprintf("%6.2fs", time.Unix(0, ns).Sub(start).Seconds())
	}
	type step struct {
		task  string
		times map[string]int64
	}
	var steps []step
	first := int64(0)
	for name, ts := range alloc.TaskStates {
		st := step{task: name, times: map[string]int64{}}
		for _, e := range ts.Events {
			if _, seen := st.times[e.Type]; !seen {
				st.times[e.Type] = e.Time
			}
			if first == 0 || e.Time < first {
				first = e.Time
			}
		}
		steps = append(steps, st)
	}
	sort.Slice(steps, func(i, j int) bool { return steps[i].times["Started"] < steps[j].times["Started"] })
	b.Logf("timeline of %s (seconds since Provision was called): allocation created %s, first task event %s",
		sessionID, at(alloc.CreateTime), at(first))
	for _, st := range steps {
		b.Logf("  %-12s received %s  set up %s  started %s  ended %s", st.task,
			at(st.times["Received"]), at(st.times["Task Setup"]), at(st.times["Started"]), at(st.times["Terminated"]))
	}
	left := "no state (a flat lab)"
	if fi, _, err := client.AllocFS().Stat(alloc, jobspecs.NomadLabnetStateFile, nil); err == nil && fi != nil {
		left = at(fi.ModTime.UnixNano())
	}
	b.Logf("  the lab's agent left its state %s; Provision returned %s", left, at(ready.UnixNano()))
	// What the agent says of each batch of nodes it wired and prepared.
	cancel := make(chan struct{})
	defer close(cancel)
	frames, errc := client.AllocFS().Logs(alloc, false, jobspecs.NomadLabnetWatch, "stdout", api.OriginStart, 0, cancel, nil)
	var out strings.Builder
	for done := false; !done; {
		select {
		case f, ok := <-frames:
			if !ok {
				done = true
				break
			}
			out.Write(f.Data)
		case <-errc:
			done = true
		case <-time.After(5 * time.Second):
			done = true
		}
	}
	for _, line := range strings.Split(out.String(), "\n") {
		if strings.Contains(line, "wired and prepared") {
			b.Logf("  agent: %s", line)
		}
	}
}

// benchCaptureTimeout bounds all the captures of BenchmarkCaptureOnNomad.
const benchCaptureTimeout = 30 * time.Minute

// BenchmarkCaptureOnNomad times the snapshot of the shipped eight-node
// lab, lightly used (one file written in tokyo) and with 100 MB written in
// tokyo, each captured into files: "changes" is the Nomad runtime's
// capture through the lab's agent (frozen, each node's writable layer
// read on the client); beside it, in the same run and on the same
// containers, the baselines "full" (GNU tar in every node through alloc
// exec, EXAMLAB_SNAPSHOT=full) and "docker-export" (`docker export` of
// every node through the engine, what a snapshot was on one host). It
// reports seconds and MiB per lab.
func BenchmarkCaptureOnNomad(b *testing.B) {
	env := newFakeEnv(b)
	spec := newLab(b, env.rt)
	pctx, cancel := context.WithTimeout(context.Background(), provisionTimeout)
	defer cancel()
	if err := env.rt.Provision(pctx, spec); err != nil {
		b.Fatal(err)
	}
	// Full exports of eight nodes take minutes on a loaded machine.
	ctx, cancelAll := context.WithTimeout(context.Background(), benchCaptureTimeout)
	defer cancelAll()
	nodes := exam.Default().NodeNames()
	dir := b.TempDir()
	save := func(node string, write func(io.Writer) error) error {
		f, err := os.Create(filepath.Join(dir, node+".tar"))
		if err != nil {
			return err
		}
		if err := write(f); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	bytesIn := func() int64 {
		var n int64
		for _, node := range nodes {
			if fi, err := os.Stat(filepath.Join(dir, node+".tar")); err == nil {
				n += fi.Size()
			}
		}
		return n
	}
	capture := func(b *testing.B, run func() error) {
		var total time.Duration
		var size int64
		for i := 0; i < b.N; i++ {
			start := time.Now()
			if err := run(); err != nil {
				b.Fatal(err)
			}
			total += time.Since(start)
			size += bytesIn()
		}
		b.ReportMetric(total.Seconds()/float64(b.N), "s/lab")
		b.ReportMetric(float64(size)/float64(b.N)/(1<<20), "MiB/lab")
	}
	ways := []struct {
		name string
		run  func() error
	}{
		{"changes", func() error {
			_, err := env.rt.Capture(ctx, spec.SessionID, nodes, lab.SnapshotChanges, save)
			return err
		}},
		{"full", func() error {
			_, err := env.rt.Capture(ctx, spec.SessionID, nodes, lab.SnapshotFull, save)
			return err
		}},
		{"docker-export", func() error {
			for _, n := range nodes {
				if err := save(n, func(w io.Writer) error { return env.docker.ExportFS(ctx, spec.SessionID, n, w) }); err != nil {
					return err
				}
			}
			return nil
		}},
	}
	for _, use := range []struct{ name, cmd string }{
		{"light", "echo 'interface check done' > /root/notes.txt"},
		{"100MB", "head -c 104857600 /dev/urandom > /root/big.bin"},
	} {
		if out, code, err := lab.Output(ctx, env.rt, spec.SessionID, "tokyo", "sh", "-c", use.cmd); err != nil || code != 0 {
			b.Fatalf("%s in tokyo: exit %d %v\n%s", use.name, code, err, out)
		}
		for _, w := range ways {
			b.Run(use.name+"/"+w.name, func(b *testing.B) { capture(b, w.run) })
		}
	}
}

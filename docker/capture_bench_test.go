package docker

import (
	"context"
	"crypto/sha256"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
)

// The archive benchmarks capture the shipped lab's eight nodes as the
// archive task does — each node streamed into a file of its own with its
// sha256 — in changes mode, beside a plain `docker export` of the same
// containers (the engine's export endpoint, the full mode's cost), in one
// run: first lightly used (a few commands in each node), then with 100 MB
// written in one node. changes-first is a worker's first capture of the
// image, which reads the image's index of paths once. Run with, for example:
//
//	go test ./docker -run '^$' -bench 'Archive' -benchtime 3x
//
// BenchmarkArchive2GB is skipped unless EXAMLAB_BENCH_2GB=1: it writes a
// 2 GB file in a node (and 2 GB of snapshot beside it) to show that the
// worker's memory stays bounded while it is archived:
//
//	EXAMLAB_BENCH_2GB=1 go test ./docker -run '^$' -bench 'Archive2GB' -benchtime 1x

// lightUse is a few commands a candidate might type in a node.
const lightUse = `cd /root && echo "checked the routes" > notes.txt && ip route > routes.txt && ip addr > /tmp/addr.txt && ping -c1 -W1 127.0.0.1 > /dev/null && sed -i 's/^/# /' /etc/motd`

// benchCapture captures every node of spec in mode into files under dir,
// hashing as it goes, and returns the bytes written.
func benchCapture(b *testing.B, r *Runtime, spec lab.Spec, mode lab.SnapshotMode, dir string) int64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var nodes []string
	for _, n := range spec.Nodes {
		nodes = append(nodes, n.Name)
	}
	var total int64
	_, err := r.Capture(ctx, spec.SessionID, nodes, mode, func(node string, write func(io.Writer) error) error {
		n, err := toFile(filepath.Join(dir, node+".tar"), write)
		total += n
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	return total
}

// benchExport is the baseline: `docker export` of every node into files.
func benchExport(b *testing.B, r *Runtime, spec lab.Spec, dir string) int64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	var total int64
	for _, n := range spec.Nodes {
		c, err := r.node(ctx, spec.SessionID, n.Name)
		if err != nil {
			b.Fatal(err)
		}
		size, err := toFile(filepath.Join(dir, n.Name+".tar"), func(w io.Writer) error { return r.export(ctx, n.Name, c.ID, w) })
		if err != nil {
			b.Fatal(err)
		}
		total += size
	}
	return total
}

// toFile writes through write into path and a sha256, as the archive task
// does, and returns the size.
func toFile(path string, write func(io.Writer) error) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	cw := &lab.CountingWriter{W: io.MultiWriter(f, sha256.New())}
	if err := write(cw); err != nil {
		return cw.N, err
	}
	return cw.N, f.Sync()
}

func BenchmarkArchiveLab(b *testing.B) {
	r := newTestRuntime(b)
	spec := benchLabOf(b, r, exam.Default())
	provision(b, r, spec)
	for _, n := range spec.Nodes {
		mustSh(b, r, spec.SessionID, n.Name, lightUse)
	}
	dir := b.TempDir()
	run := func(name string, capture func(b *testing.B) int64) {
		b.Run(name, func(b *testing.B) {
			var bytes int64
			for b.Loop() {
				bytes = capture(b)
			}
			b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/lab")
			b.ReportMetric(float64(bytes)/(1<<20), "MiB/lab")
		})
	}
	forget := func() {
		r.indexMu.Lock()
		r.indexes = nil
		r.indexMu.Unlock()
	}
	// The first capture of an image in a worker process reads the image's
	// index; every later one reuses it.
	run("light/changes-first", func(b *testing.B) int64 { forget(); return benchCapture(b, r, spec, lab.SnapshotChanges, dir) })
	run("light/changes", func(b *testing.B) int64 { return benchCapture(b, r, spec, lab.SnapshotChanges, dir) })
	run("light/export", func(b *testing.B) int64 { return benchExport(b, r, spec, dir) })
	mustSh(b, r, spec.SessionID, "tokyo", "head -c 104857600 /dev/urandom > /root/big.bin")
	run("100MB/changes", func(b *testing.B) int64 { return benchCapture(b, r, spec, lab.SnapshotChanges, dir) })
	run("100MB/export", func(b *testing.B) int64 { return benchExport(b, r, spec, dir) })
}

// BenchmarkArchive2GB reports the peak heap of this process while a node
// holding a 2 GB file is captured, beside the heap before.
func BenchmarkArchive2GB(b *testing.B) {
	if os.Getenv("EXAMLAB_BENCH_2GB") != "1" {
		b.Skip("writes 2 GB in a node and 2 GB of snapshot; set EXAMLAB_BENCH_2GB=1 to run it")
	}
	r := newTestRuntime(b)
	spec := segmentedLab(b, r, twoNodes)
	provision(b, r, spec)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, code, err := lab.Output(ctx, r, spec.SessionID, "alpha", "sh", "-c", "head -c 2147483648 /dev/zero > /root/huge.bin && ls -l /root/huge.bin"); err != nil || code != 0 {
		b.Fatalf("write 2 GB: %d %v %s", code, err, out)
	}
	dir := b.TempDir()
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	var (
		mu   sync.Mutex
		peak uint64
		stop = make(chan struct{})
		done = make(chan struct{})
	)
	go func() {
		defer close(done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			mu.Lock()
			peak = max(peak, m.HeapInuse)
			mu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	var bytes int64
	for b.Loop() {
		bytes = benchCapture(b, r, spec, lab.SnapshotChanges, dir)
	}
	close(stop)
	<-done
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/lab")
	b.ReportMetric(float64(bytes)/(1<<20), "MiB/lab")
	b.ReportMetric(float64(before.HeapInuse)/(1<<20), "MiB-heap-before")
	b.ReportMetric(float64(peak)/(1<<20), "MiB-heap-peak")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/(1<<20)/float64(b.N), "MiB-allocated/lab")
}

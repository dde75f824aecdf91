package workers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// submittedLab is a ready lab with the candidate's work in tokyo, submitted
// for reason.
func (e *env) submittedLab(t *testing.T, reason string) string {
	t.Helper()
	// One session per candidate: each submitted lab is a candidate of its own.
	e.mu.Lock()
	e.submitted++
	email := fmt.Sprintf("submitter%d@example.com", e.submitted)
	e.mu.Unlock()
	id := e.readyLab(t, email)
	if _, code, err := lab.Output(context.Background(), e.mem, id, "tokyo", "sh", "-c", "echo candidate-work > /root/work.txt"); err != nil || code != 0 {
		t.Fatalf("write work file: %d %v", code, err)
	}
	e.submit(t, id, reason)
	return id
}

// checkSnapshot checks the manifest against the files on disk, and that
// tokyo's tar holds the candidate's work; it returns the manifest.
func (e *env) checkSnapshot(t *testing.T, id, reason string) *store.Manifest {
	t.Helper()
	m, err := e.store.Manifest(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if m.SessionID != id || m.Runtime != "memory" || m.Reason != reason || len(m.Missing) != 0 {
		t.Errorf("manifest of %s: runtime %q reason %q missing %v", m.SessionID, m.Runtime, m.Reason, m.Missing)
	}
	var names []string
	for _, n := range spec(t, id).Nodes {
		names = append(names, n.Container+".tar", n.Container+".log")
	}
	var got []string
	for _, f := range m.Files {
		got = append(got, f.Name)
		path, err := e.store.Path(id, store.SnapshotDir, f.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		if int64(len(data)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Errorf("%s: %d bytes, sha256 %x; the manifest says %d, %s", f.Name, len(data), sum, f.Size, f.SHA256)
		}
		if f.Name == lab.ContainerName(id, "tokyo")+".tar" {
			if work := tarFile(t, data, "root/work.txt"); work != "candidate-work\n" {
				t.Errorf("tokyo's tar holds root/work.txt = %q", work)
			}
		}
	}
	if !slices.Equal(got, names) {
		t.Errorf("manifest files %v, want a tar and a log per node: %v", got, names)
	}
	return m
}

func tarFile(t *testing.T, data []byte, name string) string {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return ""
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == name {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			return string(b)
		}
	}
}

func TestArchive(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	m := e.checkSnapshot(t, id, "candidate")
	if s := e.get(t, id); s.Status != stateArchiving {
		t.Errorf("status %s after the archive, want archiving until cleanup", s.Status)
	}
	if _, cleanups := e.enq.calls(); !slices.Equal(cleanups, []enqueued{{id, "candidate"}}) {
		t.Errorf("cleanups enqueued %v, want one for %s", cleanups, id)
	}
	var total int64
	for _, f := range m.Files {
		total += f.Size
	}
	if _, archived := e.obs.results(); !slices.Equal(archived, []int64{total}) {
		t.Errorf("observed archives %v, want one of %d bytes", archived, total)
	}
	if inv := e.mem.Inventory(id); len(inv.Nodes) != 8 || e.flaky.Calls("Destroy") != 0 {
		t.Errorf("the archive took the lab down: %d nodes left, %d destroys", len(inv.Nodes), e.flaky.Calls("Destroy"))
	}
}

// TestArchiveRetriesAfterAFailedExport: an export that fails halfway
// through the nodes fails the task for a retry; nothing is marked done,
// and the retry writes every file whole.
func TestArchiveRetriesAfterAFailedExport(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	e.flaky.FailWhen(func(c labtest.Call) error {
		if c.Method == "CaptureNode" && c.Node == "kyoto" && c.N == 3 {
			return errors.New("engine stalled")
		}
		return nil
	})

	err := e.h.Archive(ctx, archiveTask(t, id, "candidate"))
	if err == nil || skipsRetry(err) || !strings.Contains(err.Error(), "engine stalled") {
		t.Fatalf("err = %v, want a retryable export failure", err)
	}
	if s := e.get(t, id); s.Status != stateArchiving {
		t.Errorf("status %s after a failed archive, want archiving", s.Status)
	}
	if _, err := e.store.Manifest(ctx, id); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a failed archive left a manifest (%v)", err)
	}
	files, err := e.store.Files(ctx, id, store.SnapshotDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.Contains(f.Name, "kyoto") {
			t.Errorf("the failed export of kyoto left %s", f.Name)
		}
	}
	if _, cleanups := e.enq.calls(); len(cleanups) != 0 || e.flaky.Calls("Destroy") != 0 {
		t.Errorf("a failed archive chained cleanup (%v) or destroyed the lab", cleanups)
	}
	if _, archived := e.obs.results(); !slices.Equal(archived, []int64{-1}) {
		t.Errorf("observed archives %v, want one failure", archived)
	}

	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatalf("retry: %v", err)
	}
	e.checkSnapshot(t, id, "candidate")
	if _, cleanups := e.enq.calls(); len(cleanups) != 1 {
		t.Errorf("cleanups enqueued %v, want one", cleanups)
	}
}

func TestArchiveRecordsMissingNodes(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	if err := e.mem.Destroy(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	m, err := e.store.Manifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Files) != 0 || len(m.Missing) != 8 {
		t.Errorf("manifest of a lab that is gone: %d files, missing %v; want every node missing", len(m.Files), m.Missing)
	}
	if _, cleanups := e.enq.calls(); len(cleanups) != 1 {
		t.Errorf("cleanups enqueued %v, want one", cleanups)
	}
}

func TestArchiveOnlySubmittedSessions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	open := e.readyLab(t, "ada@example.com")
	if err := e.h.Archive(ctx, archiveTask(t, open, "candidate")); !skipsRetry(err) {
		t.Errorf("archive of an open session: %v, want SkipRetry", err)
	}
	if s := e.get(t, open); s.Status != stateReady {
		t.Errorf("the open session is %s", s.Status)
	}

	done := e.submittedLab(t, "candidate")
	for _, task := range []func() error{
		func() error { return e.h.Archive(ctx, archiveTask(t, done, "candidate")) },
		func() error { return e.h.Cleanup(ctx, cleanupTask(t, done, "candidate")) },
	} {
		if err := task(); err != nil {
			t.Fatal(err)
		}
	}
	exports := e.flaky.Calls("Capture")
	if err := e.h.Archive(ctx, archiveTask(t, done, "candidate")); err != nil {
		t.Errorf("archive of a completed session: %v, want a no-op", err)
	}
	if n := e.flaky.Calls("Capture"); n != exports {
		t.Errorf("archive of a completed session captured the lab %d times", n-exports)
	}
}

func TestCleanup(t *testing.T) {
	cases := []struct {
		reason string
		want   session.State
	}{
		{"candidate", stateCompleted},
		{"admin", stateCompleted},
		{"deadline", stateExpired},
	}
	for _, tc := range cases {
		t.Run(tc.reason, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			id := e.submittedLab(t, tc.reason)
			if err := e.h.Archive(ctx, archiveTask(t, id, tc.reason)); err != nil {
				t.Fatal(err)
			}
			short := e.get(t, id).Short
			for i := range 2 {
				if err := e.h.Cleanup(ctx, cleanupTask(t, id, tc.reason)); err != nil {
					t.Fatalf("cleanup #%d: %v", i+1, err)
				}
			}
			s := e.get(t, id)
			if s.Status != tc.want || !s.CompletedAt.Equal(e.clock()) {
				t.Errorf("status %s completed %v, want %s now", s.Status, s.CompletedAt, tc.want)
			}
			for _, n := range s.Nodes {
				if n.State != lab.StateMissing {
					t.Errorf("node %s recorded as %s after cleanup", n.Name, n.State)
				}
			}
			if inv := e.mem.Inventory(id); len(inv.Nodes) != 0 {
				t.Errorf("cleanup left %d nodes", len(inv.Nodes))
			}
			// The prefix that names the lab's resources is free again.
			if n, err := e.rdb.Exists(ctx, "examlab:short:"+short).Result(); err != nil || n != 0 {
				t.Errorf("prefix %s still claimed (%d, %v)", short, n, err)
			}
		})
	}
}

func TestCleanupRetriesWhenDestroyFails(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	e.flaky.FailNext("Destroy", 1, nil)
	if err := e.h.Cleanup(ctx, cleanupTask(t, id, "candidate")); !errors.Is(err, labtest.ErrInjected) || skipsRetry(err) {
		t.Fatalf("err = %v, want the retryable destroy failure", err)
	}
	if s := e.get(t, id); s.Status != stateArchiving {
		t.Errorf("status %s while the lab is still up, want archiving", s.Status)
	}
	if err := e.h.Cleanup(ctx, cleanupTask(t, id, "candidate")); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateCompleted {
		t.Errorf("status %s after the retry, want completed", s.Status)
	}
}

func TestSnapshot(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.readyLab(t, "ada@example.com")
	if _, code, err := lab.Output(ctx, e.mem, id, "tokyo", "sh", "-c", "echo candidate-work > /root/work.txt"); err != nil || code != 0 {
		t.Fatalf("write work file: %d %v", code, err)
	}
	task, err := scheduler.NewSnapshotTask(id, "n1")
	if err != nil {
		t.Fatal(err)
	}

	// One snapshot writer at a time: a busy lock fails the task for a retry.
	lock, err := e.store.TryLock(ctx, "snapshot", id, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.h.Snapshot(ctx, task); !errors.Is(err, store.ErrBusy) {
		t.Errorf("snapshot while another runs: %v, want ErrBusy", err)
	}
	lock.Unlock(ctx)

	if err := e.h.Snapshot(ctx, task); err != nil {
		t.Fatal(err)
	}
	e.checkSnapshot(t, id, "admin")
	if s := e.get(t, id); s.Status != stateReady || len(e.mem.Inventory(id).Nodes) != 8 {
		t.Errorf("the snapshot ended the session (%s) or its lab", s.Status)
	}
	audit, err := e.store.AuditLog(ctx, id)
	if err != nil || len(audit) == 0 || audit[len(audit)-1].Action != "snapshot-done" {
		t.Errorf("audit log %+v %v, want snapshot-done last", audit, err)
	}

	noLab := e.login(t, "bob@example.com")
	task, err = scheduler.NewSnapshotTask(noLab, "n2")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.h.Snapshot(ctx, task); !skipsRetry(err) {
		t.Errorf("snapshot of a session without a lab: %v, want SkipRetry", err)
	}
}

package workers_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/store"
)

// smallDisk mounts a tmpfs of size bytes on dir, to run out of space on,
// and unmounts it when the test ends. It skips the test where mounting is
// not allowed (it needs root, CAP_SYS_ADMIN).
func smallDisk(t *testing.T, dir string, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("mount a small tmpfs to fill (%v): run this test as root (CAP_SYS_ADMIN), as make test does", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
}

// TestArchiveOnAFullDisk: the disk fills while a snapshot is written. The
// archive fails for a retry, leaves no partial or temporary file, writes
// no manifest and does not complete the session; once there is space, the
// retry writes the whole snapshot.
func TestArchiveOnAFullDisk(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.submittedLab(t, "candidate")
	dir, err := e.store.Path(id, store.SnapshotDir)
	if err != nil {
		t.Fatal(err)
	}
	// Three pages: tokyo's tar (two) fits, osaka's runs out after its
	// first page.
	smallDisk(t, dir, "12k")

	err = e.h.Archive(ctx, archiveTask(t, id, "candidate"))
	if !errors.Is(err, syscall.ENOSPC) || skipsRetry(err) {
		t.Fatalf("archive on a full disk: %v, want a retryable ENOSPC", err)
	}
	if s := e.get(t, id); s.Status != stateArchiving {
		t.Errorf("status %s after the failed archive, want archiving", s.Status)
	}
	if _, cleanups := e.enq.calls(); len(cleanups) != 0 {
		t.Errorf("a failed archive chained cleanup: %v", cleanups)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, de := range entries {
		names = append(names, de.Name())
		if strings.HasPrefix(de.Name(), ".") || de.Name() == store.ManifestName {
			t.Errorf("the failed archive left %s", de.Name())
			continue
		}
		b, err := os.ReadFile(dir + "/" + de.Name())
		if err != nil {
			t.Fatal(err)
		}
		if err := wholeTar(b); err != nil {
			t.Errorf("%s is cut short: %v", de.Name(), err)
		}
	}
	if len(names) > 1 {
		t.Errorf("files after the failure: %v; only tokyo's tar fits", names)
	}

	// Space again: the retry converges.
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_REMOUNT, "size=4m"); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Archive(ctx, archiveTask(t, id, "candidate")); err != nil {
		t.Fatalf("retry with space: %v", err)
	}
	m := e.checkSnapshot(t, id, "candidate")
	if m.Mode != lab.SnapshotChanges || len(m.Nodes) != 8 {
		t.Fatalf("manifest mode %q with %d nodes", m.Mode, len(m.Nodes))
	}
	// The memory runtime has no image: each node says it fell back.
	for _, n := range m.Nodes {
		if n.Mode != lab.SnapshotFull || n.Fallback == "" || n.Bytes == 0 {
			t.Errorf("node %+v: want a full capture with its reason", n)
		}
	}
}

// wholeTar reports whether b is a tar that ends as a tar ends.
func wholeTar(b []byte) error {
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		_, err := tr.Next()
		if errors.Is(err, io.EOF) {
			if len(b) < 1024 || !bytes.Equal(b[len(b)-1024:], make([]byte, 1024)) {
				return errors.New("no end blocks")
			}
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := io.Copy(io.Discard, tr); err != nil {
			return err
		}
	}
}

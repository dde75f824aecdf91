package platform_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/testlab"
)

// smallDisk mounts a tmpfs of size bytes for the test and returns its
// path; it is unmounted when the test ends. Mounting needs root (CI runs
// as root); elsewhere the test is skipped saying so.
func smallDisk(t *testing.T, size int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs as the state directory; run the test as root (as `make test` in CI does)")
	}
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, fmt.Sprintf("size=%d,mode=0750", size)); err != nil {
		t.Skipf("cannot mount a tmpfs at %s (%v); run the test as root on a host that allows mounts (not in an unprivileged container)", dir, err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, syscall.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	return dir
}

// fill writes to a file on the disk at dir until the disk is full and
// returns its path; called again, it takes whatever room was freed since.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 64<<10)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill the disk: %v", err)
			}
			break
		}
	}
	// Whatever the last partial write left, a page at most, goes too.
	for {
		if _, err := f.Write([]byte{0}); err != nil {
			break
		}
	}
	return p
}

// TestChaosDiskFull fills the state directory (a small tmpfs) while
// candidates save answers: every save answers 507 with plain words, no
// save is half-written and none acknowledged is lost; once there is room
// again the same saves succeed.
func TestChaosDiskFull(t *testing.T) {
	chaosTimed(t)
	disk := smallDisk(t, 4<<20)
	state := filepath.Join(disk, "state")
	st := testlab.Start(t, testlab.Options{
		StateDir: state,
		Roles:    &platform.Roles{API: true},
		Config:   func(c *config.Config) { c.ExamFile = chaosExam(t) },
		Platform: platform.Options{Runtime: labtest.NewMemory(labtest.MemoryOptions{}), Logger: chaosLogger(t)},
	})
	var ids, tokens []string
	for i := range 3 {
		c := st.Client()
		ids = append(ids, c.Login(t, fmt.Sprintf("disk%d@example.com", i)))
		tokens = append(tokens, c.Token)
	}
	load := newAnswerLoad(t, func() string { return st.URL }, ids, tokens)
	// Every task has an answer before the disk fills: a refused save must
	// leave it as it was.
	if n := load.saveOnce(); n != len(load.slots) {
		t.Fatalf("%d of %d saves acknowledged before the disk filled: %s", n, len(load.slots), load.summary())
	}
	load.start(20 * time.Millisecond)
	load.waitAcked(int64(4*len(load.slots)), time.Minute)

	filler := fill(t, disk)
	// Saves in flight as the disk filled may have made it; from here on
	// none can. Wait for every saver to have been refused a few times.
	before := load.refused.Load()
	deadline := time.Now().Add(time.Minute)
	for load.refused.Load() < before+int64(3*len(load.slots)) {
		if time.Now().After(deadline) {
			t.Fatalf("saves on a full disk were not refused: %s", load.summary())
		}
		time.Sleep(10 * time.Millisecond)
	}
	load.halt()
	refusedFull := load.refused.Load() - before

	// A save in flight as the disk filled may have made it, and its
	// rename freed the page of the answer it replaced: that room goes
	// to the filler too, and now every save is refused, with 507 in the
	// plain words the candidate's page shows beside the task ("Not saved
	// (…); retrying…").
	fill(t, disk)
	if n := load.saveOnce(); n != 0 {
		t.Errorf("%d saves acknowledged on a full disk: %s", n, load.summary())
	}
	load.statusMu.Lock()
	body := load.bodies[507]
	load.statusMu.Unlock()
	var refusal struct {
		Error string `json:"error"`
	}
	json.Unmarshal([]byte(body), &refusal)
	if !strings.Contains(refusal.Error, "disk space") || strings.Contains(refusal.Error, "/") || strings.Contains(refusal.Error, "no space left") {
		t.Errorf("a save on a full disk answered %q, want 507 saying in plain words the disk is full", body)
	}
	if got := load.checkOnDisk(state, false); got != len(load.slots) {
		t.Errorf("%d slots with an acknowledged answer, want %d", got, len(load.slots))
	}
	load.checkThroughAPI()

	// Room again: the same saves succeed, and they are on disk.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if n := load.saveOnce(); n != len(load.slots) {
		t.Errorf("%d of %d saves acknowledged once there was room again: %s", n, len(load.slots), load.summary())
	}
	load.checkOnDisk(state, false)
	load.checkThroughAPI()
	t.Logf("%d saves acknowledged, %d refused while the disk was full; answers: %s", load.acked.Load(), refusedFull, load.summary())
}

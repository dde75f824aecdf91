package testlab

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSummariseStacks: goroutines blocked for minutes are grouped by their
// wait and top frames, most common first; short waits are left out.
func TestSummariseStacks(t *testing.T) {
	dump := `goroutine 1 [semacquire, 4 minutes]:
sync.runtime_SemacquireMutex(0xc000)
	/usr/lib/go/src/runtime/sema.go:71 +0x25
github.com/docker/docker/libnetwork.(*controller).Networks(0xc0001)
	/build/libnetwork/controller.go:900 +0x45

goroutine 2 [semacquire, 3 minutes]:
sync.runtime_SemacquireMutex(0xc000)
	/usr/lib/go/src/runtime/sema.go:71 +0x25
github.com/docker/docker/libnetwork.(*controller).Networks(0xc0001)
	/build/libnetwork/controller.go:900 +0x45

goroutine 3 [syscall, 5 minutes, locked to thread]:
syscall.Syscall6(0x3d)
	/usr/lib/go/src/syscall/asm.s:10
os.(*Process).blockUntilWaitable(0xc0002)
	/usr/lib/go/src/os/wait.go:20

goroutine 4 [select]:
net/http.(*conn).serve(0xc0003)
	/usr/lib/go/src/net/http/server.go:1 +0x1

goroutine 5 [chan receive, 30 seconds]:
main.wait()
	/x.go:1
`
	got := summariseStacks([]byte(dump), 8, 6)
	first := strings.Index(got, "2 goroutine(s):\n  [semacquire]\n    sync.runtime_SemacquireMutex(0xc000)\n    github.com/docker/docker/libnetwork.(*controller).Networks(0xc0001)\n")
	if first != 0 {
		t.Errorf("summary does not open with the two goroutines waiting on the controller:\n%s", got)
	}
	if !strings.Contains(got, "1 goroutine(s):\n  [syscall]\n    syscall.Syscall6(0x3d)\n    os.(*Process).blockUntilWaitable(0xc0002)\n") {
		t.Errorf("summary leaves out the goroutine in a syscall for 5 minutes:\n%s", got)
	}
	for _, short := range []string{"net/http", "main.wait"} {
		if strings.Contains(got, short) {
			t.Errorf("summary has %s, which waited less than a minute:\n%s", short, got)
		}
	}
	if strings.Contains(got, ".go:") {
		t.Errorf("summary has file lines:\n%s", got)
	}
}

// TestEngineTroubleOfAHealthyEngine: the engine this machine runs answers
// the probe, so there is nothing to report and nothing is held against
// later tests.
func TestEngineTroubleOfAHealthyEngine(t *testing.T) {
	engineStalled.Store(true)
	if got := EngineTrouble(); got != "" {
		t.Fatalf("EngineTrouble() = %q for an engine that answers", got)
	}
	if engineStalled.Load() {
		t.Error("the engine is still marked stalled after a probe it answered")
	}
}

// TestEngineTroubleOfAStalledEngine: an engine socket that takes the call
// and never answers is reported stalled, naming the call, and marked so
// for the tests after.
func TestEngineTroubleOfAStalledEngine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never answered
		}
	}()
	t.Setenv("DOCKER_HOST", "unix://"+sock)
	defer func(d time.Duration) { engineProbeTimeout = d; engineStalled.Store(false) }(engineProbeTimeout)
	engineProbeTimeout = 200 * time.Millisecond
	// Not this host's engine: it is not the one stalled here.
	defer func(f string) { dockerdPidFile = f }(dockerdPidFile)
	dockerdPidFile = filepath.Join(t.TempDir(), "none.pid")
	got := EngineTrouble()
	if !strings.Contains(got, "THE DOCKER ENGINE IS STALLED: GET /_ping did not answer within 200ms") {
		t.Errorf("EngineTrouble() = %q, want it to name the unanswered ping", got)
	}
	if !engineStalled.Load() {
		t.Error("a stalled engine is not marked for the tests after")
	}
}

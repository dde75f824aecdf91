package platform_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// childAPIEnv, set in a test binary's environment, makes it an API
// process instead of running tests, configured from the EXAMLAB_*
// environment as `examlab api` is: TestChaosAPIKilled kills it with
// SIGKILL. Its lab runtime is the in-memory one; saving answers needs
// none.
const childAPIEnv = "EXAMLAB_TEST_CHILD_API"

// init runs before TestMain, so that the child needs nothing of it.
func init() {
	if os.Getenv(childAPIEnv) == "" {
		return
	}
	if err := childAPI(); err != nil {
		fmt.Fprintln(os.Stderr, "child api:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func childAPI() error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg := config.Default()
	if err := cfg.FromEnv(os.Getenv); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	p, err := platform.New(ctx, cfg, platform.Roles{API: true}, platform.Options{Logger: log,
		Runtime: labtest.NewMemory(labtest.MemoryOptions{})})
	if err != nil {
		return err
	}
	if err := p.Start(ctx); err != nil {
		return err
	}
	werr := p.Wait(ctx)
	return errors.Join(werr, p.Shutdown(context.Background()))
}

// apiProcess is an API child process on a fixed address.
type apiProcess struct {
	t    *testing.T
	env  []string
	addr string
	logs string
	n    int
	cmd  *exec.Cmd
}

// start runs the API process and waits until it answers.
func (a *apiProcess) start() {
	a.t.Helper()
	a.n++
	logf := filepath.Join(a.logs, fmt.Sprintf("api%d.log", a.n))
	f, err := os.Create(logf)
	if err != nil {
		a.t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = a.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		a.t.Fatal(err)
	}
	f.Close()
	a.cmd = cmd
	a.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if a.t.Failed() {
			b, _ := os.ReadFile(logf)
			a.t.Logf("%s:\n%s", filepath.Base(logf), bytes.TrimSpace(b))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + a.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("the API process did not answer on %s: %v", a.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// kill ends the API process with SIGKILL: requests in flight get no
// answer, nothing is drained.
func (a *apiProcess) kill() {
	a.t.Helper()
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		a.t.Fatal(err)
	}
	a.cmd.Wait()
}

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// TestChaosAPIKilled kills the API process (SIGKILL) twice while
// candidates save answers, and restarts it: every save it acknowledged
// is on disk, right after each kill and at the end, and readable through
// the restarted API.
func TestChaosAPIKilled(t *testing.T) {
	chaosTimed(t)
	cfg := config.Default()
	cfg.Redis = testlab.Redis(t)
	cfg.StateDir = t.TempDir()
	cfg.ExamFile = chaosExam(t)
	cfg.AdminToken = "test-admin-token-0123456789"
	ctx := context.Background()
	// The test's own platform runs no role: it signs the candidates in.
	p, err := platform.New(ctx, cfg, platform.Roles{}, platform.Options{Runtime: labtest.NewMemory(labtest.MemoryOptions{})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	var ids, tokens []string
	for i := range 4 {
		sess, token := storetest.SignIn(t, p.Store, fmt.Sprintf("api%d@example.com", i), p.Exam.ID, time.Hour, config.RuntimeDocker)
		ids, tokens = append(ids, sess.ID), append(tokens, token)
	}
	api := &apiProcess{t: t, addr: freeAddr(t), logs: t.TempDir(), env: append(os.Environ(), childAPIEnv+"=1",
		"EXAMLAB_REDIS="+cfg.Redis, "EXAMLAB_STATE_DIR="+cfg.StateDir, "EXAMLAB_EXAM="+cfg.ExamFile,
		"EXAMLAB_ADMIN_TOKEN="+cfg.AdminToken, "EXAMLAB_PRACTICE=false")}
	api.env = append(api.env, "EXAMLAB_LISTEN="+api.addr)
	api.start()

	load := newAnswerLoad(t, func() string { return "http://" + api.addr }, ids, tokens)
	load.start(10 * time.Millisecond)
	load.waitEachAcked(time.Minute)
	for round := 1; round <= 2; round++ {
		load.waitAcked(load.acked.Load()+int64(10*len(load.slots)), time.Minute)
		api.kill()
		// The files are the record: what was acknowledged is there while
		// no API runs.
		if n := load.checkOnDisk(cfg.StateDir, true); n != len(load.slots) {
			t.Errorf("round %d: %d slots with an acknowledged answer, want %d", round, n, len(load.slots))
		}
		api.start()
	}
	load.waitAcked(load.acked.Load()+int64(len(load.slots)), time.Minute)
	load.halt()
	load.checkOnDisk(cfg.StateDir, true)
	load.checkThroughAPI()
	t.Logf("%d saves acknowledged, %d without an answer or refused, across two kills; answers by status: %s",
		load.acked.Load(), load.refused.Load(), load.summary())
}

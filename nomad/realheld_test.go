package nomad_test

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/relay"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// heldOrigin is the browser Origin the test's relays accept.
const heldOrigin = "http://examlab.test"

// TestRealNomadHeldTerminal: on a real Nomad agent whose client runs a
// static examlab, the lab's agent puts that examlab into the grader's
// tools, and a candidate's shell lives in its node: a relay that stops
// and a new one that starts reattach the candidate to the same shell, with
// its scrollback, recorded in one file. Run with a static
// EXAMLAB_NOMAD_LABNET (make build); see nomad/README.md.
func TestRealNomadHeldTerminal(t *testing.T) {
	rt, _ := realRuntime(t)
	if tools := realTools(t); tools.With == "" {
		t.Fatalf("EXAMLAB_NOMAD_LABNET is no static examlab (%v): build it with make build", tools.NoHolder)
	}
	heldAcrossRelays(t, rt, config.RuntimeNomad)
}

// heldAcrossRelays runs a candidate's lab on rt (the runtime the config
// names runtime) and checks that tokyo's shell outlives a relay: one relay
// opens it, stops, and a new one reattaches to the same shell, with its
// scrollback, recorded in one file.
func heldAcrossRelays(t *testing.T, rt lab.Runtime, runtime string) {
	// The platform without a relay of its own: the test's relays stop and
	// start beside it.
	st := testlab.Start(t, testlab.Options{
		Roles:    &platform.Roles{API: true, Worker: true},
		Config:   func(c *config.Config) { c.Runtime = runtime },
		Platform: platform.Options{Runtime: rt, NoScheduler: true},
	})
	cand := st.Client()
	id := cand.Login(t, "held@example.com")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testlab.ArchiveTimeout)
		defer cancel()
		if err := rt.Destroy(ctx, id); err != nil {
			t.Errorf("destroy %s: %v", id, err)
		}
	})
	cand.StartLab(t, id)

	r1, url1 := heldRelay(t, st, rt)
	tm := testlab.OpenTerminal(t, url1, heldOrigin, cand.Token, id, "tokyo")
	if rc := tm.Probe(t, "first", "export X=42; echo hel''lo-held; test -S /run/examlab/term-tokyo.sock"); rc != 0 {
		t.Fatalf("the shell is not the holder's (exit %d): the node has no /.examlab/examlab, or the relay fell back:\n%s", rc, tm.Output())
	}
	stopCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r1.Shutdown(stopCtx); err != nil {
		t.Fatalf("stop the first relay: %v", err)
	}

	_, url2 := heldRelay(t, st, rt)
	tm2 := testlab.OpenTerminal(t, url2, heldOrigin, cand.Token, id, "tokyo")
	if rc := tm2.Probe(t, "second", `test "$X" = 42`); rc != 0 {
		t.Errorf("after the relay restart the shell is another (X unset, exit %d):\n%s", rc, tm2.Output())
	}
	if !strings.Contains(tm2.Output(), "hello-held") {
		t.Errorf("after the relay restart no scrollback:\n%s", tm2.Output())
	}
	dir, err := st.Store.Path(id, store.TerminalDir)
	if err != nil {
		t.Fatal(err)
	}
	if files, _ := filepath.Glob(filepath.Join(dir, "tokyo.*cast")); len(files) != 1 {
		t.Errorf("recordings of tokyo: %v; want one, continued", files)
	}
}

// heldRelay starts a relay of the test's own on the Nomad runtime, beside
// st's roles, and returns it and its URL; it is stopped when the test
// ends, if it is still running.
func heldRelay(t *testing.T, st *testlab.Stack, rt lab.Runtime) (*relay.Relay, string) {
	t.Helper()
	r, err := relay.New(relay.Options{
		Store: st.Store, Runner: rt, Auth: st.Auth, Origins: []string{heldOrigin},
		Exams:  func(id string) (*exam.Exam, bool) { return st.Exam, id == st.Exam.ID },
		Logger: slog.New(slog.NewTextHandler(relayLog{t}, &slog.HandlerOptions{Level: slog.LevelInfo})),
	})
	if err != nil {
		t.Fatal(err)
	}
	app := fiber.New(fiber.Config{DisableStartupMessage: true})
	r.Register(app)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go app.Listener(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = r.Shutdown(ctx)
		_ = app.ShutdownWithContext(ctx)
	})
	return r, "http://" + ln.Addr().String()
}

// relayLog writes a relay's log lines to the test's log.
type relayLog struct{ t testing.TB }

func (w relayLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

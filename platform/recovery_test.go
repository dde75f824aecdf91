package platform_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// TestProvisionKilledMidwayConverges cancels a provision handler while it
// is creating containers — as a worker killed mid-task would leave it —
// then runs it again, and again: exactly one complete lab results, wired
// once, its setup done.
func TestProvisionKilledMidwayConverges(t *testing.T) {
	cfg := config.Default()
	cfg.Redis = testlab.Redis(t)
	cfg.StateDir = t.TempDir()
	cfg.AdminToken = "test-admin-token-0123456789"
	ctx := context.Background()
	p, err := platform.New(ctx, cfg, platform.Roles{Worker: true}, platform.Options{NoScheduler: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	eng := testlab.NewEngine(t)

	sess, _ := storetest.SignIn(t, p.Store, "kill@example.com", p.Exam.ID, time.Hour, "docker")
	t.Cleanup(func() { p.Runtime.Destroy(context.Background(), sess.ID) })
	// Admitted (nothing limits it), with its provision queued: the worker
	// server is not running, so the handler is driven by hand below.
	if sess, err = scheduler.Start(ctx, p.Store, p.Enqueuer, sess.ID, time.Now()); err != nil || sess.Status != session.StateProvisioning {
		t.Fatalf("start: %v %v", sess, err)
	}
	task, err := scheduler.NewProvisionTask(sess.ID)
	if err != nil {
		t.Fatal(err)
	}

	// First run: cancelled once some, but not all, containers exist.
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Handlers.Provision(runCtx, task) }()
	deadline := time.Now().Add(testlab.ProvisionTimeout)
	for {
		if n := len(eng.Containers(t, sess.ID)); n >= 2 {
			t.Logf("cancelling with %d containers created", n)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("provision created nothing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	if err := <-done; err == nil {
		t.Log("provision finished before the cancel landed; the rerun must still converge")
	}

	// Second and third runs converge on one complete lab.
	for i := 0; i < 2; i++ {
		if err := p.Handlers.Provision(ctx, task); err != nil {
			t.Fatalf("rerun %d: %v", i, err)
		}
	}
	cs := eng.Containers(t, sess.ID)
	if len(cs) != 9 {
		t.Fatalf("%d containers after reruns, want 8 nodes and the switch: %s", len(cs), testlab.Summary(cs))
	}
	names := map[string]bool{}
	for _, c := range cs {
		if c.State != "running" || names[c.Names[0]] {
			t.Errorf("container %v %s (duplicate=%v)", c.Names, c.State, names[c.Names[0]])
		}
		names[c.Names[0]] = true
	}
	if !names["/"+lab.SwitchName(sess.ID)] {
		t.Errorf("no switch %s after reruns: %s", lab.SwitchName(sess.ID), testlab.Summary(cs))
	}
	if nets := eng.Networks(t, sess.ID); len(nets) != 0 {
		t.Fatalf("%d engine networks after reruns; a segmented lab has none", len(nets))
	}
	// Wired once: g1 holds each of its addresses once, and the lab works.
	if out, _, err := lab.Output(ctx, p.Runtime, sess.ID, "g1", "ip", "-4", "-o", "addr", "show"); err != nil || strings.Count(out, " inet ") != 3 {
		t.Errorf("g1's addresses after reruns (%v), want loopback, eth0 and eth1 once each:\n%s", err, out)
	}
	if out, code, err := lab.Output(ctx, p.Runtime, sess.ID, "tokyo", "ping", "-c1", "-W2", "phoenix"); err != nil || code != 0 {
		t.Errorf("tokyo cannot ping phoenix after reruns: exit %d %v\n%s", code, err, out)
	}
	// kyoto's setup ran: its route is planted, and its marker, which keeps
	// a rerun from running the setup again, is there.
	if out, _, err := lab.Output(ctx, p.Runtime, sess.ID, "kyoto", "ls", lab.PreparedMarker); err != nil || strings.TrimSpace(out) != lab.PreparedMarker {
		t.Errorf("kyoto holds no %s after reruns (%v): %q", lab.PreparedMarker, err, out)
	}
	if out, _, _ := lab.Output(ctx, p.Runtime, sess.ID, "kyoto", "ip", "route", "show", "default"); !strings.Contains(out, "via 192.168.30.254") {
		t.Errorf("kyoto's default route after reruns = %q, want its setup's", out)
	}
	got, _ := p.Store.Get(ctx, sess.ID)
	if got.Status != session.StateReady || got.Deadline.IsZero() || !lab.AllRunning(got.Nodes) {
		t.Fatalf("session after reruns: %s deadline=%v nodes=%+v", got.Status, got.Deadline, got.Nodes)
	}

	// Archive and cleanup converge when run twice as well.
	if _, err := p.Store.Update(ctx, sess.ID, func(x *session.Session) error { return x.WalkTo(session.StateSubmitted, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	arch, _ := scheduler.NewArchiveTask(sess.ID, "candidate")
	clean, _ := scheduler.NewCleanupTask(sess.ID, "candidate")
	for i := 0; i < 2; i++ {
		if err := p.Handlers.Archive(ctx, arch); err != nil {
			t.Fatalf("archive run %d: %v", i, err)
		}
	}
	m, err := p.Store.Manifest(ctx, sess.ID)
	if err != nil || len(m.Files) != 16 {
		t.Fatalf("manifest after two archives: %v %+v", err, m)
	}
	files, _ := p.Store.Files(ctx, sess.ID, store.SnapshotDir)
	if len(files) != 17 {
		t.Fatalf("%d snapshot files after two archives, want 17 (no temp or duplicate files)", len(files))
	}
	for i := 0; i < 2; i++ {
		if err := p.Handlers.Cleanup(ctx, clean); err != nil {
			t.Fatalf("cleanup run %d: %v", i, err)
		}
	}
	if cs := eng.Containers(t, sess.ID); len(cs) != 0 {
		t.Fatalf("containers after cleanup: %s", testlab.Summary(cs))
	}
	if got, _ := p.Store.Get(ctx, sess.ID); got.Status != session.StateCompleted {
		t.Fatalf("status after cleanup = %s", got.Status)
	}
	// A provision arriving after the end does nothing.
	if err := p.Handlers.Provision(ctx, task); err != nil {
		t.Fatalf("late provision: %v", err)
	}
	if cs := eng.Containers(t, sess.ID); len(cs) != 0 {
		t.Fatalf("late provision created containers: %s", testlab.Summary(cs))
	}
}

// TestSavedAnswerSurvivesRestarts saves an answer, then restarts the API
// and worker on the same Redis and state, then loses Redis entirely and
// rebuilds the index from the files: the answer is there every time.
func TestSavedAnswerSurvivesRestarts(t *testing.T) {
	rdsAddr := testlab.Redis(t)
	dir := t.TempDir()
	first := testlab.Start(t, testlab.Options{Redis: rdsAddr, StateDir: dir})
	c := first.Client()
	id := c.Login(t, "durable@example.com")
	if code, err := c.Do("PUT", "/api/session/"+id+"/answers/t2-reachability", map[string]any{"value": map[string]string{"cmd": "ping -c1 kyoto"}}, nil); code != 200 || err != nil {
		t.Fatalf("save: %d %v", code, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := first.Shutdown(sctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}

	check := func(st *testlab.Stack, when string) {
		t.Helper()
		c2 := st.Client()
		c2.Token = c.Token
		var out struct {
			Answers []store.Answer `json:"answers"`
		}
		code, err := c2.Do("GET", "/api/session/"+id+"/answers", nil, &out)
		if err != nil || code != 200 || len(out.Answers) != 1 {
			t.Fatalf("%s: answers %d %v %+v", when, code, err, out)
		}
		var v map[string]string
		if json.Unmarshal(out.Answers[0].Value, &v); v["cmd"] != "ping -c1 kyoto" {
			t.Fatalf("%s: answer = %s", when, out.Answers[0].Value)
		}
	}
	second := testlab.Start(t, testlab.Options{Redis: rdsAddr, StateDir: dir})
	check(second, "after restart")

	// Redis loses its data; `examlab rebuild-index` restores it from the files.
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: rdsAddr[len("unix://"):]})
	defer rdb.Close()
	if err := rdb.FlushAll(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := second.Store.Rebuild(context.Background()); err != nil || n != 1 {
		t.Fatalf("rebuild: %d %v", n, err)
	}
	check(second, "after redis loss and rebuild")
}

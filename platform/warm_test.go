package platform_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/testlab"
)

// warmExam is a two-node exam: each lab is quick to bring up. Its version
// is filled in, so a test can change the exam as a deployment would.
const warmExam = `id: warm-test
title: Warm pool test exam
version: %VERSION%
duration: 30m
tasks:
  - id: t1
    title: Hostname
    kind: text
    prompt: Print tokyo's hostname.
topology:
  image: examlab/node:bookworm
  defaults:
    limits:
      memory_mb: 128
      cpus: 0.25
      pids: 256
    capabilities: [CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID, KILL, NET_RAW, NET_BIND_SERVICE, AUDIT_WRITE]
  nodes:
    - name: tokyo
      role: branch
    - name: osaka
      role: branch
`

// Named timeouts: a stuck pool from a slow one, no measure of speed.
const (
	warmFillTimeout   = 3 * time.Minute
	warmDoneTimeout   = 5 * time.Minute
	warmBrokenTimeout = 2 * time.Minute
)

func writeWarmExam(t testing.TB, dir, version string) string {
	t.Helper()
	p := filepath.Join(dir, "warm-"+version+".yaml")
	if err := os.WriteFile(p, []byte(strings.ReplaceAll(warmExam, "%VERSION%", version)), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// warmStack runs the whole platform on Docker with the warm exam at
// version, on redis and dir (empty: new ones) as instance.
func warmStack(t testing.TB, redisAddr, dir, instance, version string) *testlab.Stack {
	t.Helper()
	examFile := writeWarmExam(t, t.TempDir(), version)
	return testlab.Start(t, testlab.Options{Redis: redisAddr, StateDir: dir, Config: func(c *config.Config) {
		c.ExamFile = examFile
		c.Instance = instance
		// The tests run the reaper's passes themselves: TestWarmPool
		// provisions an orphan lab for one to remove, and a periodic pass
		// landing while it comes up would remove it half made.
		c.ReapEvery = time.Hour
	}})
}

type warmView struct {
	Warm struct {
		Size   int             `json:"size"`
		Ready  int             `json:"ready"`
		Making int             `json:"making"`
		Labs   []store.WarmLab `json:"labs"`
	} `json:"warm"`
}

func poolOf(t testing.TB, admin *testlab.Client) warmView {
	t.Helper()
	var v warmView
	if code, err := admin.Do("GET", "/api/admin/sittings/"+platform.PracticeSitting, nil, &v); err != nil || code != 200 {
		t.Fatalf("sitting: %d %v", code, err)
	}
	return v
}

// waitPool waits until the practice sitting's pool has want ready labs,
// all of version (empty: any), and returns them.
func waitPool(t testing.TB, admin *testlab.Client, want int, version string) []store.WarmLab {
	t.Helper()
	deadline := time.Now().Add(warmFillTimeout)
	var v warmView
	for time.Now().Before(deadline) {
		v = poolOf(t, admin)
		ok := v.Warm.Ready == want && len(v.Warm.Labs) == want
		for _, w := range v.Warm.Labs {
			ok = ok && (version == "" || w.Version == version)
		}
		if ok {
			return v.Warm.Labs
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Fatalf("the pool did not reach %d ready labs of %s: %+v", want, version, v.Warm)
	return nil
}

func setWarm(t testing.TB, admin *testlab.Client, body map[string]any) (int, string) {
	t.Helper()
	var out struct {
		Error string `json:"error"`
	}
	code, err := admin.Do("PATCH", "/api/admin/sittings/"+platform.PracticeSitting, body, &out)
	if err != nil {
		t.Fatal(err)
	}
	return code, out.Error
}

// TestWarmPool runs a warm pool of two on Docker: it fills; a start is
// ready in the same request, in a lab of the pool, whose nodes answer
// under the lab's id; the pool refills; submit archives and removes the
// claimed lab; the reaper leaves the pool alone but removes an orphan; a
// changed exam replaces every warm lab; a lab whose node is killed while
// it waits is replaced and never handed out; a pool larger than its
// capacity is refused naming the field.
func TestWarmPool(t *testing.T) {
	redisAddr, dir := testlab.Redis(t), t.TempDir()
	instance := "t-" + strings.ToLower(store.NewSessionID())
	st := warmStack(t, redisAddr, dir, instance, "v1")
	ctx := context.Background()
	eng := testlab.NewEngine(t)
	t.Cleanup(func() {
		// Whatever the test left: every lab of this instance.
		ids, _ := st.Runtime.Labs(context.Background())
		for _, id := range ids {
			st.Runtime.Destroy(context.Background(), id)
		}
	})
	admin := st.Admin()

	for _, tc := range []struct {
		name  string
		body  map[string]any
		field string
	}{
		{"larger than capacity", map[string]any{"capacity": 1, "warm": 2}, "warm"},
		{"negative", map[string]any{"warm": -1}, "warm"},
		{"too many", map[string]any{"warm": 100000}, "warm"},
		{"bad lead", map[string]any{"warm": 1, "warm_lead": "soon"}, "warm_lead"},
		{"short max age", map[string]any{"warm": 1, "warm_max_age": "1m"}, "warm_max_age"},
		{"check too often", map[string]any{"warm": 1, "warm_check": "1s"}, "warm_check"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, msg := setWarm(t, admin, tc.body)
			if code != 400 || !strings.Contains(msg, tc.field) {
				t.Fatalf("PATCH %v: %d %q, want 400 naming %s", tc.body, code, msg, tc.field)
			}
		})
	}
	if v := poolOf(t, admin); v.Warm.Size != 0 {
		t.Fatalf("a refused edit set warm to %d", v.Warm.Size)
	}

	if code, msg := setWarm(t, admin, map[string]any{"warm": 2}); code != 200 {
		t.Fatalf("set warm 2: %d %s", code, msg)
	}
	pool := waitPool(t, admin, 2, "v1")
	inPool := map[string]bool{}
	for _, w := range pool {
		inPool[w.ID] = true
		if n := len(eng.Containers(t, w.ID)); n != 2 {
			t.Fatalf("warm lab %s has %d containers, want 2", w.ID, n)
		}
	}

	// A start claims one: ready when the start request answers.
	c := st.Client()
	id := c.Login(t, "warm1@example.com")
	if code, err := c.Do("POST", "/api/session/"+id+"/start", nil, nil); err != nil || (code != 200 && code != 202) {
		t.Fatalf("start: %d %v", code, err)
	}
	if s := c.Status(t, id); s.Status != "ready" {
		t.Fatalf("after the start the session is %s, want ready (claimed from the pool)", s.Status)
	}
	sess, err := st.Store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if !sess.FromWarmPool() || !inPool[sess.LabID] || sess.Deadline.IsZero() {
		t.Fatalf("session lab_id %q (pool %v), deadline %v", sess.LabID, inPool, sess.Deadline)
	}
	out, code, err := lab.Output(ctx, st.Runtime, sess.Lab(), "tokyo", "hostname")
	if err != nil || code != 0 || strings.TrimSpace(out) != "tokyo" {
		t.Fatalf("exec hostname in the claimed lab: %q %d %v", out, code, err)
	}
	// The candidate's terminal reaches the claimed lab's node.
	// No Origin: a client that is no browser (the stack's public URL
	// names port 0).
	term := testlab.OpenTerminal(t, st.URL, "", c.Token, id, "tokyo")
	if code := term.Probe(t, "hostname", `test "$(hostname)" = tokyo`); code != 0 {
		t.Fatalf("terminal in the claimed lab: exit %d: %s", code, term.Output())
	}
	term.Close()
	if n := len(eng.Containers(t, id)); n != 0 {
		t.Fatalf("%d containers carry the session's own id; the lab is the warm lab's", n)
	}
	var det struct {
		Lab struct {
			LabID    string `json:"lab_id"`
			WarmPool bool   `json:"from_warm_pool"`
		} `json:"lab"`
		Audit []store.AuditEntry `json:"audit"`
	}
	if code, err := admin.Do("GET", "/api/admin/session/"+id+"/details", nil, &det); err != nil || code != 200 {
		t.Fatalf("details: %d %v", code, err)
	}
	if det.Lab.LabID != sess.LabID || !det.Lab.WarmPool {
		t.Fatalf("admin details show lab_id %q from_warm_pool %v, want %s", det.Lab.LabID, det.Lab.WarmPool, sess.LabID)
	}
	claimed := false
	for _, a := range det.Audit {
		claimed = claimed || a.Action == "warm-claimed"
	}
	if !claimed {
		t.Fatal("no warm-claimed audit entry")
	}

	// The pool refills; the reaper leaves it and the claimed lab alone
	// and removes an orphan.
	refilled := waitPool(t, admin, 2, "v1")
	orphan := store.NewSessionID()
	spec, err := lab.NewSpec(st.Exam, lab.Session{ID: orphan})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Runtime.Provision(ctx, spec); err != nil {
		t.Fatal(err)
	}
	removed, err := st.Handlers.ReapOnce(ctx)
	if err != nil {
		t.Fatal(err)
	}
	gone := map[string]bool{}
	for _, r := range removed {
		gone[r] = true
	}
	if !gone[orphan] {
		t.Fatalf("the reaper removed %v, not the orphan %s", removed, orphan)
	}
	for _, w := range append(refilled, store.WarmLab{ID: sess.LabID}) {
		if gone[w.ID] {
			t.Fatalf("the reaper removed lab %s (pool or claimed)", w.ID)
		}
	}

	// Submit archives the claimed lab and removes its containers.
	if code, err := c.Do("POST", "/api/session/"+id+"/submit", nil, nil); err != nil || code >= 300 {
		t.Fatalf("submit: %d %v", code, err)
	}
	c.WaitStatus(t, id, warmDoneTimeout, "completed")
	if n := len(eng.Containers(t, sess.LabID)); n != 0 {
		t.Fatalf("%d containers of the claimed lab left after submit", n)
	}
	// The cleanup records the session completed, then seals it, gives its
	// slot back and drops the claimed lab's record: the record may
	// outlive the status the test saw by a moment, not for good.
	for deadline := time.Now().Add(warmDoneTimeout); ; {
		_, err := st.Store.WarmLab(ctx, sess.LabID)
		if errors.Is(err, store.ErrNoWarmLab) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the claimed lab's record outlived its session by %v", warmDoneTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if m, err := st.Store.Manifest(ctx, id); err != nil || len(m.Files) == 0 {
		t.Fatalf("archive manifest of the claimed lab: %+v %v", m, err)
	}

	// The exam changes (a new deployment of it): every warm lab of v1 is
	// replaced, never handed out.
	st.Shutdown(ctx)
	st2 := warmStack(t, redisAddr, dir, instance, "v2")
	admin2 := st2.Admin()
	fresh := waitPool(t, admin2, 2, "v2")
	for _, w := range fresh {
		for _, old := range refilled {
			if w.ID == old.ID {
				t.Fatalf("lab %s of v1 kept after the exam changed", w.ID)
			}
		}
	}
	for _, old := range refilled {
		deadline := time.Now().Add(warmFillTimeout)
		for len(eng.Containers(t, old.ID)) > 0 && time.Now().Before(deadline) {
			time.Sleep(200 * time.Millisecond)
		}
		if n := len(eng.Containers(t, old.ID)); n != 0 {
			t.Fatalf("lab %s of the old exam still has %d containers", old.ID, n)
		}
	}

	// A node of a ready lab is killed through the engine: the refill's
	// health check (every 5 s here) takes the lab out, removes its
	// containers and network, and makes another.
	if code, msg := setWarm(t, admin2, map[string]any{"warm_check": "5s"}); code != 200 {
		t.Fatalf("set warm_check: %d %s", code, msg)
	}
	victim := fresh[0].ID
	eng.Stop(t, lab.ContainerName(victim, "tokyo"))
	deadline := time.Now().Add(warmBrokenTimeout)
	for {
		// A pass now and then besides the stack's own, every 5 s.
		if _, err := st2.Handlers.WarmRefillOnce(ctx); err != nil {
			t.Logf("refill: %v", err)
		}
		v := poolOf(t, admin2)
		replaced := v.Warm.Ready == 2 && len(v.Warm.Labs) == 2
		for _, w := range v.Warm.Labs {
			replaced = replaced && w.ID != victim
		}
		cs, nets := eng.Containers(t, victim), eng.Networks(t, victim)
		if replaced && len(cs) == 0 && len(nets) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s after its node tokyo was killed: pool %+v (want 2 ready without it), its containers %s, its networks %d",
				warmBrokenTimeout, v.Warm, testlab.Summary(cs), len(nets))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if n, err := st2.Store.WarmReplacements(ctx); err != nil || n[store.WarmReplacedBroken] != 1 {
		t.Fatalf("replacements %v %v, want broken 1", n, err)
	}
	trail, err := st2.Store.SittingAudit(ctx, platform.PracticeSitting)
	if err != nil {
		t.Fatal(err)
	}
	audited := false
	for _, a := range trail {
		audited = audited || (a.Action == "warm-lab-broken" && a.Detail["lab_id"] == victim)
	}
	if !audited {
		t.Fatalf("no warm-lab-broken entry for %s", victim)
	}

	c2 := st2.Client()
	id2 := c2.Login(t, "warm2@example.com")
	if code, err := c2.Do("POST", "/api/session/"+id2+"/start", nil, nil); err != nil || (code != 200 && code != 202) {
		t.Fatalf("start: %d %v", code, err)
	}
	s2, err := st2.Store.Get(ctx, id2)
	if err != nil {
		t.Fatal(err)
	}
	w2, err := st2.Store.WarmLab(ctx, s2.LabID)
	if err != nil || w2.Version != "v2" || s2.Status != "ready" || s2.LabID == victim {
		t.Fatalf("claim after the exam changed and a lab broke (%s): %s lab %+v %v", victim, s2.Status, w2, err)
	}
	for _, node := range []string{"tokyo", "osaka"} {
		if out, code, err := lab.Output(ctx, st2.Runtime, s2.Lab(), node, "hostname"); err != nil || code != 0 || strings.TrimSpace(out) != node {
			t.Fatalf("exec hostname in %s of the claimed lab %s: %q %d %v", node, s2.LabID, out, code, err)
		}
	}

	// Warm 0 empties the pool.
	if code, msg := setWarm(t, admin2, map[string]any{"warm": 0}); code != 200 {
		t.Fatalf("set warm 0: %d %s", code, msg)
	}
	deadline = time.Now().Add(warmFillTimeout)
	for len(poolOf(t, admin2).Warm.Labs) > 0 && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if v := poolOf(t, admin2); len(v.Warm.Labs) > 0 {
		t.Fatalf("warm 0 left %+v", v.Warm)
	}
}

package workers_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/nomad/api"
	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/docker"
	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/jobspecs"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/nomad"
	"github.com/examlab/examlab/nomad/nomadfake"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
	"github.com/examlab/examlab/testlab/redistest"
	"github.com/examlab/examlab/workers"
)

// twoNodes is a small flat exam, so the lost-lab tests on the fake Nomad
// run real labs without loading the engine with eight containers each.
const twoNodes = `
id: lost-two
title: Two nodes
duration: 90m
tasks:
  - {id: t1, title: Hostname, kind: text, prompt: "What is the hostname of a?"}
topology:
  image: examlab/node:bookworm
  defaults:
    limits: {memory_mb: 64, cpus: 0.1, pids: 64}
  nodes:
    - {name: a, role: host}
    - {name: b, role: host}
`

// Named bounds for what the fake-Nomad lost-lab test waits on.
const (
	nomadProvisionTimeout = 3 * time.Minute
	// lostShownBound bounds the wait for the periodic sweep (every 10s)
	// to show a lost allocation on the session: a hang guard, not a
	// timing assertion; the time it took is logged.
	lostShownBound = 2 * time.Minute
)

// nomadEnv runs the handlers on the Nomad runtime against the fake, whose
// client runs every lab on the real Docker engine, with a real store.
type nomadEnv struct {
	fake  *nomadfake.Server
	rt    *nomad.Runtime
	store *store.Store
	redis string
	h     *workers.Handlers
	enq   *recorder
	eng   *testlab.Engine
	ex    *exam.Exam
}

func newNomadEnv(t *testing.T) *nomadEnv {
	t.Helper()
	d, err := docker.New(docker.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := d.Ping(pctx); err != nil {
		t.Fatalf("this test needs a running Docker engine and the lab image (`make image`): %v", err)
	}
	fake, err := nomadfake.New(nomadfake.Options{Docker: d})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(fake.Close)
	rt, err := nomad.New(nomad.Options{Client: &api.Config{Address: fake.URL()}, WaitTime: 5 * time.Second,
		Job: jobspecs.NomadOptions{Labnet: "/usr/local/bin/examlab"}})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := exam.Parse([]byte(twoNodes))
	if err != nil {
		t.Fatal(err)
	}
	e := &nomadEnv{fake: fake, rt: rt, redis: redistest.Socket(t), enq: &recorder{queued: map[string]bool{}}, eng: testlab.NewEngine(t), ex: ex}
	rdb := redis.NewClient(&redis.Options{Network: "unix", Addr: e.redis})
	t.Cleanup(func() { rdb.Close() })
	if e.store, err = store.New(store.Options{Dir: t.TempDir(), Redis: rdb}); err != nil {
		t.Fatal(err)
	}
	e.h, err = workers.New(workers.Options{
		Store: e.store, Runtime: rt, Enqueuer: e.enq, RuntimeName: "nomad", Snapshot: lab.SnapshotFull,
		Exams: func(id string) (*exam.Exam, bool) { return ex, id == ex.ID },
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// ready signs a candidate in and brings their lab up through the
// handlers; the lab is destroyed when the test ends.
func (e *nomadEnv) ready(t *testing.T, email string) string {
	t.Helper()
	sess, _ := storetest.SignIn(t, e.store, email, e.ex.ID, 90*time.Minute, "nomad")
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if err := e.rt.Destroy(ctx, sess.ID); err != nil {
			t.Errorf("destroy %s: %v", sess.ID, err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), nomadProvisionTimeout)
	defer cancel()
	if _, err := scheduler.Start(ctx, e.store, e.enq, sess.ID, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Provision(ctx, provisionTask(t, sess.ID)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, sess.ID); s.Status != stateReady {
		t.Fatalf("session %s is %s after provision: %s", sess.ID, s.Status, s.Error)
	}
	return sess.ID
}

func (e *nomadEnv) get(t *testing.T, id string) *session.Session {
	t.Helper()
	s, err := e.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (e *nomadEnv) audit(t *testing.T, id, action string) []store.AuditEntry {
	t.Helper()
	log, err := e.store.AuditLog(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []store.AuditEntry
	for _, a := range log {
		if a.Action == action {
			out = append(out, a)
		}
	}
	return out
}

// TestLostLabOnNomad runs the lost-lab path end to end on the fake Nomad:
// the periodic sweep, through a real asynq server, shows an allocation
// lost on the session and pauses its clock (the time it took is logged);
// the deadline does not expire while paused; an admin's re-provision gives
// a fresh lab (a new allocation, new containers) and credits the paused
// time with an audit line carrying the seconds. A second lab's client
// stops reporting and comes back (credited), then is lost and archived as
// far as it can be reached: every node missing in the manifest.
func TestLostLabOnNomad(t *testing.T) {
	e := newNomadEnv(t)
	ctx := context.Background()
	first := e.ready(t, "first@example.com")
	second := e.ready(t, "second@example.com")
	oldAlloc := e.get(t, first).Nodes[0].AllocID
	oldContainers := map[string]bool{}
	for _, c := range e.eng.Containers(t, first) {
		oldContainers[c.ID] = true
	}

	// The sweep as deployed: the periodic ticker every 10s, a real asynq
	// server running the handler.
	opt := asynq.RedisClientOpt{Network: "unix", Addr: e.redis}
	client := asynq.NewClient(opt)
	t.Cleanup(func() { client.Close() })
	per := scheduler.NewPeriodic(scheduler.NewEnqueuer(client), scheduler.PeriodicOptions{Expire: -1, Reap: -1, Admission: -1, Retention: -1})
	srv := asynq.NewServer(opt, asynq.Config{Concurrency: 2, Queues: scheduler.Queues, LogLevel: asynq.ErrorLevel})
	if err := srv.Start(e.h.Mux()); err != nil {
		t.Fatal(err)
	}
	if err := per.Start(); err != nil {
		t.Fatal(err)
	}
	stopSweeps := func() { per.Shutdown(); srv.Shutdown() }
	defer func() {
		if srv != nil {
			stopSweeps()
		}
	}()

	reported := time.Now()
	if err := e.fake.LoseAlloc(first); err != nil {
		t.Fatal(err)
	}
	var shown time.Duration
	for bound := time.Now().Add(lostShownBound); ; time.Sleep(100 * time.Millisecond) {
		if s := e.get(t, first); s.Trouble.State == lab.StateLost {
			shown = time.Since(reported)
			break
		}
		if time.Now().After(bound) {
			t.Fatalf("the lost allocation was not shown on the session within %v", lostShownBound)
		}
	}
	t.Logf("allocation lost -> session shows it lost: %.1fs (sweep every 10s; the issue asks for 30s)", shown.Seconds())
	stopSweeps()
	srv = nil

	s := e.get(t, first)
	if !s.Paused() || s.CandidateError() != session.NoticeLabUnavailable {
		t.Fatalf("the session with the lost lab: paused %v, candidate told %q", s.Paused(), s.CandidateError())
	}
	for _, n := range s.Nodes {
		if n.State != lab.StateLost || !strings.Contains(n.Detail, "on client fake-client is lost") {
			t.Errorf("node %s recorded %s %q, want lost on the fake client", n.Name, n.State, n.Detail)
		}
	}
	if len(e.audit(t, first, "lab-lost")) != 1 {
		t.Error("no lab-lost audit entry")
	}
	if s := e.get(t, second); s.Paused() || s.Trouble.State != "" {
		t.Errorf("the other session was touched: %+v", s.Trouble)
	}

	// Past its deadline while paused, the session is not expired.
	if _, err := e.store.Update(ctx, first, func(x *session.Session) error {
		x.Deadline = time.Now().Add(-time.Minute) // a fixture: the clock ran out meanwhile
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	deadline := e.get(t, first).Deadline
	if err := e.h.Expire(ctx, scheduler.NewExpireTask()); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, first); s.Status != stateReady {
		t.Fatalf("the paused session is %s after the expiry sweep", s.Status)
	}

	// An admin has a fresh lab made.
	if _, err := e.store.Update(ctx, first, func(x *session.Session) error { return x.BeginReprovision(time.Now()) }); err != nil {
		t.Fatal(err)
	}
	task, err := scheduler.NewReprovisionTask(first, "r1")
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, nomadProvisionTimeout)
	defer cancel()
	if err := e.h.Reprovision(rctx, task); err != nil {
		t.Fatal(err)
	}
	s = e.get(t, first)
	if s.Paused() || s.Status != stateReady {
		t.Fatalf("after reprovision: %s, paused %v", s.Status, s.Paused())
	}
	for _, n := range s.Nodes {
		if n.State != lab.StateRunning || n.AllocID == "" || n.AllocID == oldAlloc {
			t.Errorf("node %s after reprovision: %s in allocation %s (the lost one was %s)", n.Name, n.State, n.AllocID, oldAlloc)
		}
	}
	cs := e.eng.Containers(t, first)
	if len(cs) != 2 {
		t.Errorf("%d containers of the fresh lab, want 2", len(cs))
	}
	for _, c := range cs {
		if oldContainers[c.ID] || c.State != "running" {
			t.Errorf("container %v (%s) is not a fresh running one", c.Names, c.State)
		}
	}
	re := e.audit(t, first, "lab-reprovisioned")
	if len(re) != 1 {
		t.Fatalf("%d lab-reprovisioned audit entries, want 1", len(re))
	}
	credited, _ := re[0].Detail["credited_seconds"].(float64)
	if credited < 1 || !s.Deadline.Equal(deadline.Add(time.Duration(credited)*time.Second)) {
		t.Errorf("credited %v s, deadline %v from %v", credited, s.Deadline, deadline)
	}
	t.Logf("reprovision audit: %v", re[0].Detail)

	// The second lab's client stops reporting, then comes back.
	if err := e.fake.DisconnectAlloc(second); err != nil {
		t.Fatal(err)
	}
	if ch, err := e.h.LostSweepOnce(ctx); err != nil || len(ch) != 1 || ch[0].SessionID != second || ch[0].State != lab.StateUnknown {
		t.Fatalf("sweep after a disconnect: %+v, %v; want %s unknown", ch, err, second)
	}
	if err := e.fake.ReconnectAlloc(second); err != nil {
		t.Fatal(err)
	}
	if ch, err := e.h.LostSweepOnce(ctx); err != nil || len(ch) != 1 || ch[0].State != lab.StateRunning {
		t.Fatalf("sweep after the reconnect: %+v, %v; want the lab back", ch, err)
	}
	if len(e.audit(t, second, "lab-back")) != 1 {
		t.Error("no lab-back audit entry after the reconnect")
	}

	// Then it is lost for good, and archived as far as it can be reached.
	if err := e.fake.LoseAlloc(second); err != nil {
		t.Fatal(err)
	}
	if ch, err := e.h.LostSweepOnce(ctx); err != nil || len(ch) != 1 || ch[0].State != lab.StateLost {
		t.Fatalf("sweep after the loss: %+v, %v", ch, err)
	}
	if _, err := e.store.Update(ctx, second, func(x *session.Session) error {
		_, err := x.SubmitReachable(time.Now())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Archive(ctx, archiveTask(t, second, session.ByAdmin)); err != nil {
		t.Fatal(err)
	}
	m, err := e.store.Manifest(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Missing) != 2 || len(m.Files) != 0 {
		t.Errorf("manifest of the lost lab: missing %v, files %v; want both nodes missing", m.Missing, m.Files)
	}
	if err := e.h.Cleanup(ctx, cleanupTask(t, second, session.ByAdmin)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, second); s.Status != session.StateCompleted {
		t.Errorf("the archived session is %s, want completed", s.Status)
	}
	if len(e.eng.Containers(t, second))+len(e.eng.Networks(t, second)) != 0 {
		t.Error("the lost lab left containers or networks on the engine")
	}
	for _, r := range e.fake.Unknown() {
		t.Errorf("an endpoint the fake does not serve was called: %s", r)
	}
}

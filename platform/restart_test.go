package platform_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// killRig is a Redis, a state directory and a Docker instance label that
// worker processes share with the test, which holds a platform with no
// roles on them to read and drive the records.
type killRig struct {
	t   testing.TB
	p   *platform.Platform
	eng *testlab.Engine
	env []string
	dir string
	n   int
}

func newKillRig(t testing.TB) *killRig {
	cfg := config.Default()
	cfg.Redis = testlab.Redis(t)
	cfg.StateDir = t.TempDir()
	cfg.AdminToken = "test-admin-token-0123456789"
	cfg.Instance = "t-" + strings.ToLower(store.NewSessionID())
	ctx := context.Background()
	p, err := platform.New(ctx, cfg, platform.Roles{}, platform.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	env := append(os.Environ(), childWorkerEnv+"=1",
		"EXAMLAB_REDIS="+cfg.Redis, "EXAMLAB_STATE_DIR="+cfg.StateDir, "EXAMLAB_INSTANCE="+cfg.Instance,
		"EXAMLAB_ADMIN_TOKEN="+cfg.AdminToken, "EXAMLAB_RUNTIME="+config.RuntimeDocker)
	return &killRig{t: t, p: p, eng: testlab.NewEngine(t), env: env, dir: t.TempDir()}
}

// worker is a worker process started by the rig.
type worker struct {
	cmd     *exec.Cmd
	log     string
	started time.Time
}

// startWorker runs a worker process: this test binary in its child
// worker mode (TestMain). Whatever it logs goes to a file the test prints
// when it fails.
func (r *killRig) startWorker() *worker {
	r.t.Helper()
	r.n++
	logf := filepath.Join(r.dir, fmt.Sprintf("worker%d.log", r.n))
	f, err := os.Create(logf)
	if err != nil {
		r.t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = r.env
	cmd.Stdout, cmd.Stderr = f, f
	w := &worker{cmd: cmd, log: logf, started: time.Now()}
	if err := cmd.Start(); err != nil {
		r.t.Fatal(err)
	}
	f.Close()
	r.t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				cmd.Process.Kill()
				<-done
			}
		}
		if r.t.Failed() {
			b, _ := os.ReadFile(logf)
			r.t.Logf("%s:\n%s", filepath.Base(logf), bytes.TrimSpace(b))
		}
	})
	return w
}

// kill ends the worker with SIGKILL: no handler returns, no lease is given
// back, the queue's task stays active under the dead worker's name.
func (w *worker) kill(t testing.TB) {
	t.Helper()
	if err := w.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	w.cmd.Wait()
}

// startedSession signs a candidate in and starts them: admitted, with
// their provision queued for whichever worker runs.
func (r *killRig) startedSession(email string) string {
	r.t.Helper()
	ctx := context.Background()
	sess, _ := storetest.SignIn(r.t, r.p.Store, email, r.p.Exam.ID, time.Hour, config.RuntimeDocker)
	r.t.Cleanup(func() { r.p.Runtime.Destroy(context.Background(), sess.ID) })
	sess, err := scheduler.Start(ctx, r.p.Store, r.p.Enqueuer, sess.ID, time.Now())
	if err != nil || sess.Status != session.StateProvisioning {
		r.t.Fatalf("start: %v %v", sess, err)
	}
	return sess.ID
}

// waitContainers waits until the session has at least n containers.
func (r *killRig) waitContainers(id string, n int) int {
	r.t.Helper()
	deadline := time.Now().Add(testlab.ProvisionTimeout)
	for {
		if got := len(r.eng.Containers(r.t, id)); got >= n {
			return got
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("the worker created fewer than %d containers", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitReady waits for the session to be ready and returns when it was
// seen so.
func (r *killRig) waitReady(id string) (*session.Session, time.Time) {
	r.t.Helper()
	deadline := time.Now().Add(testlab.ProvisionTimeout)
	for {
		sess, err := r.p.Store.Get(context.Background(), id)
		if err != nil {
			r.t.Fatal(err)
		}
		if sess.Status == session.StateReady {
			return sess, time.Now()
		}
		if sess.Status != session.StateProvisioning || time.Now().After(deadline) {
			r.t.Fatalf("session is %s (%s), want it ready", sess.Status, sess.Error)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// checkOneLab checks that the session's lab is whole and alone: its
// eight nodes and switch once each, running, no engine network, and no
// other lab of this instance.
func (r *killRig) checkOneLab(id string) {
	r.t.Helper()
	cs := r.eng.Containers(r.t, id)
	names := map[string]bool{}
	for _, c := range cs {
		if c.State != "running" || names[c.Names[0]] {
			r.t.Errorf("container %v %s (duplicate=%v)", c.Names, c.State, names[c.Names[0]])
		}
		names[c.Names[0]] = true
	}
	if len(cs) != 9 || !names["/"+lab.SwitchName(id)] {
		r.t.Errorf("%d containers, want 8 nodes and the switch: %s", len(cs), testlab.Summary(cs))
	}
	if nets := r.eng.Networks(r.t, id); len(nets) != 0 {
		r.t.Errorf("%d engine networks; a segmented lab has none", len(nets))
	}
	if labs, err := r.p.Runtime.Labs(context.Background()); err != nil || !slices.Equal(labs, []string{id}) {
		r.t.Errorf("labs of the instance: %v %v, want only %s", labs, err, id)
	}
}

// stop ends the worker as an operator would (SIGTERM) and waits for it.
func (w *worker) stop() {
	w.cmd.Process.Signal(syscall.SIGTERM)
	w.cmd.Wait()
}

// recovery is how one provision came back from its worker's death.
type recovery struct {
	id string
	// ready is from the second worker's start to the session ready;
	// restart from its start to the restart (the lease running out and
	// the sweep acting); provision from the restart to ready (the runtime
	// finishing the half-made lab); afterKill from the kill to ready.
	ready, restart, provision, afterKill time.Duration
	second                               *worker
}

// killMidProvision starts a session, lets a worker create some of its
// containers, SIGKILLs it and at once starts another, and waits for the
// session to be ready. The restart must be the provision's own (an audit
// entry), not the queue's recovery of the dead worker's task.
func (r *killRig) killMidProvision(email string) recovery {
	r.t.Helper()
	ctx := context.Background()
	id := r.startedSession(email)
	first := r.startWorker()
	n := r.waitContainers(id, 3)
	first.kill(r.t)
	killed := time.Now()
	if sess, err := r.p.Store.Get(ctx, id); err != nil || sess.Status != session.StateProvisioning {
		r.t.Fatalf("after the kill (%d containers): %v %v", n, sess, err)
	}
	second := r.startWorker()
	sess, ready := r.waitReady(id)
	if sess.Restarts != 1 || sess.ProvisionRound() != 1 {
		r.t.Errorf("restarts=%d round=%d, want one restart", sess.Restarts, sess.ProvisionRound())
	}
	log, err := r.p.Store.AuditLog(ctx, id)
	if err != nil {
		r.t.Fatal(err)
	}
	i := slices.IndexFunc(log, func(e store.AuditEntry) bool { return e.Action == "provision-restarted" })
	if i < 0 {
		r.t.Fatalf("no provision-restarted in the audit log: %+v", log)
	}
	at := log[i].At
	return recovery{id: id, second: second, ready: ready.Sub(second.started), restart: at.Sub(second.started),
		provision: ready.Sub(at), afterKill: ready.Sub(killed)}
}

// startStalled runs a worker process that takes provisions from the
// queue and sits on them without taking their lease (childStallEnv).
func (r *killRig) startStalled() *worker {
	r.t.Helper()
	env := r.env
	r.env = append(slices.Clone(env), childStallEnv+"=1")
	defer func() { r.env = env }()
	return r.startWorker()
}

// TestProvisionWorkerKilledBeforeLease kills (SIGKILL) a worker the queue
// has handed a provision to before it took the session's lease — no lease
// to run out, the queue's task active under the dead worker — and starts
// another: the sweep restarts the provision (scheduler.UnleasedGrace after
// it first sees the task unleased) and the session is ready long before
// the queue would give the task up, with one whole lab.
func TestProvisionWorkerKilledBeforeLease(t *testing.T) {
	r := newKillRig(t)
	ctx := context.Background()
	id := r.startedSession("stalled@example.com")
	stalled := r.startStalled()
	task := scheduler.TaskID(scheduler.TypeProvision, id)
	deadline := time.Now().Add(time.Minute)
	for {
		info, err := r.p.Inspector.GetTaskInfo(scheduler.QueueCritical, task)
		if err != nil {
			t.Fatal(err)
		}
		if info.State == asynq.TaskStateActive {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stalled worker did not take the provision: %s", info.State)
		}
		time.Sleep(20 * time.Millisecond)
	}
	stalled.kill(t)
	if leased, err := r.p.Store.Leased(ctx, scheduler.LeaseProvision); err != nil || len(leased) != 0 {
		t.Fatalf("leases after the kill: %v %v, want none", leased, err)
	}
	second := r.startWorker()
	sess, ready := r.waitReady(id)
	if sess.Restarts != 1 || sess.ProvisionRound() != 1 {
		t.Errorf("restarts=%d round=%d, want one restart", sess.Restarts, sess.ProvisionRound())
	}
	log, err := r.p.Store.AuditLog(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(log, func(e store.AuditEntry) bool { return e.Action == "provision-restarted" })
	if i < 0 || log[i].Detail["reason"] != scheduler.RestartNeverLeased {
		t.Fatalf("audit log %+v: want a provision-restarted with reason %q", log, scheduler.RestartNeverLeased)
	}
	// Ready while the dead worker's task is still the queue's active one:
	// the session did not wait for the queue to give it up.
	info, err := r.p.Inspector.GetTaskInfo(scheduler.QueueCritical, task)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != asynq.TaskStateActive {
		t.Errorf("the dead worker's task is %s at ready; the session waited for the queue", info.State)
	}
	r.checkOneLab(id)
	t.Logf("ready %v after the second worker started (restarted after %v); the queue still held the dead task",
		ready.Sub(second.started).Round(time.Millisecond), log[i].At.Sub(second.started).Round(time.Millisecond))
}

// TestProvisionWorkerKilled kills a worker process (SIGKILL) while it
// provisions a lab, after some containers exist, and starts another: the
// session is ready through a restart of its provision — recorded in its
// audit log — not the queue's recovery of the dead worker's task, with
// one whole lab and nothing left over.
func TestProvisionWorkerKilled(t *testing.T) {
	r := newKillRig(t)
	rc := r.killMidProvision("killed@example.com")
	t.Logf("ready %v after the second worker started: restarted after %v, then %v to finish the lab (%v after the kill)",
		rc.ready.Round(time.Millisecond), rc.restart.Round(time.Millisecond), rc.provision.Round(time.Millisecond), rc.afterKill.Round(time.Millisecond))
	ctx := context.Background()
	// The dead worker's task is, as a rule, still the queue's active one:
	// the session did not wait for the queue to give it up.
	active, err := r.p.Inspector.ListActiveTasks(scheduler.QueueCritical)
	if err != nil {
		t.Fatal(err)
	}
	stale := scheduler.TaskID(scheduler.TypeProvision, rc.id)
	if slices.ContainsFunc(active, func(ti *asynq.TaskInfo) bool { return ti.ID == stale }) {
		t.Logf("the dead worker's task %s is still active in the queue", stale)
	}
	r.checkOneLab(rc.id)
	sess, _ := r.p.Store.Get(ctx, rc.id)
	if !lab.AllRunning(sess.Nodes) || sess.Deadline.IsZero() {
		t.Fatalf("ready session: nodes %+v deadline %v", sess.Nodes, sess.Deadline)
	}
	// The lab works: it was wired once, by whichever run got there.
	if out, code, err := lab.Output(ctx, r.p.Runtime, rc.id, "tokyo", "ping", "-c1", "-W2", "phoenix"); err != nil || code != 0 {
		t.Errorf("tokyo cannot ping phoenix: exit %d %v\n%s", code, err, out)
	}
}

// BenchmarkProvisionWorkerKilled measures what a candidate waits for when
// the worker provisioning their lab dies: from another worker's start to
// the lab ready (ms-median, ms-p95), split into the wait for the restart
// (restart-ms: the lease running out and the sweep acting; at most
// scheduler.LeaseTTL + LeaseSweep) and the finishing of the half-made lab
// (provision-ms). Compare provision-ms with BenchmarkSessionColdStart's
// examlab case, a whole lab from nothing; the baseline without the
// restart is the queue's recovery of the dead worker's task, asynq's
// 30 s lease plus up to a minute for its recoverer's pass, before the
// provision itself.
//
//	go test ./platform -run '^$' -bench ProvisionWorkerKilled -benchtime 3x
func BenchmarkProvisionWorkerKilled(b *testing.B) {
	r := newKillRig(b)
	ctx := context.Background()
	var ready, restart, provision []time.Duration
	b.StopTimer()
	for i := 0; i < b.N; i++ {
		rc := r.killMidProvision(fmt.Sprintf("bench%d@example.com", i))
		ready, restart, provision = append(ready, rc.ready), append(restart, rc.restart), append(provision, rc.provision)
		rc.second.stop()
		if err := r.p.Runtime.Destroy(ctx, rc.id); err != nil {
			b.Fatal(err)
		}
	}
	testlab.ReportDurations(b, ready)
	rmed, _ := testlab.Percentiles(restart)
	pmed, _ := testlab.Percentiles(provision)
	b.ReportMetric(float64(rmed.Milliseconds()), "restart-ms")
	b.ReportMetric(float64(pmed.Milliseconds()), "provision-ms")
}

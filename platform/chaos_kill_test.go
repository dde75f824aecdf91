package platform_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/examlab/examlab/config"
	"github.com/examlab/examlab/grading"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/platform"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab"
)

// The worker-kill chaos suite's knobs, read from the environment.
const (
	// chaosLeaseEnv, in a child worker's environment, sets its work
	// leases: "ttl renew sweep", e.g. "2s 300ms 250ms" (parseLeases).
	chaosLeaseEnv = "EXAMLAB_TEST_LEASES"
	// chaosSeedEnv replays a run of TestChaosWorkerKilled: the seed it
	// logged picks the same kill points.
	chaosSeedEnv = "EXAMLAB_CHAOS_SEED"
	// chaosItersEnv sets the kills per operation (default chaosIters).
	chaosItersEnv = "EXAMLAB_CHAOS_ITERATIONS"
)

const (
	// chaosIters is how many times each operation's worker is killed.
	chaosIters = 10
	// chaosLeases are the suite's work leases: shorter than the
	// production ones (5 s, renewed every 1.5 s, swept every second) so
	// that thirty recoveries fit in CI; the renewal is still a sixth of
	// the ttl, so a busy live worker is never taken for dead.
	chaosLeases = "2s 300ms 250ms"
	// chaosWait bounds each wait of the suite for a session to converge.
	chaosWait = 2 * time.Minute
)

// parseLeases reads chaosLeaseEnv's value.
func parseLeases(v string) (ttl, renew, sweep time.Duration, err error) {
	f := strings.Fields(v)
	if len(f) != 3 {
		return 0, 0, 0, fmt.Errorf("%s=%q: want a ttl, a renewal and a sweep interval", chaosLeaseEnv, v)
	}
	var d [3]time.Duration
	for i, s := range f {
		if d[i], err = time.ParseDuration(s); err != nil {
			return 0, 0, 0, fmt.Errorf("%s=%q: %w", chaosLeaseEnv, v, err)
		}
	}
	return d[0], d[1], d[2], nil
}

// killExam is a small exam: two nodes, so a lab is quick to start and
// archive, and a check, so that the archive grades.
const killExam = `id: chaos-test
title: Chaos test exam
duration: 30m
tasks:
  - id: t1-hostname
    title: Hostname
    kind: command
    prompt: |
      Print tokyo's hostname.
    checks:
      - name: tokyo has a hostname
        node: tokyo
        run: test -s /etc/hostname
        points: 10
        timeout: 60s
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

// newChaosRig is a kill rig (restart_test.go) on killExam whose worker
// processes hold work leases of leases ("" for the production ones).
func newChaosRig(t testing.TB, leases string) *killRig {
	t.Helper()
	examFile := filepath.Join(t.TempDir(), "chaos.yaml")
	if err := os.WriteFile(examFile, []byte(killExam), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Redis = testlab.Redis(t)
	cfg.StateDir = t.TempDir()
	cfg.AdminToken = "test-admin-token-0123456789"
	cfg.Instance = "t-" + strings.ToLower(store.NewSessionID())
	cfg.ExamFile = examFile
	p, err := platform.New(context.Background(), cfg, platform.Roles{}, platform.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Shutdown(context.Background()) })
	env := append(os.Environ(), childWorkerEnv+"=1",
		"EXAMLAB_REDIS="+cfg.Redis, "EXAMLAB_STATE_DIR="+cfg.StateDir, "EXAMLAB_INSTANCE="+cfg.Instance,
		"EXAMLAB_ADMIN_TOKEN="+cfg.AdminToken, "EXAMLAB_RUNTIME="+config.RuntimeDocker, "EXAMLAB_EXAM="+examFile)
	if leases != "" {
		env = append(env, chaosLeaseEnv+"="+leases)
	}
	return &killRig{t: t, p: p, eng: testlab.NewEngine(t), env: env, dir: t.TempDir()}
}

// chaos is the suite's state: the rig, the worker running now, the
// random source of kill points, and what a lab of killExam is.
type chaos struct {
	r   *killRig
	w   *worker
	rng *rand.Rand
	// containers and networks are the engine's objects of one lab, as
	// an undisturbed provision made it.
	containers, networks int
	// live are the sessions whose labs must exist.
	live map[string]bool
	n    int
}

// start signs a candidate in and starts them (their provision queued).
func (c *chaos) start(t testing.TB) string {
	t.Helper()
	c.n++
	sess, _ := storetest.SignIn(t, c.r.p.Store, fmt.Sprintf("chaos%d@example.com", c.n), c.r.p.Exam.ID, time.Hour, config.RuntimeDocker)
	c.r.t.Cleanup(func() { c.r.p.Runtime.Destroy(context.Background(), sess.ID) })
	got, err := scheduler.Start(context.Background(), c.r.p.Store, c.r.p.Enqueuer, sess.ID, time.Now())
	if err != nil || got.Status != session.StateProvisioning {
		t.Fatalf("start: %v %v", got, err)
	}
	return sess.ID
}

// submit submits the session: by the deadline (it ends expired) when
// deadline, else by the candidate (completed).
func (c *chaos) submit(t testing.TB, id string, deadline bool) {
	t.Helper()
	ctx := context.Background()
	reason := session.ByCandidate
	if deadline {
		reason = session.ByDeadline
		if _, err := c.r.p.Store.Update(ctx, id, func(s *session.Session) error {
			s.Deadline = time.Now().Add(-time.Second)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, moved, err := scheduler.Submit(ctx, c.r.p.Store, c.r.p.Enqueuer, id, reason, time.Now()); err != nil || !moved {
		t.Fatalf("submit %s: moved=%v %v", id, moved, err)
	}
}

// leased reports whether the session holds a lease of op.
func (c *chaos) leased(t testing.TB, op, id string) bool {
	t.Helper()
	ids, err := c.r.p.Store.Leased(context.Background(), op)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(ids, id)
}

// waitLease waits until a worker holds the session's lease of op: the
// operation has begun.
func (c *chaos) waitLease(t testing.TB, op, id string) time.Time {
	t.Helper()
	deadline := time.Now().Add(chaosWait)
	for !c.leased(t, op, id) {
		if time.Now().After(deadline) {
			sess, _ := c.r.p.Store.Get(context.Background(), id)
			t.Fatalf("no worker began the %s of %s (session %+v)", op, id, sess)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Now()
}

// waitStatus waits until the session is in want; failed is never right.
func (c *chaos) waitStatus(t testing.TB, id string, want session.State) *session.Session {
	t.Helper()
	deadline := time.Now().Add(chaosWait)
	for {
		sess, err := c.r.p.Store.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if sess.Status == want {
			return sess
		}
		if sess.Status == session.StateFailed || time.Now().After(deadline) {
			t.Fatalf("session %s is %s (%s), want %s", id, sess.Status, sess.Error, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitEnded waits until the session ended as want and its cleanup gave
// its lease back: the status is recorded before the cleanup seals the
// session and frees its slot.
func (c *chaos) waitEnded(t testing.TB, id string, want session.State) {
	t.Helper()
	c.waitStatus(t, id, want)
	deadline := time.Now().Add(chaosWait)
	for c.leased(t, scheduler.LeaseCleanup, id) {
		if time.Now().After(deadline) {
			t.Fatalf("%s's cleanup holds its lease %v after the session ended", id, chaosWait)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// kill is what a SIGKILL of the worker left: the session as it was
// recorded then, and whether the dead worker held the operation's lease.
type kill struct {
	at   time.Time
	sess *session.Session
	held bool
}

// killIn waits for the operation op of the session to begin, lets it run
// for delay, SIGKILLs the worker and at once starts a fresh one.
func (c *chaos) killIn(t testing.TB, op, id string, delay time.Duration) kill {
	t.Helper()
	c.waitLease(t, op, id)
	time.Sleep(delay)
	c.w.kill(t)
	k := kill{at: time.Now(), held: c.leased(t, op, id)}
	var err error
	if k.sess, err = c.r.p.Store.Get(context.Background(), id); err != nil {
		t.Fatal(err)
	}
	c.w = c.r.startWorker()
	return k
}

// delay is a kill point within an operation that takes about d.
func (c *chaos) delay(d time.Duration) time.Duration {
	return time.Duration(c.rng.Int64N(int64(d) + 1))
}

// checkLab checks that the session's lab is whole and made once: as many
// containers and networks as an undisturbed provision makes, each once,
// running.
func (c *chaos) checkLab(t testing.TB, id string) {
	t.Helper()
	cs := c.r.eng.Containers(t, id)
	names := map[string]bool{}
	for _, ct := range cs {
		if ct.State != "running" || names[ct.Names[0]] {
			t.Errorf("container %v %s (duplicate=%v)", ct.Names, ct.State, names[ct.Names[0]])
		}
		names[ct.Names[0]] = true
	}
	if len(cs) != c.containers {
		t.Errorf("%s has %d containers, want %d: %s", id, len(cs), c.containers, testlab.Summary(cs))
	}
	if nets := c.r.eng.Networks(t, id); len(nets) != c.networks {
		t.Errorf("%s has %d engine networks, want %d", id, len(nets), c.networks)
	}
}

// checkLabs checks that the labs of the instance are those of the live
// sessions: nothing orphaned, nothing missing.
func (c *chaos) checkLabs(t testing.TB) {
	t.Helper()
	labs, err := c.r.p.Runtime.Labs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for id := range c.live {
		want = append(want, id)
	}
	slices.Sort(labs)
	slices.Sort(want)
	if !slices.Equal(labs, want) {
		t.Errorf("labs of the instance %v, want those of the live sessions %v", labs, want)
	}
}

// checkEnded checks an ended session: its lab gone, containers and
// networks, and its snapshot whole and written once.
func (c *chaos) checkEnded(t testing.TB, id string) {
	t.Helper()
	if cs := c.r.eng.Containers(t, id); len(cs) != 0 {
		t.Errorf("%s has containers after cleanup: %s", id, testlab.Summary(cs))
	}
	if nets := c.r.eng.Networks(t, id); len(nets) != 0 {
		t.Errorf("%s has %d engine networks after cleanup", id, len(nets))
	}
	c.checkSnapshot(t, id)
}

// checkSnapshot checks the snapshot folder: each node's tar and log once,
// the manifest, nothing else (no half-written file), and every file's
// size and sha256 as the manifest says; the lab graded once.
func (c *chaos) checkSnapshot(t testing.TB, id string) {
	t.Helper()
	ctx := context.Background()
	sess, err := c.r.p.Store.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := lab.NewSpec(c.r.p.Exam, lab.Session{ID: id, Candidate: sess.Email})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{store.ManifestName}
	for _, n := range spec.Nodes {
		want = append(want, n.Container+".tar", n.Container+".log")
	}
	slices.Sort(want)
	dir, err := c.r.p.Store.Path(id, store.SnapshotDir)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		t.Errorf("snapshot folder of %s holds %v, want %v", id, got, want)
	}
	m, err := c.r.p.Store.Manifest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	var named []string
	for _, f := range m.Files {
		named = append(named, f.Name)
		b, err := os.ReadFile(filepath.Join(dir, f.Name))
		if err != nil {
			t.Errorf("manifest names %s: %v", f.Name, err)
			continue
		}
		sum := sha256.Sum256(b)
		if int64(len(b)) != f.Size || hex.EncodeToString(sum[:]) != f.SHA256 {
			t.Errorf("%s of %s: %d bytes sha256 %x, the manifest says %d %s", f.Name, id, len(b), sum, f.Size, f.SHA256)
		}
	}
	slices.Sort(named)
	if !slices.Equal(named, slices.DeleteFunc(slices.Clone(want), func(s string) bool { return s == store.ManifestName })) {
		t.Errorf("manifest of %s names %v, want each node's tar and log once", id, named)
	}
	if len(m.Missing) != 0 || m.Results == nil {
		t.Errorf("manifest of %s: missing %v, results %v", id, m.Missing, m.Results)
	}
	history, err := c.r.p.Store.ResultsHistory(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	graded := 0
	for _, r := range history {
		if r.Trigger == grading.TriggerSubmit || r.Trigger == grading.TriggerDeadline {
			graded++
		}
	}
	if graded != 1 {
		t.Errorf("%s graded %d times on submit, want once", id, graded)
	}
}

// checkNoLease checks that the session comes to hold no work lease:
// every operation's run that ended gave its lease back, and every dead
// one's was taken over and dropped. A run gives its lease back just
// after it records its outcome, so a lease may outlive the status the
// test saw by a moment; one still held after leaseGone is kept.
func (c *chaos) checkNoLease(t testing.TB, id string) {
	t.Helper()
	const leaseGone = 10 * time.Second // five of the chaos leases' 2 s
	deadline := time.Now().Add(leaseGone)
	for _, op := range []string{scheduler.LeaseProvision, scheduler.LeaseArchive, scheduler.LeaseCleanup} {
		for c.leased(t, op, id) {
			if time.Now().After(deadline) {
				t.Errorf("%s still holds a %s lease %v after its outcome was recorded", id, op, leaseGone)
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// checkRestart checks the audit log for the restart of the killed
// operation: one is due when the dead worker held the lease with the
// operation still to do.
func (c *chaos) checkRestart(t testing.TB, id, action string, due bool) int {
	t.Helper()
	log, err := c.r.p.Store.AuditLog(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range log {
		if e.Action == action {
			n++
		}
	}
	if due && n == 0 {
		t.Errorf("%s: the worker died mid-operation but the audit log has no %s", id, action)
	}
	return n
}

// TestChaosWorkerKilled kills the worker process (SIGKILL) at random
// points of provisions, archives and cleanups — chaosIters times each, a
// fresh worker started at once after each kill — and checks after every
// kill that the session converged: ready with its whole lab made once,
// or ended (completed, or expired when the deadline submitted it) with
// its lab gone, its snapshot written once and matching its manifest,
// graded once; no lab of the instance without a live session; no lease
// left. Each operation first runs undisturbed, to measure how long it
// holds its lease: the kill points are drawn within that. The seed is
// logged; EXAMLAB_CHAOS_SEED replays a run.
//
// Needs Docker and the lab images (make image); run under the Docker
// lock. Its duration is logged.
func TestChaosWorkerKilled(t *testing.T) {
	began := time.Now()
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(chaosSeedEnv); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", chaosSeedEnv, v, err)
		}
	}
	iters := chaosIters
	if v := os.Getenv(chaosItersEnv); v != "" {
		var err error
		if iters, err = strconv.Atoi(v); err != nil || iters < 1 {
			t.Fatalf("%s=%q: want a positive count", chaosItersEnv, v)
		}
	}
	t.Logf("seed %d (replay with %s=%d), %d kills per operation, leases %q", seed, chaosSeedEnv, seed, iters, chaosLeases)
	c := &chaos{r: newChaosRig(t, chaosLeases), rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), live: map[string]bool{}}
	c.w = c.r.startWorker()
	var ready []string

	phase := func(name string, f func(t *testing.T)) {
		start := time.Now()
		ok := t.Run(name, f)
		t.Logf("%s: %v", name, time.Since(start).Round(time.Millisecond))
		if !ok {
			t.FailNow()
		}
	}

	phase("provision", func(t *testing.T) {
		// Undisturbed: the lab a provision makes, and how long it takes.
		id := c.start(t)
		t0 := c.waitLease(t, scheduler.LeaseProvision, id)
		c.waitStatus(t, id, session.StateReady)
		took := time.Since(t0)
		c.containers, c.networks = len(c.r.eng.Containers(t, id)), len(c.r.eng.Networks(t, id))
		c.live[id] = true
		ready = append(ready, id)
		t.Logf("undisturbed provision: %v, %d containers, %d networks", took.Round(time.Millisecond), c.containers, c.networks)
		mid := 0
		for i := range iters {
			id := c.start(t)
			delay := c.delay(took)
			k := c.killIn(t, scheduler.LeaseProvision, id, delay)
			due := k.held && k.sess.Status == session.StateProvisioning
			c.waitStatus(t, id, session.StateReady)
			converged := time.Since(k.at)
			c.live[id] = true
			ready = append(ready, id)
			c.checkLab(t, id)
			c.checkNoLease(t, id)
			n := c.checkRestart(t, id, "provision-restarted", due)
			c.checkLabs(t)
			if due {
				mid++
			}
			t.Logf("kill %d: %v into the provision (mid-provision %v, %d restarts), ready %v after the kill",
				i+1, delay.Round(time.Millisecond), due, n, converged.Round(time.Millisecond))
		}
		t.Logf("%d of %d kills landed mid-provision", mid, iters)
	})

	// The archive's kills use the provision's ready labs.
	phase("archive", func(t *testing.T) {
		var took time.Duration
		mid := 0
		for i, id := range ready {
			deadline := i%2 == 1
			want := session.StateCompleted
			if deadline {
				want = session.StateExpired
			}
			c.submit(t, id, deadline)
			if i == 0 {
				t0 := c.waitLease(t, scheduler.LeaseArchive, id)
				for c.leased(t, scheduler.LeaseArchive, id) {
					time.Sleep(5 * time.Millisecond)
				}
				took = time.Since(t0)
				c.waitEnded(t, id, want)
				t.Logf("undisturbed archive: %v", took.Round(time.Millisecond))
			} else {
				delay := c.delay(took)
				k := c.killIn(t, scheduler.LeaseArchive, id, delay)
				due := k.held && k.sess.ArchivedAt.IsZero()
				c.waitEnded(t, id, want)
				converged := time.Since(k.at)
				n := c.checkRestart(t, id, "archive-restarted", due)
				if due {
					mid++
				}
				t.Logf("kill %d: %v into the archive (mid-archive %v, %d restarts), %s %v after the kill",
					i, delay.Round(time.Millisecond), due, n, want, converged.Round(time.Millisecond))
			}
			delete(c.live, id)
			c.checkEnded(t, id)
			c.checkNoLease(t, id)
			c.checkLabs(t)
		}
		t.Logf("%d of %d kills landed mid-archive", mid, len(ready)-1)
	})

	phase("cleanup", func(t *testing.T) {
		// Fresh labs, started together, undisturbed.
		ids := make([]string, iters+1)
		for i := range ids {
			ids[i] = c.start(t)
		}
		for _, id := range ids {
			c.waitStatus(t, id, session.StateReady)
			c.live[id] = true
		}
		var took time.Duration
		mid := 0
		for i, id := range ids {
			deadline := i%2 == 0
			want := session.StateCompleted
			if deadline {
				want = session.StateExpired
			}
			c.submit(t, id, deadline)
			if i == 0 {
				t0 := c.waitLease(t, scheduler.LeaseCleanup, id)
				c.waitEnded(t, id, want)
				took = time.Since(t0)
				t.Logf("undisturbed cleanup: %v", took.Round(time.Millisecond))
			} else {
				delay := c.delay(took)
				k := c.killIn(t, scheduler.LeaseCleanup, id, delay)
				c.waitEnded(t, id, want)
				converged := time.Since(k.at)
				n := c.checkRestart(t, id, "cleanup-restarted", k.held)
				if k.held {
					mid++
				}
				t.Logf("kill %d: %v into the cleanup (mid-cleanup %v, %d restarts), %s %v after the kill",
					i, delay.Round(time.Millisecond), k.held, n, want, converged.Round(time.Millisecond))
			}
			delete(c.live, id)
			c.checkEnded(t, id)
			c.checkNoLease(t, id)
			c.checkLabs(t)
		}
		t.Logf("%d of %d kills landed mid-cleanup", mid, iters)
	})
	t.Logf("chaos suite: %d kills in %v", 3*iters, time.Since(began).Round(time.Millisecond))
}

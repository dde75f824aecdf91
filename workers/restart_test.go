package workers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/workers"
)

// gated is the in-memory runtime whose Provision waits at a gate: a test
// holds a provision mid-way, as a worker busy with (or killed in) it.
type gated struct {
	*labtest.Memory
	entered chan string
	open    chan struct{}
}

func newGated() *gated {
	return &gated{Memory: labtest.NewMemory(labtest.MemoryOptions{}), entered: make(chan string, 8), open: make(chan struct{})}
}

func (g *gated) Provision(ctx context.Context, spec lab.Spec) error {
	g.entered <- spec.SessionID
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Memory.Provision(ctx, spec)
}

// leaseHandlers are handlers on e's store and enqueuer with rt as their
// runtime and a short work lease, so that a lease runs out in a test's
// time.
func (e *env) leaseHandlers(t *testing.T, rt lab.Runtime) *workers.Handlers {
	t.Helper()
	ex := exam.Default()
	h, err := workers.New(workers.Options{
		Store: e.store, Runtime: rt, Enqueuer: e.enq, RuntimeName: "memory", Now: e.clock,
		Exams:    func(id string) (*exam.Exam, bool) { return ex, id == ex.ID },
		LeaseTTL: time.Second, LeaseRenew: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// provisionRounds are the rounds of the provisions the recorder was asked
// for, by session.
func (e *env) provisionRounds(id string) int {
	e.enq.mu.Lock()
	defer e.enq.mu.Unlock()
	n := 0
	for _, p := range e.enq.provisions {
		if p.SessionID == id {
			n++
		}
	}
	return n
}

// deadWorker leaves session id as a worker killed mid-provision does: an
// attempt begun, its lease taken and never renewed (run out at once).
func (e *env) deadWorker(t *testing.T, id string, round int) {
	t.Helper()
	ctx := context.Background()
	if _, err := e.store.Update(ctx, id, func(s *record) error { return s.BeginProvision() }); err != nil {
		t.Fatal(err)
	}
	if _, err := e.store.TakeLease(ctx, scheduler.LeaseProvision, id, round, time.Millisecond); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Millisecond)
}

// TestRestartAfterWorkerStops: a provision whose worker stopped is
// restarted in a new round by the sweep; the stopped worker's task, run
// later by the queue, does nothing; the new round's brings the lab up and
// gives its lease back.
func TestRestartAfterWorkerStops(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.started(t, "gone@example.com")
	e.deadWorker(t, id, 0)

	restarted, err := e.h.RestartOnce(ctx)
	if err != nil || !slices.Equal(restarted, []string{id}) {
		t.Fatalf("restart pass: %v %v, want %s restarted", restarted, err, id)
	}
	s := e.get(t, id)
	if s.Status != stateProvisioning || s.Restarts != 1 || s.ProvisionRound() != 1 {
		t.Fatalf("after restart: %s restarts=%d round=%d", s.Status, s.Restarts, s.ProvisionRound())
	}
	if !slices.Contains(e.audited(t, id), "provision-restarted") {
		t.Errorf("audit %v has no provision-restarted", e.audited(t, id))
	}
	e.enq.mu.Lock()
	queued := e.enq.queued["provision:p1:"+id]
	e.enq.mu.Unlock()
	if !queued {
		t.Fatalf("round 1's provision was not enqueued: %+v", e.enq.provisions)
	}
	// A second pass finds nothing: the lease was dropped with the restart.
	if again, err := e.h.RestartOnce(ctx); err != nil || len(again) != 0 {
		t.Fatalf("second pass restarted %v (%v)", again, err)
	}

	// The stopped worker's task, recovered by the queue, is of round 0.
	if err := e.h.Provision(ctx, provisionTask(t, id)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateProvisioning || e.flaky.Calls("Provision") != 0 {
		t.Fatalf("the stale round ran: %s, %d runtime provisions", s.Status, e.flaky.Calls("Provision"))
	}
	if err := e.h.Provision(ctx, provisionRound(t, id, 1)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateReady {
		t.Fatalf("after round 1: %s", s.Status)
	}
	if left, err := e.store.ExpiredLeases(ctx, scheduler.LeaseProvision, 10); err != nil || len(left) != 0 {
		t.Fatalf("leases left: %+v %v", left, err)
	}
	// Nothing of a finished provision is restarted, now or later.
	time.Sleep(10 * time.Millisecond)
	if again, err := e.h.RestartOnce(ctx); err != nil || len(again) != 0 {
		t.Fatalf("pass after ready restarted %v (%v)", again, err)
	}
}

// TestRestartLeavesLiveProvisions: a provision whose worker renews its
// lease is never restarted, however long it takes.
func TestRestartLeavesLiveProvisions(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	g := newGated()
	h := e.leaseHandlers(t, g)
	id := e.started(t, "slow@example.com")
	done := make(chan error, 1)
	go func() { done <- h.Provision(ctx, provisionTask(t, id)) }()
	<-g.entered
	// Three lease lengths go by while the worker is busy.
	for range 6 {
		time.Sleep(500 * time.Millisecond)
		if r, err := h.RestartOnce(ctx); err != nil || len(r) != 0 {
			t.Fatalf("a live provision was restarted: %v %v", r, err)
		}
	}
	close(g.open)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateReady || s.Restarts != 0 {
		t.Fatalf("after the slow provision: %s restarts=%d", s.Status, s.Restarts)
	}
}

// TestRestartedRunStopsTheOldOne: a worker taken for gone (its lease ran
// out while it was cut off) that comes back finds its lease taken over by
// the new round, stops, and records nothing: the session is the new
// round's.
func TestRestartedRunStopsTheOldOne(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	g := newGated()
	h := e.leaseHandlers(t, g)
	id := e.started(t, "cutoff@example.com")
	done := make(chan error, 1)
	go func() { done <- h.Provision(ctx, provisionTask(t, id)) }()
	<-g.entered
	// The sweep restarts it (as if the lease had run out) and the new
	// round's run takes the lease.
	if did, err := scheduler.RestartProvision(ctx, e.store, e.enq, id, 0, scheduler.RestartLeaseRanOut); err != nil || !did {
		t.Fatalf("restart: %v %v", did, err)
	}
	if _, err := e.store.TakeLease(ctx, scheduler.LeaseProvision, id, 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the superseded run failed its task: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the superseded run did not stop")
	}
	s := e.get(t, id)
	if s.Status != stateProvisioning || s.Error != "" || s.ProvisionRound() != 1 {
		t.Fatalf("the superseded run left a mark: %s round=%d error=%q", s.Status, s.ProvisionRound(), s.Error)
	}
}

// TestRestartOncePerLease: sweeps of several workers find the same
// run-out lease together; the provision is restarted once.
func TestRestartOncePerLease(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.started(t, "herd@example.com")
	e.deadWorker(t, id, 0)
	hs := []*workers.Handlers{e.h, e.leaseHandlers(t, e.flaky), e.leaseHandlers(t, e.flaky), e.leaseHandlers(t, e.flaky)}
	var mu sync.Mutex
	var all []string
	var wg sync.WaitGroup
	for _, h := range hs {
		wg.Go(func() {
			r, err := h.RestartOnce(ctx)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			all = append(all, r...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if len(all) != 1 {
		t.Fatalf("restarted %v, want %s once", all, id)
	}
	if s := e.get(t, id); s.Restarts != 1 {
		t.Fatalf("restarts = %d, want 1", s.Restarts)
	}
}

// TestRestartDropsLeftRounds: a run-out lease of a round the session has
// left — submitted meanwhile, or parked and admitted again — restarts
// nothing.
func TestRestartDropsLeftRounds(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	submitted := e.started(t, "left@example.com")
	e.deadWorker(t, submitted, 0)
	e.submit(t, submitted, "candidate")
	later := e.started(t, "later@example.com")
	e.deadWorker(t, later, 3) // a lease of a round the session never had
	before := e.provisionRounds(later) + e.provisionRounds(submitted)

	r, err := e.h.RestartOnce(ctx)
	if err != nil || len(r) != 0 {
		t.Fatalf("restarted %v (%v)", r, err)
	}
	if s := e.get(t, submitted); s.Status != stateSubmitted || s.Restarts != 0 {
		t.Fatalf("submitted session: %s restarts=%d", s.Status, s.Restarts)
	}
	if s := e.get(t, later); s.Restarts != 0 {
		t.Fatalf("restarts = %d", s.Restarts)
	}
	if after := e.provisionRounds(later) + e.provisionRounds(submitted); after != before {
		t.Fatalf("%d provisions enqueued", after-before)
	}
	if left, err := e.store.ExpiredLeases(ctx, scheduler.LeaseProvision, 10); err != nil || len(left) != 0 {
		t.Fatalf("leases not dropped: %+v %v", left, err)
	}
}

// TestRestartEnqueueFails: a restart recorded but not enqueued (Redis
// gone a moment) is enqueued by the admission sweep in the new round.
func TestRestartEnqueueFails(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.started(t, "blip@example.com")
	e.deadWorker(t, id, 0)
	e.enq.mu.Lock()
	e.enq.err = errors.New("connection refused")
	e.enq.mu.Unlock()
	if _, err := e.h.RestartOnce(ctx); !errors.Is(err, scheduler.ErrNotQueued) {
		t.Fatalf("restart pass with the queue down: %v", err)
	}
	e.enq.mu.Lock()
	e.enq.err = nil
	e.enq.mu.Unlock()
	if err := e.h.Admission(ctx, nil); err != nil {
		t.Fatal(err)
	}
	e.enq.mu.Lock()
	queued := e.enq.queued["provision:p1:"+id]
	e.enq.mu.Unlock()
	if !queued {
		t.Fatalf("the admission sweep did not enqueue round 1: %+v", e.enq.provisions)
	}
}

// TestRestartNeverLeased: a worker the queue handed a provision to that
// stopped before it took the session's lease leaves no lease to run out.
// The sweep finds the task active in the real queue with no lease and,
// UnleasedGrace after it first saw it so, restarts the provision in a new
// round; a task with its lease held is left alone however long it runs;
// the stalled worker, should it wake, finds a later round and does
// nothing.
func TestRestartNeverLeased(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	opt := asynq.RedisClientOpt{Network: "unix", Addr: e.redis}
	insp := asynq.NewInspector(opt)
	t.Cleanup(func() { insp.Close() })
	client := asynq.NewClient(opt)
	t.Cleanup(func() { client.Close() })

	// The stalled worker: it takes provision tasks from the queue and sits
	// on them, as one killed right after the queue handed it the task
	// looks to everyone else, until the test lets it go on.
	taken, wake := make(chan string, 4), make(chan struct{})
	stalled := asynq.NewServer(opt, asynq.Config{Concurrency: 4, Queues: scheduler.Queues,
		TaskCheckInterval: 20 * time.Millisecond, LogLevel: asynq.FatalLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(scheduler.TypeProvision, func(ctx context.Context, task *asynq.Task) error {
		p, _ := scheduler.ParseSessionPayload(task)
		taken <- p.SessionID
		select {
		case <-wake:
		case <-ctx.Done():
			return ctx.Err()
		}
		return e.h.Provision(ctx, task)
	})
	if err := stalled.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stalled.Shutdown)

	// down makes the sweep's listing fail, as with Redis unreachable.
	var down atomic.Bool
	h, err := workers.New(workers.Options{
		Store: e.store, Runtime: e.flaky, Enqueuer: e.enq, RuntimeName: "memory", Now: e.clock,
		Exams: func(id string) (*exam.Exam, bool) { return exam.Default(), id == exam.Default().ID },
		ActiveProvisions: func(context.Context) ([]scheduler.SessionPayload, error) {
			if down.Load() {
				return nil, errors.New("dial unix redis.sock: connection refused")
			}
			return scheduler.ActiveProvisions(insp)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Two sessions whose provisions the stalled worker holds: one never
	// leased, one whose lease a live run holds.
	dead, live := e.started(t, "dead@example.com"), e.started(t, "live@example.com")
	for _, id := range []string{dead, live} {
		task, err := scheduler.NewProvisionRoundTask(id, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Enqueue(task); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]bool{}
	for range 2 {
		select {
		case id := <-taken:
			got[id] = true
		case <-time.After(waitTimeout):
			t.Fatalf("the stalled worker took %v of the two provisions", got)
		}
	}
	liveLease, err := e.store.TakeLease(ctx, scheduler.LeaseProvision, live, 0, time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	pass := func() []string {
		t.Helper()
		r, err := h.RestartOnce(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// First seen, then seen again within the grace: nothing yet.
	if r := pass(); len(r) != 0 {
		t.Fatalf("restarted %v on first sight", r)
	}
	e.advance(scheduler.UnleasedGrace - time.Second)
	if r := pass(); len(r) != 0 {
		t.Fatalf("restarted %v within the grace", r)
	}
	// A pass that cannot look (Redis unreachable) starts the grace again:
	// the workers about to take their leases were held up by the same
	// outage.
	down.Store(true)
	e.advance(time.Minute)
	if _, err := h.RestartOnce(ctx); err == nil {
		t.Fatal("a pass that could not list the active provisions reported no error")
	}
	down.Store(false)
	if r := pass(); len(r) != 0 {
		t.Fatalf("restarted %v on the first pass after an outage", r)
	}
	e.advance(scheduler.UnleasedGrace)
	if r := pass(); !slices.Equal(r, []string{dead}) {
		t.Fatalf("restarted %v after the grace, want only %s", r, dead)
	}
	s := e.get(t, dead)
	if s.Status != stateProvisioning || s.ProvisionRound() != 1 {
		t.Fatalf("after the restart: %s round %d", s.Status, s.ProvisionRound())
	}
	if d := e.auditDetail(t, dead, "provision-restarted"); d["reason"] != scheduler.RestartNeverLeased {
		t.Errorf("restart recorded as %v, want reason %q", d, scheduler.RestartNeverLeased)
	}
	e.enq.mu.Lock()
	queued := e.enq.queued["provision:p1:"+dead]
	e.enq.mu.Unlock()
	if !queued {
		t.Fatalf("round 1's provision was not enqueued: %+v", e.enq.provisions)
	}
	// The stalled task is still active, of round 0: later passes leave it,
	// and do not so much as write the record.
	version := e.get(t, dead).Version
	for range 3 {
		e.advance(time.Minute)
		if r := pass(); len(r) != 0 {
			t.Fatalf("a later pass restarted %v", r)
		}
	}
	if v := e.get(t, dead).Version; v != version {
		t.Fatalf("later passes wrote the record of a session past the task's round: version %d → %d", version, v)
	}
	if s := e.get(t, live); s.ProvisionRound() != 0 || s.Restarts != 0 {
		t.Fatalf("the leased provision was restarted: round %d", s.ProvisionRound())
	}

	// Round 1's run takes the lease; the stalled worker wakes and finds
	// its round left behind: it neither provisions nor takes the lease.
	next, err := e.store.TakeLease(ctx, scheduler.LeaseProvision, dead, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := liveLease.Release(ctx); err != nil {
		t.Fatal(err)
	}
	close(wake)
	for _, id := range []string{dead, live} {
		for {
			active, err := scheduler.ActiveProvisions(insp)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.ContainsFunc(active, func(p scheduler.SessionPayload) bool { return p.SessionID == id }) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if held, err := next.Renew(ctx); err != nil || !held {
		t.Fatalf("round 1's lease after the stalled round 0 woke: %v %v", held, err)
	}
	if s := e.get(t, dead); s.Status != stateProvisioning || s.ProvisionRound() != 1 {
		t.Fatalf("the stalled round 0 changed the session: %s round %d", s.Status, s.ProvisionRound())
	}
	if s := e.get(t, live); s.Status != stateReady {
		t.Fatalf("the live provision: %s", s.Status)
	}
}

// TestRestartUnleasedLeavesALeasedProvision: the restart of a provision
// taken for never leased checks the lease again under the session's lock,
// so a worker that took its lease after the sweep listed the leases keeps
// its run; without a lease the restart goes ahead.
func TestRestartUnleasedLeavesALeasedProvision(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.started(t, "late@example.com")
	l, err := e.store.TakeLease(ctx, scheduler.LeaseProvision, id, 0, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if did, err := scheduler.RestartUnleasedProvision(ctx, e.store, e.enq, id, 0); err != nil || did {
		t.Fatalf("restart of a leased provision: %v %v, want none", did, err)
	}
	if s := e.get(t, id); s.ProvisionRound() != 0 || s.Restarts != 0 {
		t.Fatalf("the leased provision moved to round %d", s.ProvisionRound())
	}
	if err := l.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if did, err := scheduler.RestartUnleasedProvision(ctx, e.store, e.enq, id, 0); err != nil || !did {
		t.Fatalf("restart of an unleased provision: %v %v", did, err)
	}
	if s := e.get(t, id); s.ProvisionRound() != 1 {
		t.Fatalf("after the restart: round %d, want 1", s.ProvisionRound())
	}
}

// full is the gated runtime whose provision, once let through, finds no
// room, and which counts the labs it is asked to remove.
type full struct {
	*gated
	mu        sync.Mutex
	destroyed []string
}

func (f *full) Provision(ctx context.Context, spec lab.Spec) error {
	f.entered <- spec.SessionID
	select {
	case <-f.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return fmt.Errorf("plan lab %s: %w", spec.SessionID, lab.ErrNoCapacity)
}

func (f *full) Destroy(ctx context.Context, id string) error {
	f.mu.Lock()
	f.destroyed = append(f.destroyed, id)
	f.mu.Unlock()
	return f.gated.Destroy(ctx, id)
}

// TestSupersededRunDoesNotPark: a run whose lease a later round took over
// while its provision was under way, and whose provision then finds no
// room, neither removes the lab (the later round is building it) nor
// parks the session.
func TestSupersededRunDoesNotPark(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	f := &full{gated: newGated()}
	// A lease renewed far apart, so that the stale run learns of the
	// takeover only at its fence.
	h, err := workers.New(workers.Options{
		Store: e.store, Runtime: f, Enqueuer: e.enq, RuntimeName: "memory", Now: e.clock,
		Exams:    func(id string) (*exam.Exam, bool) { return exam.Default(), id == exam.Default().ID },
		LeaseTTL: time.Minute, LeaseRenew: time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	id := e.started(t, "stale@example.com")
	done := make(chan error, 1)
	go func() { done <- h.Provision(ctx, provisionTask(t, id)) }()
	<-f.entered
	if did, err := scheduler.RestartProvision(ctx, e.store, e.enq, id, 0, scheduler.RestartLeaseRanOut); err != nil || !did {
		t.Fatalf("restart: %v %v", did, err)
	}
	if _, err := e.store.TakeLease(ctx, scheduler.LeaseProvision, id, 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	close(f.open)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the superseded run failed its task: %v", err)
		}
	case <-time.After(waitTimeout):
		t.Fatal("the superseded run did not return")
	}
	if s := e.get(t, id); s.Status != stateProvisioning || s.ProvisionRound() != 1 || s.Parks != 0 {
		t.Fatalf("the superseded run changed the session: %s round %d parks %d", s.Status, s.ProvisionRound(), s.Parks)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.destroyed) != 0 {
		t.Fatalf("the superseded run removed the lab the later round builds: %v", f.destroyed)
	}
}

package workers_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// internalAddr is what a runtime's own error names and a candidate must
// never read.
const internalAddr = "10.77.0.9:4646"

// outage makes the runtime fail the way one that cannot be reached does
// (Provision and Ping alike) while down is set, or find no room while
// full is set.
type outage struct{ down, full atomic.Bool }

func (o *outage) rule(c labtest.Call) error {
	switch {
	case o.down.Load() && (c.Method == "Provision" || c.Method == "Ping" || c.Method == "Status" || c.Method == "Destroy"):
		return fmt.Errorf("dial tcp %s: connect: connection refused: %w", internalAddr, lab.ErrUnavailable)
	case o.full.Load() && c.Method == "Provision":
		return fmt.Errorf("placement of exam job: Resources exhausted on 1 node (cpu exhausted) at %s: %w", internalAddr, lab.ErrNoCapacity)
	}
	return nil
}

func provisionRound(t *testing.T, id string, round int) *asynq.Task {
	t.Helper()
	task, err := scheduler.NewProvisionRoundTask(id, round)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func (e *env) audited(t *testing.T, id string) []string {
	t.Helper()
	log, err := e.store.AuditLog(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range log {
		out = append(out, a.Action)
	}
	return out
}

// later moves the test clock on, so the next start is a later arrival.
func (e *env) later(d time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.now = e.now.Add(d)
}

func (e *env) hold(t *testing.T) (store.Hold, bool) {
	t.Helper()
	h, ok, err := e.store.AdmissionHold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h, ok
}

func (e *env) place(t *testing.T, id string) int {
	t.Helper()
	p, ok, err := e.store.QueuePlace(context.Background(), e.get(t, id))
	if err != nil || !ok {
		t.Fatalf("place of %s in line: ok %v, %v", id, ok, err)
	}
	return p.Position
}

// checkParked asserts that a session waits in line again for reason, that
// the candidate is told notice and never the runtime's words, and that
// the exam staff have the runtime's words in full.
func (e *env) checkParked(t *testing.T, id, reason, notice string) {
	t.Helper()
	s := e.get(t, id)
	if s.Status != session.StateQueued || s.Parking == nil || s.Parking.Reason != reason {
		t.Fatalf("session %s is %s parked %+v, want queued and parked for %s", id, s.Status, s.Parking, reason)
	}
	if got := s.CandidateError(); got != notice || strings.Contains(got, internalAddr) {
		t.Errorf("the candidate reads %q, want %q", got, notice)
	}
	if !strings.Contains(s.Error, internalAddr) || !strings.Contains(s.Parking.Detail, internalAddr) {
		t.Errorf("the exam staff read %q / %q, want the runtime's whole answer", s.Error, s.Parking.Detail)
	}
	if s.HoldsSlot() {
		t.Errorf("a parked session still counts as running")
	}
	if a := e.audited(t, id); !slices.Contains(a, "parked") {
		t.Errorf("audit %v has no parked entry", a)
	}
}

// TestUnavailableRuntimeParksTheStart: a provision against a runtime that
// cannot be reached parks the start on its first attempt — back in line
// at its place, its slot given back, admission held — instead of retrying
// and failing. A later start waits behind it; the admission sweep admits
// nobody while the runtime is away, and once it answers the parked start
// is admitted first, with a provision of its own, and its lab comes up.
func TestUnavailableRuntimeParksTheStart(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var o outage
	e.flaky.FailWhen(o.rule)
	o.down.Store(true)

	a := e.started(t, "a@example.com")
	if err := e.h.Provision(ctx, provisionTask(t, a)); err != nil {
		t.Fatalf("a parked provision ends its task: %v", err)
	}
	e.checkParked(t, a, session.ParkUnavailable, session.NoticeUnavailable)
	if s := e.get(t, a); s.Attempts != 1 || e.flaky.Calls("Provision") != 1 {
		t.Errorf("%d attempts, %d runtime provisions, want 1 each: parked on the first", s.Attempts, e.flaky.Calls("Provision"))
	}
	if h, ok := e.hold(t); !ok || h.State != store.HoldHeld || h.Reason != session.ParkUnavailable || !strings.Contains(h.Detail, internalAddr) {
		t.Fatalf("hold %+v (%v), want held for an unavailable runtime with its reason", h, ok)
	}
	if n, _ := e.store.RunningLabs(ctx); n != 0 {
		t.Errorf("%d labs counted as running, want none", n)
	}

	// A later arrival is not admitted past it, nor by the sweep while
	// the runtime is away.
	e.later(time.Second)
	b := e.login(t, "b@example.com")
	if _, err := scheduler.Start(ctx, e.store, e.enq, b, e.clock()); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Admission(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if sa, sb := e.get(t, a).Status, e.get(t, b).Status; sa != session.StateQueued || sb != session.StateQueued {
		t.Fatalf("while the runtime is away: a %s, b %s, want both queued", sa, sb)
	}
	if pa, pb := e.place(t, a), e.place(t, b); pa != 1 || pb != 2 {
		t.Fatalf("places a %d, b %d, want the parked start first", pa, pb)
	}
	q, err := e.store.Queue(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if q.Hold == nil || len(q.Sittings) != 1 || len(q.Sittings[0].Queued) != 2 || q.Sittings[0].Queued[0].Parking == nil ||
		!strings.Contains(q.Sittings[0].Queued[0].Parking.Detail, internalAddr) || q.Sittings[0].Queued[1].Parking != nil {
		t.Fatalf("the admins' queue %+v does not show the parked start and why", q)
	}

	// The runtime answers: the sweep opens admission, in line order.
	o.down.Store(false)
	if err := e.h.Admission(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.hold(t); ok {
		t.Fatal("admission still held after the runtime answered")
	}
	if sa, sb := e.get(t, a).Status, e.get(t, b).Status; sa != session.StateProvisioning || sb != session.StateProvisioning {
		t.Fatalf("after the runtime answered: a %s, b %s, want both admitted", sa, sb)
	}
	// The first round's task, delivered again, finds nothing to do.
	before := e.flaky.Calls("Provision")
	if err := e.h.Provision(ctx, provisionTask(t, a)); err != nil || e.flaky.Calls("Provision") != before {
		t.Fatalf("an earlier round's provision ran (%v, %d provisions)", err, e.flaky.Calls("Provision")-before)
	}
	if err := e.h.Provision(ctx, provisionRound(t, a, 1)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, a); s.Status != session.StateReady || s.Parking != nil || s.CandidateError() != "" {
		t.Fatalf("a is %s parked %+v notice %q, want ready and no notice", s.Status, s.Parking, s.CandidateError())
	}
	if acts := e.audited(t, a); !slices.Contains(acts, "resumed") {
		t.Errorf("audit %v has no resumed entry", acts)
	}
}

// TestNoCapacityParksUntilALabEnds: with the runtime full, a start is
// parked with the plain words of a lab being prepared. Nobody is admitted
// behind it while a lab runs that could end; when one ends, the parked
// start alone tries again (the probe), and once its lab is up the next in
// line tries, alone too; once nobody waits, admission is open again.
func TestNoCapacityParksUntilALabEnds(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var o outage
	e.flaky.FailWhen(o.rule)

	first := e.readyLab(t, "first@example.com")
	o.full.Store(true)
	b := e.started(t, "b@example.com")
	if err := e.h.Provision(ctx, provisionTask(t, b)); err != nil {
		t.Fatal(err)
	}
	e.checkParked(t, b, session.ParkNoCapacity, session.NoticeWaitingRoom)
	e.later(time.Second)
	c := e.login(t, "c@example.com")
	if _, err := scheduler.Start(ctx, e.store, e.enq, c, e.clock()); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Admission(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if sb, sc := e.get(t, b).Status, e.get(t, c).Status; sb != session.StateQueued || sc != session.StateQueued {
		t.Fatalf("while full: b %s, c %s, want both queued", sb, sc)
	}

	// The first lab ends: its slot comes back, and b alone tries again.
	o.full.Store(false)
	e.submit(t, first, session.ByCandidate)
	if err := e.h.Archive(ctx, archiveTask(t, first, session.ByCandidate)); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Cleanup(ctx, cleanupTask(t, first, session.ByCandidate)); err != nil {
		t.Fatal(err)
	}
	if sb, sc := e.get(t, b).Status, e.get(t, c).Status; sb != session.StateProvisioning || sc != session.StateQueued {
		t.Fatalf("after a lab ended: b %s, c %s, want b trying and c waiting behind it", sb, sc)
	}
	if h, ok := e.hold(t); !ok || h.State != store.HoldProbing || h.Probe != b {
		t.Fatalf("hold %+v (%v), want b probing", h, ok)
	}
	if err := e.h.Provision(ctx, provisionRound(t, b, 1)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, b); s.Status != session.StateReady {
		t.Fatalf("b is %s, want ready", s.Status)
	}
	if s := e.get(t, c); s.Status != session.StateProvisioning {
		t.Fatalf("c is %s after b's lab came up, want admitted", s.Status)
	}
	if h, ok := e.hold(t); !ok || h.State != store.HoldProbing || h.Probe != c {
		t.Fatalf("hold %+v (%v), want c trying alone next", h, ok)
	}
	if err := e.h.Provision(ctx, provisionTask(t, c)); err != nil || e.get(t, c).Status != session.StateReady {
		t.Fatalf("c's provision: %v, status %s", err, e.get(t, c).Status)
	}
	if _, ok := e.hold(t); ok {
		t.Fatal("admission still held with nobody waiting")
	}
	d := e.started(t, "d@example.com")
	if s := e.get(t, d); s.Status != session.StateProvisioning {
		t.Fatalf("a start once the hold is gone is %s, want admitted at once", s.Status)
	}
}

// TestParkedProbeParksAgain: a probe that finds no room again holds
// admission again, and the sweep lets a start try again when no lab runs
// that could end.
func TestParkedProbeParksAgain(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var o outage
	e.flaky.FailWhen(o.rule)
	o.full.Store(true)
	a := e.started(t, "a@example.com")
	if err := e.h.Provision(ctx, provisionTask(t, a)); err != nil {
		t.Fatal(err)
	}
	e.checkParked(t, a, session.ParkNoCapacity, session.NoticeWaitingRoom)
	// No lab runs: nothing will end, so the sweep lets a try again.
	if err := e.h.Admission(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if h, ok := e.hold(t); !ok || h.State != store.HoldProbing || h.Probe != a {
		t.Fatalf("hold %+v (%v), want a probing", h, ok)
	}
	if err := e.h.Provision(ctx, provisionRound(t, a, 1)); err != nil {
		t.Fatal(err)
	}
	s := e.get(t, a)
	if !s.Parked() || s.Parks != 2 {
		t.Fatalf("a is %s after %d parks, want parked twice", s.Status, s.Parks)
	}
	if h, ok := e.hold(t); !ok || h.State != store.HoldHeld {
		t.Fatalf("hold %+v (%v), want held again", h, ok)
	}
	// The admin removes it from the line: it fails with their reason.
	if _, err := scheduler.Withdraw(ctx, e.store, a, "no room today", e.clock()); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, a); s.Status != session.StateFailed {
		t.Fatalf("a is %s after its removal, want failed", s.Status)
	}
}

// TestOtherFailuresStillRetry: a failure that is neither no room nor no
// runtime keeps the retry path: the session stays provisioning.
func TestOtherFailuresStillRetry(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	a := e.started(t, "a@example.com")
	e.flaky.FailNext("Provision", 1, errors.New("image pull failed"))
	if err := e.h.Provision(ctx, provisionTask(t, a)); err == nil || skipsRetry(err) {
		t.Fatalf("provision: %v, want a retryable error", err)
	}
	if s := e.get(t, a); s.Status != session.StateProvisioning || s.Parking != nil {
		t.Fatalf("a is %s parked %+v, want provisioning", s.Status, s.Parking)
	}
}

// TestParkKilledHalfway: a worker killed after the park moved the keys
// but before it recorded the park. The admission sweep goes by the record
// (still provisioning): the slot is the session's again and it is not in
// line twice; the provision's retry parks it properly.
func TestParkKilledHalfway(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var o outage
	e.flaky.FailWhen(o.rule)
	o.down.Store(true)
	a := e.started(t, "a@example.com")
	if err := e.store.ParkSlot(ctx, e.get(t, a), session.ParkUnavailable, "dial tcp "+internalAddr+": connection refused"); err != nil {
		t.Fatal(err)
	}
	// ...killed here. The sweep runs while the runtime is still away.
	if err := e.h.Admission(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, a); s.Status != session.StateProvisioning {
		t.Fatalf("a is %s after the sweep, want provisioning as its record says", s.Status)
	}
	if n, _ := e.store.RunningLabs(ctx); n != 1 {
		t.Fatalf("%d slots held after the sweep, want a's", n)
	}
	if _, ok, _ := e.store.QueuePlace(ctx, e.get(t, a)); ok {
		t.Fatal("a provisioning session is still in line")
	}
	// asynq delivers the killed task again.
	if err := e.h.Provision(ctx, provisionTask(t, a)); err != nil {
		t.Fatal(err)
	}
	e.checkParked(t, a, session.ParkUnavailable, session.NoticeUnavailable)
	if n, _ := e.store.RunningLabs(ctx); n != 0 {
		t.Fatalf("%d slots held once parked, want none", n)
	}
	if a := e.audited(t, a); len(slices.DeleteFunc(slices.Clone(a), func(s string) bool { return s != "parked" })) != 1 {
		t.Fatalf("audit %v, want one parked entry", a)
	}
	o.down.Store(false)
	if err := e.h.Admission(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if err := e.h.Provision(ctx, provisionRound(t, a, 1)); err != nil || e.get(t, a).Status != session.StateReady {
		t.Fatalf("after the runtime came back: %v, a is %s", err, e.get(t, a).Status)
	}
}

package workers_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/examlab/examlab/exam"
	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/lab/labtest"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
	"github.com/examlab/examlab/store/storetest"
	"github.com/examlab/examlab/testlab/redistest"
	"github.com/examlab/examlab/workers"
)

// These tests drive the handlers with the in-memory lab runtime (through a
// Flaky wrapper that fails chosen calls), a real store on a private
// redis-server (`make deps` installs it) and a recording enqueuer: no
// containers, so each test takes milliseconds.

// The session record and its states, by short names.
type record = session.Session

const (
	stateCreated      = session.StateCreated
	stateProvisioning = session.StateProvisioning
	stateReady        = session.StateReady
	stateSubmitted    = session.StateSubmitted
	stateArchiving    = session.StateArchiving
	stateCompleted    = session.StateCompleted
	stateFailed       = session.StateFailed
	stateExpired      = session.StateExpired
)

// examDuration is the time allowance of the test sessions.
const examDuration = 90 * time.Minute

// waitTimeout bounds waiting for a real asynq server to settle a task.
const waitTimeout = 15 * time.Second

// env is one test's handlers and everything they act on.
type env struct {
	mem   *labtest.Memory
	flaky *labtest.Flaky
	store *store.Store
	redis string // the redis-server's unix socket
	rdb   *redis.Client
	enq   *recorder
	obs   *observer
	h     *workers.Handlers

	mu        sync.Mutex
	now       time.Time
	submitted int // candidates submittedLab has made
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{
		mem:   labtest.NewMemory(labtest.MemoryOptions{}),
		redis: redistest.Socket(t),
		enq:   &recorder{queued: map[string]bool{}},
		obs:   &observer{},
		now:   time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC),
	}
	e.flaky = labtest.NewFlaky(e.mem)
	e.rdb = redis.NewClient(&redis.Options{Network: "unix", Addr: e.redis})
	t.Cleanup(func() { e.rdb.Close() })
	var err error
	e.store, err = store.New(store.Options{Dir: t.TempDir(), Redis: e.rdb, Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	ex := exam.Default()
	e.h, err = workers.New(workers.Options{
		Store:       e.store,
		Runtime:     e.flaky,
		Enqueuer:    e.enq,
		Exams:       func(id string) (*exam.Exam, bool) { return ex, id == ex.ID },
		RuntimeName: "memory",
		Observer:    e.obs,
		Now:         e.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *env) clock() time.Time {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.now
}

// login creates a session of the default exam and returns its id.
func (e *env) login(t *testing.T, email string) string {
	t.Helper()
	sess, _ := storetest.SignIn(t, e.store, email, exam.Default().ID, examDuration, "memory")
	return sess.ID
}

// started signs a candidate in and starts their session, as the API's
// start does: queued, then admitted (nothing is full here), so that a
// provision has a slot to work in.
func (e *env) started(t *testing.T, email string) string {
	t.Helper()
	id := e.login(t, email)
	e.start(t, id)
	return id
}

func (e *env) start(t *testing.T, id string) {
	t.Helper()
	if _, err := scheduler.Start(context.Background(), e.store, e.enq, id, e.clock()); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateProvisioning {
		t.Fatalf("session %s is %s after start, want provisioning", id, s.Status)
	}
}

func (e *env) get(t *testing.T, id string) *record {
	t.Helper()
	sess, err := e.store.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return sess
}

// spec is the lab a session of the default exam has.
func spec(t *testing.T, id string) lab.Spec {
	t.Helper()
	s, err := lab.NewSpec(exam.Default(), lab.Session{ID: id})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// readyLab logs a candidate in and provisions their lab through the
// handler, as a started session would be.
func (e *env) readyLab(t *testing.T, email string) string {
	t.Helper()
	id := e.started(t, email)
	if err := e.h.Provision(context.Background(), provisionTask(t, id)); err != nil {
		t.Fatal(err)
	}
	if s := e.get(t, id); s.Status != stateReady {
		t.Fatalf("session %s is %s after provision, want ready", id, s.Status)
	}
	return id
}

// submit records a submit for reason, as the API (or the expiry sweep)
// does before it enqueues the archive.
func (e *env) submit(t *testing.T, id, reason string) {
	t.Helper()
	now := e.clock().UTC()
	if _, err := e.store.Update(context.Background(), id, func(s *record) error {
		_, err := s.Submit(reason, now)
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// setDeadline moves the session's deadline, as an admin's extension does
// (Extend), or — where the time allowance could not shrink that far — as
// if the lab had been ready that much earlier.
func (e *env) setDeadline(t *testing.T, id string, deadline time.Time) {
	t.Helper()
	if _, err := e.store.Update(context.Background(), id, func(s *record) error {
		if err := s.Extend(deadline.Sub(s.Deadline)); err == nil {
			return nil
		}
		s.Deadline = deadline // a fixture: the clock ran out earlier
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// fail ends the session as failed without touching its lab.
func (e *env) fail(t *testing.T, id string) {
	t.Helper()
	if _, err := e.store.Update(context.Background(), id, func(s *record) error { return s.Fail("failed for the test", e.clock()) }); err != nil {
		t.Fatal(err)
	}
}

func provisionTask(t *testing.T, id string) *asynq.Task {
	t.Helper()
	task, err := scheduler.NewProvisionTask(id)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func archiveTask(t *testing.T, id, reason string) *asynq.Task {
	t.Helper()
	task, err := scheduler.NewArchiveTask(id, reason)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func cleanupTask(t *testing.T, id, reason string) *asynq.Task {
	t.Helper()
	task, err := scheduler.NewCleanupTask(id, reason)
	if err != nil {
		t.Fatal(err)
	}
	return task
}

func skipsRetry(err error) bool { return errors.Is(err, asynq.SkipRetry) }

// recorder is the enqueuer double: it records every follow-up task and,
// like the real one with task ids, queues each (operation, session) once.
type recorder struct {
	mu         sync.Mutex
	archives   []enqueued
	cleanups   []enqueued
	provisions []enqueued
	queued     map[string]bool
	err        error // returned by every call when set
}

type enqueued struct{ SessionID, Reason string }

func (r *recorder) add(list *[]enqueued, op, id, reason string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return false, r.err
	}
	*list = append(*list, enqueued{id, reason})
	key := op + ":" + id
	if r.queued[key] {
		return false, nil
	}
	r.queued[key] = true
	return true, nil
}

// Provision records a provision; each round after a park is a task of its
// own, as its task id makes it.
func (r *recorder) Provision(ctx context.Context, id string, round int) (bool, error) {
	op := "provision"
	if round > 0 {
		op += ":p" + strconv.Itoa(round)
	}
	return r.add(&r.provisions, op, id, "")
}

func (r *recorder) Archive(ctx context.Context, id, reason string) (bool, error) {
	return r.ArchiveRound(ctx, id, reason, 0)
}

// ArchiveRound and CleanupRound record an archive or cleanup; each
// round after a restart is a task of its own.
func (r *recorder) ArchiveRound(ctx context.Context, id, reason string, round int) (bool, error) {
	op := "archive"
	if round > 0 {
		op += ":a" + strconv.Itoa(round)
	}
	return r.add(&r.archives, op, id, reason)
}

func (r *recorder) CleanupRound(ctx context.Context, id, reason string, round int) (bool, error) {
	op := "cleanup"
	if round > 0 {
		op += ":c" + strconv.Itoa(round)
	}
	return r.add(&r.cleanups, op, id, reason)
}

func (r *recorder) calls() (archives, cleanups []enqueued) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]enqueued(nil), r.archives...), append([]enqueued(nil), r.cleanups...)
}

// observer records the handlers' measurements.
type observer struct {
	mu          sync.Mutex
	provisioned []bool
	archived    []int64 // bytes of each successful archive; -1 for a failed one

	leftoversAdded, leftoversCleared int
}

func (o *observer) Provisioned(_ time.Duration, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.provisioned = append(o.provisioned, ok)
}

func (o *observer) Archived(_ time.Duration, bytes int64, ok bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !ok {
		bytes = -1
	}
	o.archived = append(o.archived, bytes)
}

func (o *observer) Leftovers(added, cleared int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.leftoversAdded += added
	o.leftoversCleared += cleared
}

func (o *observer) results() ([]bool, []int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]bool(nil), o.provisioned...), append([]int64(nil), o.archived...)
}

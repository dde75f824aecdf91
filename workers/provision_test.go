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
	"github.com/examlab/examlab/store/storetest"
)

func TestProvision(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.started(t, "ada@example.com")
	if err := e.h.Provision(ctx, provisionTask(t, id)); err != nil {
		t.Fatal(err)
	}
	s := e.get(t, id)
	now := e.clock()
	if s.Status != stateReady || s.Attempts != 1 || s.Error != "" {
		t.Errorf("status %s, attempts %d, error %q; want ready after one attempt", s.Status, s.Attempts, s.Error)
	}
	// The clock starts when the lab is usable.
	if !s.ReadyAt.Equal(now) || !s.Deadline.Equal(now.Add(examDuration)) {
		t.Errorf("ready at %v, deadline %v; want %v and %v", s.ReadyAt, s.Deadline, now, now.Add(examDuration))
	}
	var names []string
	for _, n := range s.Nodes {
		names = append(names, n.Name)
		if n.State != lab.StateRunning {
			t.Errorf("node %s recorded as %s", n.Name, n.State)
		}
	}
	if want := []string{"tokyo", "osaka", "kyoto", "g1", "g2", "g3", "g4", "phoenix"}; !slices.Equal(names, want) {
		t.Errorf("nodes recorded %v, want %v", names, want)
	}
	if inv := e.mem.Inventory(id); len(inv.Nodes) != 8 {
		t.Errorf("the runtime holds %d nodes, want 8", len(inv.Nodes))
	}
	if ok, _ := e.obs.results(); !slices.Equal(ok, []bool{true}) {
		t.Errorf("observed provisions %v, want one success", ok)
	}

	t.Run("a second run changes nothing", func(t *testing.T) {
		if err := e.h.Provision(ctx, provisionTask(t, id)); err != nil {
			t.Fatal(err)
		}
		again := e.get(t, id)
		if again.Version != s.Version || e.flaky.Calls("Provision") != 1 {
			t.Errorf("version %d -> %d, %d provisions: want nothing done", s.Version, again.Version, e.flaky.Calls("Provision"))
		}
	})
}

func TestProvisionRetriesConverge(t *testing.T) {
	cases := []struct {
		name string
		// arrange makes the first attempt fail.
		arrange func(e *env, id string)
		wantErr string
	}{
		{
			name:    "the runtime fails",
			arrange: func(e *env, id string) { e.flaky.FailNext("Provision", 1, errors.New("engine busy")) },
			wantErr: "engine busy",
		},
		{
			name: "a node dies while the lab comes up",
			arrange: func(e *env, id string) {
				// At the first status read once g3 exists: the progress
				// watcher's first read may come before it.
				var crashed atomic.Bool
				e.flaky.FailWhen(func(c labtest.Call) error {
					if c.Method == "Status" && !crashed.Load() && e.mem.Crash(id, "g3") == nil {
						crashed.Store(true)
					}
					return nil
				})
			},
			wantErr: "not every node is running",
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			ctx := context.Background()
			id := e.started(t, "ada@example.com")
			tc.arrange(e, id)

			err := e.h.Provision(ctx, provisionTask(t, id))
			if err == nil || skipsRetry(err) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("first attempt: err = %v, want a retryable %q", err, tc.wantErr)
			}
			s := e.get(t, id)
			if s.Status != stateProvisioning || s.Attempts != 1 || !strings.Contains(s.Error, tc.wantErr) {
				t.Errorf("after the failure: status %s, attempts %d, error %q", s.Status, s.Attempts, s.Error)
			}
			if n := e.flaky.Calls("Destroy"); n != 0 {
				t.Errorf("a retryable failure destroyed the lab (%d destroys)", n)
			}

			if err := e.h.Provision(ctx, provisionTask(t, id)); err != nil {
				t.Fatalf("retry: %v", err)
			}
			s = e.get(t, id)
			if s.Status != stateReady || s.Attempts != 2 || s.Error != "" || !lab.AllRunning(s.Nodes) {
				t.Errorf("after the retry: status %s, attempts %d, error %q, nodes %+v", s.Status, s.Attempts, s.Error, s.Nodes)
			}
			if ok, _ := e.obs.results(); !slices.Equal(ok, []bool{false, true}) {
				t.Errorf("observed provisions %v, want a failure then a success", ok)
			}
		})
	}
}

// TestProvisionGivesUp: a failure that cannot get better fails the session
// at once and takes down what an earlier attempt left of the lab. (The
// last attempt's failure is TestProvisionThroughAsynq's.)
func TestProvisionGivesUp(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.started(t, "ada@example.com")
	// An earlier attempt got halfway.
	half := spec(t, id)
	half.Nodes = half.Nodes[:3]
	if err := e.mem.Provision(ctx, half); err != nil {
		t.Fatal(err)
	}
	e.flaky.FailNext("Provision", 1, fmt.Errorf("image missing: %w", asynq.SkipRetry))

	if err := e.h.Provision(ctx, provisionTask(t, id)); !skipsRetry(err) {
		t.Fatalf("err = %v, want SkipRetry", err)
	}
	s := e.get(t, id)
	if s.Status != stateFailed || !s.CompletedAt.Equal(e.clock()) || !strings.Contains(s.Error, "image missing") {
		t.Errorf("status %s, completed %v, error %q; want failed now, saying why", s.Status, s.CompletedAt, s.Error)
	}
	if inv := e.mem.Inventory(id); len(inv.Nodes) != 0 {
		t.Errorf("the failed lab was left with %d nodes", len(inv.Nodes))
	}
}

// TestProvisionThroughAsynq runs the handler under a real asynq server, so
// that retries, and the last attempt, are asynq's own.
func TestProvisionThroughAsynq(t *testing.T) {
	cases := []struct {
		name      string
		failures  int
		maxRetry  int
		want      session.State
		task      asynq.TaskState
		attempts  int
		labRemain bool
	}{
		{name: "transient failures are retried until the lab is up", failures: 2, maxRetry: 8,
			want: stateReady, task: asynq.TaskStateCompleted, attempts: 3, labRemain: true},
		// The final error skips asynq's retries: the task is archived.
		{name: "a failure on the last attempt fails the session", failures: 100, maxRetry: 2,
			want: stateFailed, task: asynq.TaskStateArchived, attempts: 3},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			id := e.started(t, "ada@example.com")
			e.flaky.FailNext("Provision", tc.failures, errors.New("no capacity"))
			e.serve(t)
			client := asynq.NewClient(asynq.RedisClientOpt{Network: "unix", Addr: e.redis})
			defer client.Close()
			queued, err := client.Enqueue(provisionTask(t, id), asynq.MaxRetry(tc.maxRetry))
			if err != nil {
				t.Fatal(err)
			}
			e.waitTask(t, queued, asynq.TaskStateCompleted, asynq.TaskStateArchived)

			s := e.get(t, id)
			if s.Status != tc.want || s.Attempts != tc.attempts || e.flaky.Calls("Provision") != tc.attempts {
				t.Errorf("status %s after %d attempts (%d provisions); want %s after %d",
					s.Status, s.Attempts, e.flaky.Calls("Provision"), tc.want, tc.attempts)
			}
			if info := e.waitTask(t, queued, tc.task); info.State != tc.task {
				t.Errorf("task ended %s, want %s", info.State, tc.task)
			}
			if inv := e.mem.Inventory(id); (len(inv.Nodes) == 8) != tc.labRemain {
				t.Errorf("the runtime holds %d nodes", len(inv.Nodes))
			}
			if s.Status == stateFailed && e.flaky.Calls("Destroy") == 0 {
				t.Error("the failed session's lab was not destroyed")
			}
		})
	}
}

// waitTask waits until asynq has the task in one of states, and returns
// it as it is then.
func (e *env) waitTask(t *testing.T, queued *asynq.TaskInfo, states ...asynq.TaskState) *asynq.TaskInfo {
	t.Helper()
	insp := asynq.NewInspector(asynq.RedisClientOpt{Network: "unix", Addr: e.redis})
	defer insp.Close()
	deadline := time.Now().Add(waitTimeout)
	for {
		info, err := insp.GetTaskInfo(queued.Queue, queued.ID)
		if err != nil {
			t.Fatal(err)
		}
		if slices.Contains(states, info.State) {
			return info
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s is still %s after %s, want one of %v", queued.ID, info.State, waitTimeout, states)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serve runs the handlers under an asynq server on the env's Redis, with
// retries a few milliseconds apart.
func (e *env) serve(t *testing.T) {
	t.Helper()
	srv := asynq.NewServer(asynq.RedisClientOpt{Network: "unix", Addr: e.redis}, asynq.Config{
		Concurrency:              2,
		Queues:                   scheduler.Queues,
		RetryDelayFunc:           func(int, error, *asynq.Task) time.Duration { return 10 * time.Millisecond },
		TaskCheckInterval:        20 * time.Millisecond,
		DelayedTaskCheckInterval: 50 * time.Millisecond,
		LogLevel:                 asynq.FatalLevel,
	})
	if err := srv.Start(e.h.Mux()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
}

func TestProvisionRefuses(t *testing.T) {
	cases := []struct {
		name string
		task func(t *testing.T, e *env) *asynq.Task
	}{
		{"a payload that does not decode", func(t *testing.T, e *env) *asynq.Task {
			return asynq.NewTask(scheduler.TypeProvision, []byte("{"))
		}},
		{"a payload without a session", func(t *testing.T, e *env) *asynq.Task {
			return asynq.NewTask(scheduler.TypeProvision, []byte("{}"))
		}},
		{"a session that does not exist", func(t *testing.T, e *env) *asynq.Task {
			return provisionTask(t, labtest.NewSessionID())
		}},
		{"a session of an unknown exam", func(t *testing.T, e *env) *asynq.Task {
			sess, _ := storetest.SignIn(t, e.store, "eve@example.com", "no-such-exam", examDuration, "memory")
			e.start(t, sess.ID)
			return provisionTask(t, sess.ID)
		}},
	}
	// A session whose exam is gone fails at once, in plain words, and its
	// slot goes back.
	t.Run("the unknown exam's session fails and frees its slot", func(t *testing.T) {
		e := newEnv(t)
		sess, _ := storetest.SignIn(t, e.store, "eve@example.com", "no-such-exam", examDuration, "memory")
		e.start(t, sess.ID)
		if err := e.h.Provision(context.Background(), provisionTask(t, sess.ID)); !skipsRetry(err) {
			t.Fatalf("err = %v, want SkipRetry", err)
		}
		s := e.get(t, sess.ID)
		if s.Status != stateFailed || strings.Contains(s.Error, "no-such-exam") || !strings.Contains(s.Error, "exam staff") {
			t.Fatalf("session %s with error %q; want failed, in plain words", s.Status, s.Error)
		}
		if q, err := e.store.Queue(context.Background()); err != nil || q.Running != 0 {
			t.Fatalf("labs running after the failure: %+v %v; want none", q, err)
		}
	})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			if err := e.h.Provision(context.Background(), tc.task(t, e)); !skipsRetry(err) {
				t.Errorf("err = %v, want SkipRetry", err)
			}
			if n := e.flaky.Calls("Provision"); n != 0 {
				t.Errorf("%d provisions of a task that can never succeed", n)
			}
		})
	}
}

// TestProvisionAfterSubmit: a session submitted before its provision ran
// gets no lab; one submitted while its lab came up keeps its submit.
func TestProvisionAfterSubmit(t *testing.T) {
	t.Run("submitted while queued", func(t *testing.T) {
		e := newEnv(t)
		id := e.started(t, "ada@example.com")
		e.submit(t, id, "candidate")
		if err := e.h.Provision(context.Background(), provisionTask(t, id)); err != nil {
			t.Fatal(err)
		}
		if s := e.get(t, id); s.Status != stateSubmitted || e.flaky.Calls("Provision") != 0 {
			t.Errorf("status %s after %d provisions; want submitted and no lab", s.Status, e.flaky.Calls("Provision"))
		}
	})
	t.Run("submitted while the lab came up", func(t *testing.T) {
		e := newEnv(t)
		id := e.started(t, "ada@example.com")
		e.flaky.FailWhen(func(c labtest.Call) error {
			if c.Method == "Provision" {
				e.submit(t, id, "candidate")
			}
			return nil
		})
		if err := e.h.Provision(context.Background(), provisionTask(t, id)); err != nil {
			t.Fatal(err)
		}
		s := e.get(t, id)
		if s.Status != stateSubmitted || !s.ReadyAt.IsZero() || len(s.Nodes) != 8 {
			t.Errorf("status %s, ready at %v, %d nodes; want submitted, never ready, nodes recorded", s.Status, s.ReadyAt, len(s.Nodes))
		}
	})
}

func TestResetNode(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	id := e.readyLab(t, "ada@example.com")
	for _, node := range []string{"osaka", "tokyo"} {
		if _, code, err := lab.Output(ctx, e.mem, id, node, "touch", "/root/mark"); err != nil || code != 0 {
			t.Fatalf("touch in %s: %d %v", node, code, err)
		}
	}
	task, err := scheduler.NewResetNodeTask(id, "osaka", "n1")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.h.ResetNode(ctx, task); err != nil {
		t.Fatal(err)
	}
	if _, err := e.mem.ReadFile(id, "osaka", "/root/mark"); err == nil {
		t.Error("osaka kept its files across the reset")
	}
	if _, err := e.mem.ReadFile(id, "tokyo", "/root/mark"); err != nil {
		t.Errorf("tokyo lost its files in osaka's reset: %v", err)
	}
	audit, err := e.store.AuditLog(ctx, id)
	if err != nil || len(audit) == 0 || audit[len(audit)-1].Action != "node-reset-done" {
		t.Errorf("audit log %+v %v, want node-reset-done last", audit, err)
	}

	refused := []struct {
		name string
		id   func() string
		node string
	}{
		{"an unknown node", func() string { return id }, "nowhere"},
		{"a session without a lab", func() string { return e.login(t, "bob@example.com") }, "osaka"},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			task, err := scheduler.NewResetNodeTask(tc.id(), tc.node, "n2")
			if err != nil {
				t.Fatal(err)
			}
			if err := e.h.ResetNode(ctx, task); !skipsRetry(err) {
				t.Errorf("err = %v, want SkipRetry", err)
			}
		})
	}
	if n := e.flaky.Calls("ResetNode"); n != 1 {
		t.Errorf("%d resets reached the runtime, want 1", n)
	}
}

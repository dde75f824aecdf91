package scheduler_test

import (
	"context"
	"strings"
	"testing"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/testlab/redistest"
)

// TestEnqueueIsIdempotent enqueues the same operation twice on a real
// Redis: the second is recognised as already queued, and only one task
// sits in the queue.
func TestEnqueueIsIdempotent(t *testing.T) {
	addr := redistest.Socket(t)
	opt := asynq.RedisClientOpt{Network: "unix", Addr: addr}
	c := asynq.NewClient(opt)
	defer c.Close()
	e := scheduler.NewEnqueuer(c)
	ctx := context.Background()

	for i, want := range []bool{true, false} {
		got, err := e.Provision(ctx, "abcdefgh1234", 0)
		if err != nil {
			t.Fatalf("enqueue %d: %v", i, err)
		}
		if got != want {
			t.Fatalf("enqueue %d: queued = %v, want %v", i, got, want)
		}
	}
	if _, err := e.Archive(ctx, "abcdefgh1234", "candidate"); err != nil {
		t.Fatal(err)
	}
	insp := asynq.NewInspector(opt)
	defer insp.Close()
	crit, err := insp.ListPendingTasks(scheduler.QueueCritical)
	if err != nil {
		t.Fatal(err)
	}
	if len(crit) != 1 || crit[0].ID != "session:provision:abcdefgh1234" || crit[0].MaxRetry != 8 {
		t.Fatalf("critical queue = %+v, want one provision task with 8 retries", crit)
	}
	def, err := insp.ListPendingTasks(scheduler.QueueDefault)
	if err != nil {
		t.Fatal(err)
	}
	if len(def) != 1 || def[0].Type != scheduler.TypeArchive {
		t.Fatalf("default queue = %+v, want one archive task", def)
	}
	p, err := scheduler.ParseSessionPayload(asynq.NewTask(def[0].Type, def[0].Payload))
	if err != nil || p.SessionID != "abcdefgh1234" || p.Reason != "candidate" {
		t.Fatalf("archive payload = %+v, %v", p, err)
	}
}

func TestBadPayloadSkipsRetry(t *testing.T) {
	for _, raw := range []string{"", "{", `{"session_id":""}`, `[]`} {
		_, err := scheduler.ParseSessionPayload(asynq.NewTask(scheduler.TypeArchive, []byte(raw)))
		if err == nil || !strings.Contains(err.Error(), asynq.SkipRetry.Error()) {
			t.Errorf("payload %q: err = %v, want a SkipRetry error", raw, err)
		}
	}
}

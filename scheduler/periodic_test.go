package scheduler_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/testlab/redistest"
)

// sweepTimeout bounds how long the tests wait for a sweep to be processed.
const sweepTimeout = 20 * time.Second

// Two worker processes each run the periodic sweeps. The same tick from
// both enqueues one task — also after that task already ran, which is
// where a uniqueness lock (released on success) lets the second through.
func TestPeriodicTickIsEnqueuedOnceAcrossProcesses(t *testing.T) {
	addr := redistest.Socket(t)
	opt := asynq.RedisClientOpt{Network: "unix", Addr: addr}
	var clients [2]*asynq.Client
	var procs [2]*scheduler.Periodic
	for i := range procs {
		clients[i] = asynq.NewClient(opt)
		t.Cleanup(func() { clients[i].Close() })
		procs[i] = scheduler.NewPeriodic(scheduler.NewEnqueuer(clients[i]), scheduler.PeriodicOptions{Expire: time.Minute, Reap: -1, Admission: -1, Retention: -1, Lost: -1})
	}
	var runs atomic.Int32
	srv := asynq.NewServer(opt, asynq.Config{Concurrency: 2, Queues: scheduler.Queues, LogLevel: asynq.ErrorLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(scheduler.TypeExpire, func(context.Context, *asynq.Task) error { runs.Add(1); return nil })
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	ctx := context.Background()
	slot := time.Now().Truncate(time.Minute)

	tick := func(p *scheduler.Periodic, at time.Time) bool {
		t.Helper()
		queued, err := p.EnqueueTick(ctx, scheduler.TypeExpire, at)
		if err != nil {
			t.Fatal(err)
		}
		return queued
	}
	if !tick(procs[0], slot.Add(time.Second)) {
		t.Fatal("first process's tick was not enqueued")
	}
	if tick(procs[1], slot.Add(3*time.Second)) {
		t.Fatal("second process enqueued the same slot while it was pending")
	}
	deadline := time.Now().Add(sweepTimeout)
	for runs.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if runs.Load() != 1 {
		t.Fatalf("sweep ran %d times, want 1", runs.Load())
	}
	if tick(procs[1], slot.Add(40*time.Second)) {
		t.Fatal("second process enqueued the same slot after the sweep ran")
	}
	if !tick(procs[1], slot.Add(time.Minute)) {
		t.Fatal("the next slot was not enqueued")
	}
	if _, err := procs[0].EnqueueTick(ctx, scheduler.TypeReap, slot); err == nil {
		t.Fatal("a disabled sweep was enqueued")
	}
}

// Started apart, two processes' tickers still add up to one sweep per slot.
func TestPeriodicTickersShareSlots(t *testing.T) {
	addr := redistest.Socket(t)
	opt := asynq.RedisClientOpt{Network: "unix", Addr: addr}
	var runs atomic.Int32
	srv := asynq.NewServer(opt, asynq.Config{Concurrency: 2, Queues: scheduler.Queues, LogLevel: asynq.ErrorLevel})
	mux := asynq.NewServeMux()
	mux.HandleFunc(scheduler.TypeExpire, func(context.Context, *asynq.Task) error { runs.Add(1); return nil })
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)

	const every = time.Second
	start := time.Now()
	for i := range 2 {
		c := asynq.NewClient(opt)
		t.Cleanup(func() { c.Close() })
		p := scheduler.NewPeriodic(scheduler.NewEnqueuer(c), scheduler.PeriodicOptions{Expire: every, Reap: -1, Admission: -1, Retention: -1, Lost: -1})
		if err := p.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(p.Shutdown)
		if i == 0 {
			time.Sleep(400 * time.Millisecond)
		}
	}
	time.Sleep(4 * every)
	slots := int32(time.Since(start) / every)
	time.Sleep(300 * time.Millisecond) // let the last sweep finish
	// Each slot may be counted or just missed at either end, never twice.
	if got := runs.Load(); got < slots-1 || got > slots+1 {
		t.Fatalf("%d sweeps in %d one-second slots from two processes, want about one per slot", got, slots)
	}
}

package scheduler

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/hibiken/asynq"
)

// PeriodicOptions sets how often the sweeps run. Zero values mean the
// documented defaults.
type PeriodicOptions struct {
	Expire     time.Duration // default 15s
	Reap       time.Duration // default 1m
	Admission  time.Duration // default 10s; negative disables
	Retention  time.Duration // default 1h; negative disables
	Lost       time.Duration // default 10s; negative disables (lost.go)
	WarmRefill time.Duration // default 5s; negative disables (warm.go)
	Logger     *slog.Logger
}

// taskEnqueuer is the one Enqueuer method the sweeps need.
type taskEnqueuer interface {
	Enqueue(ctx context.Context, t *asynq.Task, opts ...asynq.Option) (bool, error)
}

// Periodic enqueues the sweeps (expire, reap, admission, retention, lost) on a grid of the
// wall clock. Every worker process runs one, and they must not each
// trigger every sweep: asynq's own scheduler ticks from its start time and
// a uniqueness lock is released as soon as the task finishes, so two
// schedulers started seconds apart each get their tick through. Here every
// process names a tick by the grid slot it falls in — the task id is the
// sweep type and the slot's start — so however many processes fire, one
// task per slot is enqueued and the rest are told it already exists. Slot
// ids are kept for a slot's length after the task ran, which covers the
// clock skew between hosts.
type Periodic struct {
	enq     taskEnqueuer
	entries []periodicEntry
	log     *slog.Logger
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	now     func() time.Time
}

type periodicEntry struct {
	every time.Duration
	task  func() *asynq.Task
}

// NewPeriodic prepares the sweeps; Start runs them.
func NewPeriodic(e taskEnqueuer, o PeriodicOptions) *Periodic {
	if o.Expire == 0 {
		o.Expire = 15 * time.Second
	}
	if o.Reap == 0 {
		o.Reap = time.Minute
	}
	if o.Admission == 0 {
		o.Admission = 10 * time.Second
	}
	if o.Retention == 0 {
		o.Retention = time.Hour
	}
	if o.Lost == 0 {
		o.Lost = defaultLostEvery
	}
	if o.WarmRefill == 0 {
		o.WarmRefill = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	p := &Periodic{enq: e, log: o.Logger, now: time.Now}
	for _, en := range []periodicEntry{
		{o.Expire, NewExpireTask},
		{o.Reap, NewReapTask},
		{o.Admission, NewAdmissionTask},
		{o.Retention, NewRetentionTask},
		{o.Lost, NewLostSweepTask},
		{o.WarmRefill, NewWarmRefillTask},
	} {
		if en.every > 0 {
			p.entries = append(p.entries, en)
		}
	}
	return p
}

// SlotTaskID names the tick of a sweep that falls at t: the same in every
// process whose clock puts t in the same slot of length every.
func SlotTaskID(typ string, every time.Duration, t time.Time) string {
	return typ + ":" + strconv.FormatInt(t.Truncate(every).Unix(), 10)
}

// Start runs one goroutine per sweep until Shutdown.
func (p *Periodic) Start() error {
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	for _, en := range p.entries {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.run(ctx, en)
		}()
	}
	return nil
}

// EnqueueTick enqueues the sweep's task for the slot t falls in; queued is
// false when another process already did.
func (p *Periodic) EnqueueTick(ctx context.Context, typ string, t time.Time) (queued bool, err error) {
	for _, en := range p.entries {
		if task := en.task(); task.Type() == typ {
			return p.enq.Enqueue(ctx, task, asynq.TaskID(SlotTaskID(typ, en.every, t)), asynq.Retention(en.every))
		}
	}
	return false, fmt.Errorf("enqueue sweep %s: not scheduled", typ)
}

func (p *Periodic) run(ctx context.Context, en periodicEntry) {
	typ := en.task().Type()
	for {
		now := p.now()
		// Fire a little after the slot starts, so a host whose clock is
		// slightly behind still lands in the same slot.
		next := now.Truncate(en.every).Add(en.every)
		timer := time.NewTimer(next.Sub(now) + en.every/20)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		ectx, cancel := context.WithTimeout(ctx, 10*time.Second)
		if _, err := p.EnqueueTick(ectx, typ, next); err != nil {
			p.log.Warn("enqueue sweep", "type", typ, "err", err)
		}
		cancel()
	}
}

// Shutdown stops the tickers and waits for them.
func (p *Periodic) Shutdown() {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
}

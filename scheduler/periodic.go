package scheduler

import (
	"fmt"
	"time"

	"github.com/hibiken/asynq"
)

// PeriodicOptions sets how often the sweeps run. Zero values mean the
// documented defaults.
type PeriodicOptions struct {
	Expire    time.Duration // default 15s
	Reap      time.Duration // default 1m
	Retention time.Duration // default 1h; negative disables
}

// RegisterPeriodic adds the sweeps to an asynq scheduler. Several
// processes may run a scheduler: every sweep is idempotent, and each entry
// enqueues with a task ID unique to its tick, so two schedulers firing the
// same tick enqueue it once.
func RegisterPeriodic(s *asynq.Scheduler, o PeriodicOptions) error {
	if o.Expire == 0 {
		o.Expire = 15 * time.Second
	}
	if o.Reap == 0 {
		o.Reap = time.Minute
	}
	if o.Retention == 0 {
		o.Retention = time.Hour
	}
	entries := []struct {
		every time.Duration
		task  *asynq.Task
	}{
		{o.Expire, NewExpireTask()},
		{o.Reap, NewReapTask()},
		{o.Retention, NewRetentionTask()},
	}
	for _, e := range entries {
		if e.every < 0 {
			continue
		}
		// Unique while a tick is pending: a second scheduler's identical
		// enqueue within the same interval is dropped as a duplicate.
		if _, err := s.Register(fmt.Sprintf("@every %s", e.every), e.task, asynq.Unique(e.every)); err != nil {
			return fmt.Errorf("register periodic %s: %w", e.task.Type(), err)
		}
	}
	return nil
}

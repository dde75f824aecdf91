package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
)

// The warm pool (store/warm.go): a sitting with warm > 0 keeps that many
// labs of its exam provisioned ahead of its starts. The refill sweep
// (TypeWarmRefill, every few seconds, and once more right after a claim)
// replaces what is too old or of an old exam version, takes a slot per
// missing lab and queues its provision (TypeWarmProvision); a start
// claims a ready lab inside the admission script (Admit), so the
// candidate's lab is ready at once and no provision runs for it.
const (
	TypeWarmProvision = "warm:provision"
	TypeWarmRefill    = "sweep:warm-refill"
)

// WarmPayload names the warm lab a warm task acts on.
type WarmPayload struct {
	LabID string `json:"lab_id"`
}

// ParseWarmPayload decodes and checks a warm payload; one that cannot be
// decoded will never succeed.
func ParseWarmPayload(t *asynq.Task) (WarmPayload, error) {
	var p WarmPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return p, fmt.Errorf("decode %s payload: %v: %w", t.Type(), err, asynq.SkipRetry)
	}
	if p.LabID == "" {
		return p, fmt.Errorf("decode %s payload: no lab id: %w", t.Type(), asynq.SkipRetry)
	}
	return p, nil
}

// NewWarmProvisionTask brings a warm lab up; its task id is the lab's, so
// it is queued once.
func NewWarmProvisionTask(labID string) (*asynq.Task, error) {
	b, err := json.Marshal(WarmPayload{LabID: labID})
	if err != nil {
		return nil, fmt.Errorf("encode %s payload: %w", TypeWarmProvision, err)
	}
	return asynq.NewTask(TypeWarmProvision, b, asynq.TaskID(TaskID(TypeWarmProvision, labID)),
		asynq.Queue(QueueDefault), asynq.MaxRetry(3), asynq.Timeout(10*time.Minute), asynq.Retention(retention)), nil
}

// NewWarmRefillTask is the refill sweep.
func NewWarmRefillTask() *asynq.Task {
	return asynq.NewTask(TypeWarmRefill, nil, asynq.Queue(QueueDefault), asynq.MaxRetry(1), asynq.Timeout(5*time.Minute))
}

// WarmProvision enqueues the provision of a warm lab.
func (e *Enqueuer) WarmProvision(ctx context.Context, labID string) (bool, error) {
	t, err := NewWarmProvisionTask(labID)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

// WarmRefill enqueues a refill now (after a claim). Claims in the same
// second share one task.
func (e *Enqueuer) WarmRefill(ctx context.Context) (bool, error) {
	id := TypeWarmRefill + ":claim:" + strconv.FormatInt(time.Now().Unix(), 10)
	return e.Enqueue(ctx, NewWarmRefillTask(), asynq.TaskID(id), asynq.Retention(10*time.Second))
}

// warmRefiller is what a claim asks of the queue: a refill soon.
type warmRefiller interface {
	WarmRefill(ctx context.Context) (bool, error)
}

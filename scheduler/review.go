package scheduler

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/hibiken/asynq"
)

// Review labs (store/review.go): a finished session's lab restored from
// its archive for the exam staff. Start brings it up and applies the
// archive; End removes it (an admin's word, or its time ran out, which the
// reaper notices); Regrade runs the exam's checks in it for the session.
const (
	TypeReviewStart   = "review:start"
	TypeReviewEnd     = "review:end"
	TypeReviewRegrade = "review:regrade"
)

// ReviewPayload names the review lab a task acts on.
type ReviewPayload struct {
	ReviewID  string `json:"review_id"`
	SessionID string `json:"session_id"`
	// By is who asked (an admin, or the reaper).
	By     string `json:"by,omitempty"`
	Reason string `json:"reason,omitempty"`
	Nonce  string `json:"nonce,omitempty"`
}

// ParseReviewPayload decodes and checks a review lab task's payload.
func ParseReviewPayload(t *asynq.Task) (ReviewPayload, error) {
	var p ReviewPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		return p, fmt.Errorf("decode %s payload: %v: %w", t.Type(), err, asynq.SkipRetry)
	}
	if p.ReviewID == "" || p.SessionID == "" {
		return p, fmt.Errorf("decode %s payload: no review lab or session: %w", t.Type(), asynq.SkipRetry)
	}
	return p, nil
}

func newReviewTask(typ, queue string, p ReviewPayload, maxRetry int, timeout time.Duration, extra ...string) (*asynq.Task, error) {
	b, err := json.Marshal(p)
	if err != nil {
		return nil, fmt.Errorf("encode %s payload: %w", typ, err)
	}
	return asynq.NewTask(typ, b,
		asynq.TaskID(TaskID(typ, p.ReviewID, extra...)),
		asynq.Queue(queue),
		asynq.MaxRetry(maxRetry),
		asynq.Timeout(timeout),
		asynq.Retention(retention),
	), nil
}

// NewReviewStartTask brings a review lab up from its session's archive.
func NewReviewStartTask(p ReviewPayload) (*asynq.Task, error) {
	return newReviewTask(TypeReviewStart, QueueDefault, p, 4, 20*time.Minute)
}

// NewReviewEndTask removes a review lab.
func NewReviewEndTask(p ReviewPayload) (*asynq.Task, error) {
	return newReviewTask(TypeReviewEnd, QueueDefault, p, 12, 5*time.Minute)
}

// NewReviewRegradeTask grades a session in its review lab, once the lab is
// ready; each request has its own nonce.
func NewReviewRegradeTask(p ReviewPayload) (*asynq.Task, error) {
	return newReviewTask(TypeReviewRegrade, QueueDefault, p, 3, 30*time.Minute, p.Nonce)
}

// ReviewStart enqueues the start of a review lab.
func (e *Enqueuer) ReviewStart(ctx context.Context, p ReviewPayload) (bool, error) {
	t, err := NewReviewStartTask(p)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

// ReviewEnd enqueues the removal of a review lab.
func (e *Enqueuer) ReviewEnd(ctx context.Context, p ReviewPayload) (bool, error) {
	t, err := NewReviewEndTask(p)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

// ReviewRegrade enqueues a regrade in a review lab.
func (e *Enqueuer) ReviewRegrade(ctx context.Context, p ReviewPayload) (bool, error) {
	t, err := NewReviewRegradeTask(p)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

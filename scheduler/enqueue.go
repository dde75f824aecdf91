package scheduler

import (
	"context"
	"errors"
	"fmt"

	"github.com/hibiken/asynq"
)

// Enqueuer puts lifecycle tasks on the queue. Enqueueing an operation that
// is already queued, running or recently done is not an error: the task ID
// makes the request idempotent.
type Enqueuer struct {
	client *asynq.Client
}

// NewEnqueuer wraps an asynq client.
func NewEnqueuer(c *asynq.Client) *Enqueuer { return &Enqueuer{client: c} }

// Enqueue submits t; a task-ID conflict means it is already queued and is
// reported as queued=false with no error.
func (e *Enqueuer) Enqueue(ctx context.Context, t *asynq.Task, opts ...asynq.Option) (queued bool, err error) {
	_, err = e.client.EnqueueContext(ctx, t, opts...)
	if errors.Is(err, asynq.ErrTaskIDConflict) || errors.Is(err, asynq.ErrDuplicateTask) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("enqueue %s: %w", t.Type(), err)
	}
	return true, nil
}

// Provision enqueues the provision of a session's lab in its round'th
// provision (session.Session.ProvisionRound; 0: its first).
func (e *Enqueuer) Provision(ctx context.Context, sessionID string, round int) (bool, error) {
	t, err := NewProvisionRoundTask(sessionID, round)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

// Archive enqueues the archive (and, after it, cleanup) of a session.
func (e *Enqueuer) Archive(ctx context.Context, sessionID, reason string) (bool, error) {
	return e.ArchiveRound(ctx, sessionID, reason, 0)
}

// ArchiveRound enqueues the archive of a session in its round'th round
// (session.Session.ArchiveRestarts).
func (e *Enqueuer) ArchiveRound(ctx context.Context, sessionID, reason string, round int) (bool, error) {
	t, err := NewArchiveRoundTask(sessionID, reason, round)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

// Cleanup enqueues removal of a session's lab.
func (e *Enqueuer) Cleanup(ctx context.Context, sessionID, reason string) (bool, error) {
	return e.CleanupRound(ctx, sessionID, reason, 0)
}

// CleanupRound enqueues the cleanup of a session in its round'th round
// (session.Session.CleanupRestarts).
func (e *Enqueuer) CleanupRound(ctx context.Context, sessionID, reason string, round int) (bool, error) {
	t, err := NewCleanupRoundTask(sessionID, reason, round)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

// Snapshot enqueues an admin snapshot of a live lab.
func (e *Enqueuer) Snapshot(ctx context.Context, sessionID, nonce string) (bool, error) {
	t, err := NewSnapshotTask(sessionID, nonce)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

// ResetNode enqueues the replacement of one node.
func (e *Enqueuer) ResetNode(ctx context.Context, sessionID, node, nonce string) (bool, error) {
	t, err := NewResetNodeTask(sessionID, node, nonce)
	if err != nil {
		return false, err
	}
	return e.Enqueue(ctx, t)
}

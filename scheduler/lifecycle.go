package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// ErrNotQueued: a transition was recorded but the task that carries it on
// could not be enqueued yet. The record stands; a retry of the request, or
// the expiry sweep for submits, enqueues it again.
var ErrNotQueued = errors.New("recorded, but the follow-up task could not be queued yet")

// provisionQueue and archiveQueue are what Start and Submit enqueue on
// (an *Enqueuer, or a test's double).
type provisionQueue interface {
	Provision(ctx context.Context, sessionID string) (bool, error)
}

type archiveQueue interface {
	Archive(ctx context.Context, sessionID, reason string) (bool, error)
}

// Start moves a session to provisioning (session.Session.Start) and
// enqueues its provision. Starting a session that is provisioning again
// re-enqueues, which the task id makes a no-op while the first provision
// is queued or running.
func Start(ctx context.Context, st *store.Store, q provisionQueue, id string, now time.Time) (*session.Session, error) {
	sess, err := st.Update(ctx, id, func(x *session.Session) error { return x.Start(now) })
	if err != nil {
		return nil, err
	}
	if _, err := q.Provision(ctx, sess.ID); err != nil {
		return sess, fmt.Errorf("start session %s: %w: %w", sess.ID, ErrNotQueued, err)
	}
	return sess, nil
}

// Submit ends a session's work for reason (session.ByCandidate, ByAdmin,
// ByDeadline) and enqueues its archive. It is the one submit: the API's
// candidate and admin submits and the deadline sweep all come here. It
// reports whether this call made the move; a session already submitted
// gets its archive enqueued again, which the task id makes a no-op, so a
// submit whose enqueue failed is completed by the next one.
//
// A deadline submit applies only to a session whose deadline has passed
// (it may have been extended since it was listed); otherwise nothing
// changes and Submit returns the session with moved false.
func Submit(ctx context.Context, st *store.Store, q archiveQueue, id, reason string, now time.Time) (*session.Session, bool, error) {
	moved := false
	due := true
	sess, err := st.Update(ctx, id, func(x *session.Session) error {
		moved = false
		if reason == session.ByDeadline && x.Status.Open() && !x.PastDeadline(now) {
			due = false
			return nil
		}
		var err error
		moved, err = x.Submit(reason, now)
		return err
	})
	if err != nil {
		return nil, false, err
	}
	if !due {
		return sess, false, nil
	}
	if _, err := q.Archive(ctx, sess.ID, sess.SubmitReason); err != nil {
		return sess, moved, fmt.Errorf("submit session %s: %w: %w", sess.ID, ErrNotQueued, err)
	}
	return sess, moved, nil
}

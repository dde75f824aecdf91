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
	Provision(ctx context.Context, sessionID string, round int) (bool, error)
}

type archiveQueue interface {
	Archive(ctx context.Context, sessionID, reason string) (bool, error)
}

// Start records that the candidate pressed start (session.Session.Start:
// the session is queued), puts it in its sitting's line and runs an
// admission pass, which admits it at once when a slot is free (and
// enqueues its provision) or, when its sitting's warm pool has a lab
// ready, hands it that lab: the session is ready when Start returns, and
// no provision is queued. Start never fails because every slot is taken:
// the session waits in line, and a lab ending admits the next. Starting
// again keeps the session's place in line, or re-enqueues the provision
// of an admitted one, which the task id makes a no-op while the first
// provision is queued or running.
func Start(ctx context.Context, st *store.Store, q provisionQueue, id string, now time.Time) (*session.Session, error) {
	sess, err := st.Update(ctx, id, func(x *session.Session) error { return x.Start(now) })
	if err != nil {
		return nil, err
	}
	if sess.Status == session.StateQueued {
		if err := st.JoinQueue(ctx, sess); err != nil {
			return sess, fmt.Errorf("start session %s: %w: %w", sess.ID, ErrNotQueued, err)
		}
		// Whatever this pass cannot finish for others, the admission sweep
		// does; this session's own outcome is read back below.
		_, _ = Admit(ctx, st, q, now)
		if sess, err = st.Get(ctx, id); err != nil {
			return nil, err
		}
	}
	if sess.Status == session.StateProvisioning {
		if _, err := q.Provision(ctx, sess.ID, sess.ProvisionRound()); err != nil {
			return sess, fmt.Errorf("start session %s: %w: %w", sess.ID, ErrNotQueued, err)
		}
	}
	return sess, nil
}

// Submit ends a session's work for reason (session.ByCandidate, ByAdmin,
// ByDeadline) and enqueues its archive. It is the one submit: the API's
// candidate and admin submits and the deadline sweep all come here. It
// reports whether this call made the move; a session submitted while it
// waited in the queue leaves the line; a session already submitted
// gets its archive enqueued again, which the task id makes a no-op, so a
// submit whose enqueue failed is completed by the next one.
//
// A deadline submit applies only to a session whose deadline has passed
// (it may have been extended since it was listed); otherwise nothing
// changes and Submit returns the session with moved false.
func Submit(ctx context.Context, st *store.Store, q archiveQueue, id, reason string, now time.Time) (*session.Session, bool, error) {
	moved, waited := false, false
	due := true
	sess, err := st.Update(ctx, id, func(x *session.Session) error {
		moved, waited = false, x.Status == session.StateQueued
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
	if waited {
		// Submitted while it waited: it leaves the line now. (Should this
		// fail, the line gives its slot straight back when it gets there.)
		if _, err := st.ReleaseSlot(ctx, sess.ID); err != nil {
			return sess, moved, fmt.Errorf("submit session %s: leave the queue: %w", sess.ID, err)
		}
	}
	if _, err := q.Archive(ctx, sess.ID, sess.SubmitReason); err != nil {
		return sess, moved, fmt.Errorf("submit session %s: %w: %w", sess.ID, ErrNotQueued, err)
	}
	return sess, moved, nil
}

package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
)

// parkDestroyTimeout bounds the removal of what a parked provision left:
// the runtime may be the thing that is down.
const parkDestroyTimeout = 30 * time.Second

// parkReason is why a failed provision parks its start rather than
// retrying, or "" when it does not: no room now, or no runtime to ask.
// Neither is the candidate's lab failing, and neither gets better by
// retrying at once.
func parkReason(err error) string {
	switch {
	case errors.Is(err, lab.ErrNoCapacity):
		return session.ParkNoCapacity
	case errors.Is(err, lab.ErrUnavailable):
		return session.ParkUnavailable
	}
	return ""
}

// park sends the session back to the queue for reason (scheduler.Park)
// and ends the task: the start is provisioned again, under a task of its
// own, when admission resumes. A lab the runtime could not place is
// removed, so that nothing of it waits on the cluster without a slot; an
// unreachable runtime's half-made lab is left for the next provision,
// which reuses it. Should the park itself fail, the task retries.
func (h *Handlers) park(ctx context.Context, sess *session.Session, reason string, cause error) error {
	bg := context.WithoutCancel(ctx)
	h.log.Warn("lab cannot start now; start parked in the queue", "session", sess.ID, "reason", reason, "err", cause)
	if reason == session.ParkNoCapacity {
		dctx, cancel := context.WithTimeout(bg, parkDestroyTimeout)
		if err := h.o.Runtime.Destroy(dctx, sess.Lab()); err != nil {
			h.log.Warn("remove the lab of a parked start", "session", sess.ID, "err", err)
		}
		cancel()
	}
	_, _, err := scheduler.Park(bg, h.o.Store, sess.ID, reason, cause.Error(), h.o.Now())
	if errors.Is(err, session.ErrNotAllowed) {
		// Submitted (or ended) meanwhile: its archive and cleanup carry on.
		h.log.Info("parked start left meanwhile", "session", sess.ID, "err", err)
		return nil
	}
	if err != nil {
		return fmt.Errorf("provision %s: park: %w (after %w)", sess.ID, err, cause)
	}
	return nil
}

package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Expire submits every open session whose deadline has passed and
// enqueues its archive. Several workers may run it at once: the state
// machine lets only one submit win, and the archive's task id is per
// session, so the archive is enqueued once. It also re-enqueues the
// archive of every session still submitted (a submit whose enqueue
// failed, Redis having been down a moment), which the task id makes a
// no-op for the ones already queued; and likewise the current round's
// archive or cleanup of every session being archived (a restart whose
// enqueue failed).
func (h *Handlers) Expire(ctx context.Context, _ *asynq.Task) error {
	now := h.o.Now()
	ids, err := h.o.Store.DueDeadlines(ctx, now, 500)
	if err != nil {
		return err
	}
	var errs []error
	for _, id := range ids {
		// Only the run that made the move records it; a concurrent or
		// repeated sweep still (re-)enqueues the archive, which the task
		// id makes a no-op.
		_, moved, err := scheduler.Submit(ctx, h.o.Store, h.o.Enqueuer, id, session.ByDeadline, now)
		if err != nil {
			errs = append(errs, fmt.Errorf("expire %s: %w", id, err))
			continue
		}
		if moved {
			h.log.Info("deadline passed; session submitted", "session", id)
			_ = h.o.Store.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: "deadline-submit"})
		}
	}
	stragglers, err := h.o.Store.List(ctx, store.ListQuery{Status: []session.State{session.StateSubmitted, session.StateArchiving}, Sort: "updated", Limit: 500})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("expire: list submitted sessions: %w", err))...)
	}
	for _, sum := range stragglers.Sessions {
		sess, err := h.o.Store.Get(ctx, sum.ID)
		if err != nil || (sess.Status != session.StateSubmitted && sess.Status != session.StateArchiving) {
			continue
		}
		// The current round's task: an archive restarted after its worker
		// died, or the cleanup of a whole archive, whose enqueue failed.
		what, queue := "archive", h.o.Enqueuer.ArchiveRound
		round := sess.ArchiveRestarts
		if !sess.ArchivedAt.IsZero() {
			what, queue, round = "cleanup", h.o.Enqueuer.CleanupRound, sess.CleanupRestarts
		}
		if queued, err := queue(ctx, sess.ID, sess.SubmitReason, round); err != nil {
			errs = append(errs, fmt.Errorf("expire: re-enqueue %s of %s: %w", what, sess.ID, err))
		} else if queued {
			h.log.Warn("the session's "+what+" was not queued; queued it now", "session", sess.ID, "status", sess.Status, "round", round)
		}
	}
	return errors.Join(errs...)
}

// Reap removes labs that no live session owns: their record is gone, or
// the session has ended and its cleanup never ran. It also ends review
// labs past their time; a live review lab is no orphan, nor is a warm lab
// in its pool (making or ready) or one a live session claimed (its
// session's LabID, from the index). A warm lab claimed by no live
// session, or taken out of its pool, is an orphan. First it retries
// the leftovers on record (parts of ended labs the runtime kept), and
// drops each record once its part is gone.
func (h *Handlers) Reap(ctx context.Context, _ *asynq.Task) error {
	_, err := h.ReapOnce(ctx)
	return err
}

// ReapOnce runs one reaper pass and returns the lab ids it removed
// (sessions' and review labs').
func (h *Handlers) ReapOnce(ctx context.Context) ([]string, error) {
	removed, rerr := h.reapReviews(ctx)
	tried, gone, lerr := h.retryLeftovers(ctx)
	removed = append(removed, gone...)
	errs := []error{rerr, lerr}
	ids, err := h.o.Runtime.Labs(ctx)
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("reap: list labs: %w", err))...)
	}
	ended := map[string]bool{}
	for _, id := range removed {
		ended[id] = true
	}
	inUse, err := h.o.Store.LabsInUse(ctx)
	if err != nil {
		return removed, errors.Join(append(errs, fmt.Errorf("reap: %w", err))...)
	}
	for _, id := range ids {
		if tried[id] {
			continue // its leftovers were retried above
		}
		if _, ok := inUse[id]; ok {
			continue // a claimed warm lab: its session's
		}
		// A warm lab has no session record of its own either.
		if w, err := h.o.Store.WarmLab(ctx, id); err == nil {
			if w.Live() || h.claimedInUse(ctx, w) {
				continue
			}
			if kept, err := h.removeLab(ctx, id, ""); err != nil || kept > 0 {
				if err != nil {
					errs = append(errs, fmt.Errorf("reap warm lab %s: %w", id, err))
				}
				continue
			}
			if err := h.o.Store.DropWarm(ctx, id); err != nil {
				errs = append(errs, err)
			}
			removed = append(removed, id)
			h.log.Info("reaped a warm lab no one uses", "lab", id, "state", w.State, "claimed_by", w.ClaimedBy)
			continue
		} else if !errors.Is(err, store.ErrNoWarmLab) && !errors.Is(err, store.ErrBadID) {
			errs = append(errs, err)
			continue
		}
		// A review lab has no session record of its own: its record
		// says whether it is live.
		rv, err := h.o.Store.Review(ctx, id)
		if err == nil {
			if rv.Status.Live() || ended[id] {
				continue
			}
			if kept, err := h.removeLab(ctx, id, ""); err != nil || kept > 0 {
				if err != nil {
					errs = append(errs, fmt.Errorf("reap review lab %s: %w", id, err))
				}
				continue
			}
			removed = append(removed, id)
			h.log.Info("reaped the lab of an ended review lab", "review", id)
			continue
		}
		if !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrBadID) {
			errs = append(errs, err)
			continue
		}
		sess, err := h.o.Store.Get(ctx, id)
		orphan := errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrBadID)
		if err != nil && !orphan {
			errs = append(errs, err)
			continue
		}
		if !orphan && !sess.Status.Terminal() {
			continue
		}
		auditTo := ""
		if !orphan {
			auditTo = id
		}
		if kept, err := h.removeLab(ctx, id, auditTo); err != nil || kept > 0 {
			if err != nil {
				errs = append(errs, fmt.Errorf("reap %s: %w", id, err))
			}
			continue
		}
		removed = append(removed, id)
		h.log.Info("reaped orphan lab", "session", id)
	}
	return removed, errors.Join(errs...)
}

// Admission is the admission sweep (scheduler.Repair): the queue and its
// slots are brought in line with the session records, admissions a
// killed process left unrecorded are rolled forward, and free slots go to
// the heads of the lines. It is what makes a worker or API process killed
// mid-admission lose no candidate and no slot.
func (h *Handlers) Admission(ctx context.Context, _ *asynq.Task) error {
	// A hold for parked starts first (scheduler.Unhold), so that the pass
	// below admits them once the runtime answers or room came back.
	lifted, herr := scheduler.Unhold(ctx, h.o.Store, h.o.Runtime.Ping, h.o.Now())
	if herr != nil {
		h.log.Warn("admission hold", "err", herr)
	} else if lifted != "" {
		h.log.Info("admission hold lifted", "how", lifted)
	}
	rep, admitted, err := scheduler.Repair(ctx, h.o.Store, h.o.Enqueuer, h.o.Now())
	if len(rep.Fixed) > 0 || len(rep.Unrecorded) > 0 {
		h.log.Warn("admission queue repaired from the records", "fixed", rep.Fixed, "unrecorded_admissions", rep.Unrecorded)
	}
	if len(admitted) > 0 {
		h.log.Info("admitted from the queue", "sessions", admitted)
	}
	return errors.Join(herr, err)
}

// Retention deletes ended sessions older than the retention policy.
func (h *Handlers) Retention(ctx context.Context, _ *asynq.Task) error {
	if h.o.RetentionDays <= 0 {
		return nil
	}
	_, err := h.RetentionOnce(ctx, h.o.RetentionDays, h.o.RetentionDryRun)
	return err
}

// RetentionOnce deletes (or, with dryRun, only lists) ended sessions last
// updated more than days ago.
func (h *Handlers) RetentionOnce(ctx context.Context, days int, dryRun bool) ([]store.Summary, error) {
	cutoff := h.o.Now().Add(-time.Duration(days) * 24 * time.Hour)
	victims, err := h.o.Store.EndedBefore(ctx, cutoff)
	if err != nil {
		return nil, err
	}
	if dryRun {
		for _, v := range victims {
			h.log.Info("retention would delete", "session", v.ID, "updated", v.UpdatedAt)
		}
		return victims, nil
	}
	var errs []error
	for _, v := range victims {
		sess, err := h.o.Store.Get(ctx, v.ID)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := h.o.Runtime.Destroy(ctx, sess.Lab()); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := h.o.Store.Delete(ctx, sess); err != nil {
			errs = append(errs, err)
			continue
		}
		h.log.Info("retention deleted session", "session", v.ID)
	}
	return victims, errors.Join(errs...)
}

// claimGrace is how long a claimed warm lab is taken for its session's
// even when the session's record does not name it yet: the claim and the
// record are two steps (scheduler.Admit), and the admission sweep rolls a
// claim forward whose process died in between.
const claimGrace = 2 * time.Minute

// claimedInUse reports whether a claimed warm lab is, or is about to be,
// its session's: the session's record names it and has not ended, or the
// claim is too recent for the record to be trusted.
func (h *Handlers) claimedInUse(ctx context.Context, w *store.WarmLab) bool {
	if w.State != store.WarmClaimed {
		return false
	}
	if h.o.Now().Sub(w.ClaimedAt) < claimGrace {
		return true
	}
	sess, err := h.o.Store.Get(ctx, w.ClaimedBy)
	if err != nil {
		// Gone for good is an orphan; a read that failed is not proof.
		return !errors.Is(err, store.ErrNotFound) && !errors.Is(err, store.ErrBadID)
	}
	return sess.LabID == w.ID && !sess.Status.Terminal()
}

package scheduler

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Admission: a started session waits in its sitting's line (queued) until
// a lab slot is free — under the sitting's capacity and the deployment's
// EXAMLAB_MAX_LABS — and is then admitted (provisioning) and its
// provision enqueued. The slot stays the session's until its lab is
// removed (Cleanup) or its provision fails for good; then Release gives
// it to the head of the line. The decisions are atomic in Redis (see
// store/queue.go); this file turns them into transitions and tasks, and
// the admission sweep (Repair) finishes whatever a dead process left half
// done.

// ErrNotQueuedForAdmission: an admin admitted or removed a session that is
// not waiting in the queue.
var ErrNotQueuedForAdmission = errors.New("the session is not waiting in the queue")

// Admit runs admission passes until no slot is free or no one waits: each
// session given a slot is recorded admitted and its provision enqueued.
// It returns the sessions it admitted. A session that left the queue
// while its slot was given (submitted, removed) gives the slot straight
// back and the pass runs again. What fails here — a record or an enqueue
// — the admission sweep rolls forward.
func Admit(ctx context.Context, st *store.Store, q provisionQueue, now time.Time) ([]string, error) {
	var admitted []string
	var errs []error
	for {
		adm, err := st.AdmitNext(ctx)
		if err != nil {
			return admitted, errors.Join(append(errs, err)...)
		}
		returned := 0
		for _, a := range adm {
			ok, err := admitOne(ctx, st, q, a.SessionID, a.WarmLab, now)
			if err != nil {
				errs = append(errs, err)
			}
			if ok {
				admitted = append(admitted, a.SessionID)
			} else if err == nil {
				returned++
			}
		}
		if returned == 0 {
			return admitted, errors.Join(errs...)
		}
	}
}

// admitOne records the admission of a session that was given a slot and
// enqueues its provision. A session that claimed a warm lab with its slot
// (warmLab) is recorded admitted and ready in one step, in the lab made
// for it ahead of time, and no provision is queued: its clock starts now.
// A session no longer queued gives the slot back (ok false), and a warm
// lab it claimed is destroyed by the reaper (claimed by no live session).
// Both steps are idempotent, so the sweep may repeat them.
func admitOne(ctx context.Context, st *store.Store, q provisionQueue, id, warmLab string, now time.Time) (ok bool, err error) {
	var warm *store.WarmLab
	if warmLab != "" {
		if warm, err = st.WarmLab(ctx, warmLab); err != nil {
			// Without its record the lab cannot be used: the session's
			// lab is made as if there were no pool.
			warm = nil
		}
	}
	resumed := false
	sess, err := st.Update(ctx, id, func(x *session.Session) error {
		resumed = x.Parked()
		if err := x.Admit(now); err != nil {
			return err
		}
		if warm == nil || x.Status != session.StateProvisioning || x.Attempts > 0 {
			return nil
		}
		x.LabID = warm.ID
		x.Nodes = warm.Nodes
		return x.MarkReady(now)
	})
	if errors.Is(err, session.ErrNotAllowed) || errors.Is(err, store.ErrNotFound) {
		if _, err := st.ReleaseSlot(ctx, id); err != nil {
			return false, fmt.Errorf("admit %s: give the slot back: %w", id, err)
		}
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("admit %s: %w", id, err)
	}
	if resumed {
		_ = st.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: "resumed", Detail: map[string]any{"parks": sess.Parks}})
	}
	if warm != nil && sess.LabID == warm.ID {
		_ = st.Audit(ctx, id, store.AuditEntry{Actor: "scheduler", Action: "warm-claimed", Detail: map[string]any{"lab_id": warm.ID, "ready_since": warm.ReadyAt}})
		if r, ok := q.(warmRefiller); ok {
			_, _ = r.WarmRefill(context.WithoutCancel(ctx))
		}
		return true, nil
	}
	if sess.Status != session.StateProvisioning {
		return true, nil
	}
	if _, err := q.Provision(ctx, sess.ID, sess.ProvisionRound()); err != nil {
		return true, fmt.Errorf("admit %s: %w: %w", id, ErrNotQueued, err)
	}
	return true, nil
}

// Release gives a session's slot back — its lab is gone, or it will never
// have one — and admits whoever is next. Releasing twice changes nothing.
func Release(ctx context.Context, st *store.Store, q provisionQueue, id string, now time.Time) error {
	if _, err := st.ReleaseSlot(ctx, id); err != nil {
		return err
	}
	_, err := Admit(ctx, st, q, now)
	return err
}

// AdmitNow admits a queued session at once, beyond its sitting's capacity
// and the deployment's limit: an admin's decision. A session admitted
// already is returned as it is.
func AdmitNow(ctx context.Context, st *store.Store, q provisionQueue, id string, now time.Time) (*session.Session, error) {
	sess, err := st.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	switch sess.Status {
	case session.StateQueued:
	case session.StateProvisioning:
		return sess, nil
	default:
		return nil, fmt.Errorf("admit %s: it is %s: %w", id, sess.Status, ErrNotQueuedForAdmission)
	}
	if err := st.TakeSlot(ctx, sess); err != nil {
		return nil, err
	}
	ok, err := admitOne(ctx, st, q, id, "", now)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, fmt.Errorf("admit %s: it left the queue meanwhile: %w", id, ErrNotQueuedForAdmission)
	}
	return st.Get(ctx, id)
}

// Withdraw takes a queued session out of the queue on an admin's word. The
// session fails with the reason rather than going back to created: the
// lifecycle only moves forward, the record says why the candidate got no
// lab, and the admin's reset of the roster entry gives them a fresh
// session should they come back.
func Withdraw(ctx context.Context, st *store.Store, id, reason string, now time.Time) (*session.Session, error) {
	msg := "removed from the queue by the exam staff"
	if reason != "" {
		msg += ": " + reason
	}
	sess, err := st.Update(ctx, id, func(x *session.Session) error {
		if x.Status != session.StateQueued {
			return fmt.Errorf("remove %s from the queue: it is %s: %w", id, x.Status, ErrNotQueuedForAdmission)
		}
		return x.Fail(msg, now)
	})
	if err != nil {
		return nil, err
	}
	if _, err := st.ReleaseSlot(ctx, id); err != nil {
		return sess, err
	}
	return sess, nil
}

// Repair is the admission sweep: it brings the queue and slot keys in
// line with the session records (store.RepairQueue), rolls forward
// admissions a dead process gave a slot but did not record, enqueues again
// the provision of every admitted session still provisioning (a no-op
// while it is queued or running: the task id), and runs an admission pass
// for the slots that came free. It returns what the repair found and whom
// it admitted.
func Repair(ctx context.Context, st *store.Store, q provisionQueue, now time.Time) (store.QueueRepair, []string, error) {
	rep, err := st.RepairQueue(ctx)
	errs := []error{err}
	var admitted []string
	for _, id := range rep.Unrecorded {
		// A pass that claimed a warm lab for it and died left the claim
		// on record: the admission rolls forward into that lab.
		warm, err := st.WarmClaimOf(ctx, id)
		errs = append(errs, err)
		ok, err := admitOne(ctx, st, q, id, warm, now)
		errs = append(errs, err)
		if ok {
			admitted = append(admitted, id)
		}
	}
	for _, id := range rep.Provisioning {
		sess, err := st.Get(ctx, id)
		if err != nil {
			errs = append(errs, fmt.Errorf("re-enqueue provision of %s: %w", id, err))
			continue
		}
		if _, err := q.Provision(ctx, id, sess.ProvisionRound()); err != nil {
			errs = append(errs, fmt.Errorf("re-enqueue provision of %s: %w", id, err))
		}
	}
	more, err := Admit(ctx, st, q, now)
	return rep, append(admitted, more...), errors.Join(append(errs, err)...)
}

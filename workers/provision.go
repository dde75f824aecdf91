package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// Provision brings an admitted session's lab up and marks the session
// ready. The runtime's Provision is idempotent, so a rerun after a crash
// reuses what the first run created and starts what it did not. A
// provision that fails for good gives the session's slot back. One that
// finds no room (lab.ErrNoCapacity) or no runtime (lab.ErrUnavailable)
// parks the start at once (scheduler.Park) rather than retrying. While it
// works it holds the session's provision lease: should its worker die,
// another worker's sweep restarts the provision in a new round within
// seconds (scheduler.RestartProvision), and this task, when the queue
// runs it again, is of an earlier round and does nothing.
func (h *Handlers) Provision(ctx context.Context, t *asynq.Task) error {
	p, sess, err := h.session(ctx, t)
	if err != nil {
		return err
	}
	switch sess.Status {
	case session.StateProvisioning:
		if p.Round != sess.ProvisionRound() {
			// A provision of an admission before a park, or of a worker
			// that stopped: the session's current one is its own task.
			h.log.Info("provision skipped: an earlier round", "session", p.SessionID, "round", p.Round, "current", sess.ProvisionRound())
			return nil
		}
	case session.StateReady:
		return nil // a duplicate run after success
	case session.StateCreated, session.StateQueued:
		// Not admitted: it holds no slot, so no lab may start for it.
		h.log.Warn("provision skipped: session not admitted", "session", p.SessionID, "status", sess.Status)
		return nil
	default:
		// Submitted or ended while queued: there is nothing to bring up.
		h.log.Info("provision skipped", "session", p.SessionID, "status", sess.Status)
		return nil
	}
	spec, err := h.spec(sess)
	if err != nil {
		// The session's exam is gone (or its lab cannot be rendered): no
		// attempt will ever succeed, so it fails now rather than holding
		// its slot until an admin notices.
		h.failForGood(ctx, sess.ID, "the lab for this exam cannot be prepared; ask the exam staff", err)
		return err
	}
	// The lease tells the other workers this run is alive; should this
	// process die, they restart the provision in seconds (RestartOnce).
	wctx, lease, release, err := h.holdLease(ctx, scheduler.LeaseProvision, sess.ID, p.Round)
	if errors.Is(err, errSuperseded) {
		h.log.Info("provision skipped: a later round runs", "session", sess.ID, "round", p.Round)
		return nil
	}
	if err != nil {
		return fmt.Errorf("provision %s: %w", p.SessionID, err)
	}
	defer release()
	err = h.provision(wctx, lease, p, sess, spec)
	if superseded(wctx) {
		// This run's worker was taken for gone (its lease ran out): the
		// provision runs again in a later round, which owns the session.
		h.log.Warn("provision superseded by a later round", "session", sess.ID, "round", p.Round, "err", err)
		return nil
	}
	return err
}

// provision is one attempt of the provision of the session's lab, in
// round p.Round, while the run holds lease. ctx ends when the lease is
// taken over; nothing is recorded of a round the session has left.
func (h *Handlers) provision(ctx context.Context, lease *store.Lease, p scheduler.SessionPayload, sess *session.Session, spec lab.Spec) error {
	current := func(s *session.Session) error {
		if s.ProvisionRound() != p.Round {
			return errSuperseded
		}
		return nil
	}
	sess, err := h.o.Store.Update(ctx, sess.ID, func(s *session.Session) error {
		if err := current(s); err != nil {
			return err
		}
		return s.BeginProvision()
	})
	if errors.Is(err, errSuperseded) {
		h.log.Info("provision skipped: an earlier round", "session", p.SessionID, "round", p.Round)
		return nil
	}
	if err != nil {
		return fmt.Errorf("provision %s: %w", p.SessionID, err)
	}

	start := h.o.Now()
	pctx, cancel := context.WithTimeout(ctx, h.o.ProvisionTimeout)
	defer cancel()
	// The page shows the nodes come up one by one from the progress; the
	// record has them once the attempt is over, whatever its outcome.
	defer h.clearProgress(ctx, sess.ID)
	stop := h.watchProgress(ctx, spec)
	perr := h.o.Runtime.Provision(pctx, spec)
	stop()
	if superseded(ctx) {
		return perr
	}
	if reason := parkReason(perr); reason != "" {
		// No room or no runtime: asking for the nodes' states would only
		// wait on the same runtime again. Parking may remove the lab: only
		// a run that still holds its lease does (a later round may be
		// building the same lab).
		if errors.Is(fence(ctx, lease), errSuperseded) {
			return nil
		}
		h.o.Observer.Provisioned(h.o.Now().Sub(start), false)
		return h.park(ctx, sess, reason, perr)
	}
	nodes, serr := h.o.Runtime.Status(ctx, spec)
	if perr == nil && serr == nil && !lab.AllRunning(nodes) {
		perr = errors.New("not every node is running")
	}
	if perr != nil {
		h.o.Observer.Provisioned(h.o.Now().Sub(start), false)
		final := lastAttempt(ctx) || errors.Is(perr, asynq.SkipRetry)
		h.log.Warn("provision attempt failed", "session", sess.ID, "attempt", sess.Attempts, "final", final, "err", perr)
		_, uerr := h.o.Store.Update(context.WithoutCancel(ctx), sess.ID, func(s *session.Session) error {
			if err := current(s); err != nil {
				return err
			}
			if serr == nil {
				s.Nodes = nodes
			}
			s.ProvisionFailed(perr.Error(), final, h.o.Now())
			return nil
		})
		if errors.Is(uerr, errSuperseded) {
			// A later round owns the session and its lab: nothing of this
			// attempt may fail it or take its lab down.
			return nil
		}
		if final {
			// A lab that will never be used must not linger, nor its slot
			// stay taken. (Had the session been submitted meanwhile, its
			// archive and cleanup end it and give the slot back.)
			bg := context.WithoutCancel(ctx)
			if derr := h.o.Runtime.Destroy(bg, sess.Lab()); derr != nil {
				h.log.Warn("destroy failed lab", "session", sess.ID, "err", derr)
			}
			if cur, gerr := h.o.Store.Get(bg, sess.ID); gerr == nil && cur.Status.Terminal() {
				if rerr := scheduler.Release(bg, h.o.Store, h.o.Enqueuer, sess.ID, h.o.Now()); rerr != nil {
					h.log.Warn("give back the slot of a failed lab; the admission sweep will", "session", sess.ID, "err", rerr)
				}
			}
			return fmt.Errorf("provision %s: %w: %w", sess.ID, perr, asynq.SkipRetry)
		}
		return errors.Join(fmt.Errorf("provision %s: %w", sess.ID, perr), uerr)
	}
	if serr != nil {
		return fmt.Errorf("provision %s: status: %w", sess.ID, serr)
	}

	now := h.o.Now().UTC()
	_, err = h.o.Store.Update(ctx, sess.ID, func(s *session.Session) error {
		if err := current(s); err != nil {
			return err // a later round owns the record's nodes and readiness
		}
		s.Nodes = nodes
		if s.Status != session.StateProvisioning {
			// Submitted while we worked; archive will take the lab down.
			return nil
		}
		// The clock starts now, when the lab is usable, not when the
		// candidate pressed start: slow provisioning costs them nothing.
		return s.MarkReady(now)
	})
	if errors.Is(err, errSuperseded) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("provision %s: mark ready: %w", sess.ID, err)
	}
	h.o.Observer.Provisioned(h.o.Now().Sub(start), true)
	h.log.Info("lab ready", "session", sess.ID, "took", h.o.Now().Sub(start).Round(time.Millisecond))
	if err := scheduler.LabReady(ctx, h.o.Store, h.o.Enqueuer, sess.ID, h.o.Now()); err != nil {
		// The admission sweep ends the probe from the record.
		h.log.Warn("open admission after a probe's lab came up; the admission sweep will", "session", sess.ID, "err", err)
	}
	return nil
}

// ResetNode replaces one node of a live lab with a fresh container.
func (h *Handlers) ResetNode(ctx context.Context, t *asynq.Task) error {
	p, sess, err := h.session(ctx, t)
	if err != nil {
		return err
	}
	if sess.Status != session.StateReady {
		return fmt.Errorf("reset %s/%s: session is %s: %w", sess.ID, p.Node, sess.Status, asynq.SkipRetry)
	}
	spec, err := h.spec(sess)
	if err != nil {
		return err
	}
	if _, ok := spec.Node(p.Node); !ok {
		return fmt.Errorf("reset %s/%s: no such node: %w", sess.ID, p.Node, asynq.SkipRetry)
	}
	defer h.clearProgress(ctx, sess.Lab())
	stop := h.watchProgress(ctx, spec)
	err = h.o.Runtime.ResetNode(ctx, spec, p.Node)
	stop()
	if err != nil {
		return fmt.Errorf("reset %s/%s: %w", sess.ID, p.Node, err)
	}
	nodes, err := h.o.Runtime.Status(ctx, spec)
	if err == nil {
		_, err = h.o.Store.Update(ctx, sess.ID, func(s *session.Session) error { s.Nodes = nodes; return nil })
	}
	if err != nil {
		return fmt.Errorf("reset %s/%s: record status: %w", sess.ID, p.Node, err)
	}
	return h.o.Store.Audit(ctx, sess.ID, store.AuditEntry{Actor: "worker", Action: "node-reset-done", Detail: map[string]any{"node": p.Node}})
}

// failForGood ends a session whose provision can never succeed, with a
// reason in plain words (the cause goes to the log), and gives its slot
// back.
func (h *Handlers) failForGood(ctx context.Context, id, reason string, cause error) {
	bg := context.WithoutCancel(ctx)
	h.log.Error("provision can never succeed; session failed", "session", id, "err", cause)
	if _, err := h.o.Store.Update(bg, id, func(s *session.Session) error { return s.Fail(reason, h.o.Now()) }); err != nil {
		h.log.Warn("mark session failed", "session", id, "err", err)
		return
	}
	if err := scheduler.Release(bg, h.o.Store, h.o.Enqueuer, id, h.o.Now()); err != nil {
		h.log.Warn("give back the slot of a failed session; the admission sweep will", "session", id, "err", err)
	}
}

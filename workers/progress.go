package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// The API never asks the runtime how a lab's nodes are: under a herd of
// labs starting at once the engine answers slowly, and every candidate's
// page would wait on it. The workers, who change labs, tell instead:
// while a lab changes they leave its node states in the store as progress
// (watchProgress), when the change is over they write them into the
// record, and the lost-lab sweep keeps the record's nodes of every live
// lab in step with the runtime (syncNodes, syncReviews).

// progressPutTimeout bounds one write of progress.
const progressPutTimeout = 2 * time.Second

// watchProgress reads the lab's node states at once and then every
// Options.ProgressEvery, each read bounded, and leaves them in the store
// for the API (store.PutProgress). stop ends the watch and waits for it,
// so that no progress is written after it returns: the caller writes the
// record's nodes next, then clears the progress (clearProgress).
func (h *Handlers) watchProgress(ctx context.Context, spec lab.Spec) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(h.o.ProgressEvery)
		defer tick.Stop()
		for {
			sctx, scancel := context.WithTimeout(ctx, statusTimeout)
			nodes, err := h.o.Runtime.Status(sctx, spec)
			scancel()
			if err == nil && ctx.Err() == nil {
				// Not cancelled halfway by stop: a write cut off on the
				// wire could land after the caller's clear.
				pctx, pcancel := context.WithTimeout(context.WithoutCancel(ctx), progressPutTimeout)
				if err := h.o.Store.PutProgress(pctx, spec.SessionID, nodes); err != nil {
					h.log.Debug("node progress not recorded", "lab", spec.SessionID, "err", err)
				}
				pcancel()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// clearProgress forgets a lab's progress once its record holds the
// nodes. A clear that fails is harmless: the API prefers a record written
// after the progress, and the key expires.
func (h *Handlers) clearProgress(ctx context.Context, id string) {
	if err := h.o.Store.ClearProgress(context.WithoutCancel(ctx), id); err != nil {
		h.log.Warn("clear node progress", "lab", id, "err", err)
	}
}

// sameNodes reports whether two readings of a lab's nodes tell the same.
// Events alone are not worth a write of the record.
func sameNodes(a, b []lab.NodeStatus) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		x, y := a[i], b[i]
		if x.Name != y.Name || x.Container != y.Container || x.State != y.State || x.Detail != y.Detail ||
			x.IP != y.IP || !x.StartedAt.Equal(y.StartedAt) || x.AllocID != y.AllocID || x.ClientNode != y.ClientNode {
			return false
		}
	}
	return true
}

// syncNodes writes a ready session's node states into its record when
// they changed (a node stopped, crashed or came back), so that the API,
// which reads only the record, shows them. nodes are the lab's states
// when the sweep read them; a sweep that read only the lab's health (v)
// reads them when the health and the record disagree. A paused clock's
// nodes belong to pauseClock and credit. listed is the record's UpdatedAt
// when the sweep listed it, before it read the runtime: a record written
// since (a node reset's fresh nodes) may be newer than what the sweep
// read, and is left to the next sweep.
func (h *Handlers) syncNodes(ctx context.Context, id string, listed time.Time, v lab.NodeStatus, nodes []lab.NodeStatus) error {
	sess, err := h.o.Store.Get(ctx, id)
	if err != nil {
		return fmt.Errorf("sync nodes of %s: %w", id, err)
	}
	if sess.Status != session.StateReady || sess.Paused() {
		return nil
	}
	if nodes == nil {
		if v.State == lab.StateRunning && lab.AllRunning(sess.Nodes) {
			return nil
		}
		spec, err := h.spec(sess)
		if err != nil {
			return err
		}
		sctx, cancel := context.WithTimeout(ctx, statusTimeout)
		nodes, err = h.o.Runtime.Status(sctx, spec)
		cancel()
		if err != nil {
			return fmt.Errorf("sync nodes of %s: status: %w", id, err)
		}
	}
	if sameNodes(sess.Nodes, nodes) {
		return nil
	}
	_, err = h.o.Store.Update(ctx, id, func(x *session.Session) error {
		if x.Status != session.StateReady || x.Paused() || !x.UpdatedAt.Equal(listed) || sameNodes(x.Nodes, nodes) {
			return errUnchanged
		}
		x.Nodes = nodes
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return fmt.Errorf("sync nodes of %s: %w", id, err)
	}
	return nil
}

// syncReviews does for ready review labs what syncNodes does for
// sessions: their records' nodes follow the runtime.
func (h *Handlers) syncReviews(ctx context.Context) error {
	live, err := h.o.Store.LiveReviews(ctx)
	if err != nil {
		return fmt.Errorf("sync review labs: %w", err)
	}
	var errs []error
	for _, rv := range live {
		if rv.Status != store.ReviewReady {
			continue // coming up: its worker shows progress
		}
		if err := h.syncReview(ctx, rv); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (h *Handlers) syncReview(ctx context.Context, rv *store.Review) error {
	sess, err := h.o.Store.Get(ctx, rv.SessionID)
	if err != nil {
		return fmt.Errorf("sync review lab %s: %w", rv.ID, err)
	}
	ex, ok := h.o.Exams(sess.ExamID)
	if !ok {
		return nil
	}
	spec, err := ReviewSpec(ex, rv, sess)
	if err != nil {
		return fmt.Errorf("sync review lab %s: %w", rv.ID, err)
	}
	sctx, cancel := context.WithTimeout(ctx, statusTimeout)
	nodes, err := h.o.Runtime.Status(sctx, spec)
	cancel()
	if err != nil {
		return fmt.Errorf("sync review lab %s: status: %w", rv.ID, err)
	}
	if sameNodes(rv.Nodes, nodes) {
		return nil
	}
	_, err = h.o.Store.UpdateReview(ctx, rv.ID, func(r *store.Review) error {
		if r.Status != store.ReviewReady || sameNodes(r.Nodes, nodes) {
			return errUnchanged
		}
		r.Nodes = nodes
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) {
		return fmt.Errorf("sync review lab %s: %w", rv.ID, err)
	}
	return nil
}

package workers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/examlab/examlab/lab"
	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/sitting"
	"github.com/examlab/examlab/store"
)

// warmQueue queues the provision of a warm lab (scheduler.Enqueuer).
type warmQueue interface {
	WarmProvision(ctx context.Context, labID string) (bool, error)
}

// WarmRefillReport is what one refill pass did.
type WarmRefillReport struct {
	// Made are the warm labs it took a slot for and queued.
	Made []string
	// Retired are the labs it took out of a pool, with why.
	Retired map[string]string
	// Checked are the ready labs whose nodes it asked the runtime about.
	Checked []string
	// Unchecked are the labs whose check got no answer from the runtime:
	// they stay in the pool, and are checked again at the next interval.
	// After the first, the pass asks the runtime about no further lab.
	Unchecked []string
}

// warmStuckAfter is how long a making warm lab may go without progress
// (its provision touching it) before the refill replaces it: its worker
// is taken for gone.
func (h *Handlers) warmStuckAfter() time.Duration { return h.o.ProvisionTimeout + time.Minute }

// WarmRefill is the refill sweep of the warm pools (scheduler.TypeWarmRefill).
func (h *Handlers) WarmRefill(ctx context.Context, _ *asynq.Task) error {
	_, err := h.WarmRefillOnce(ctx)
	return err
}

// WarmRefillOnce runs one refill pass over every sitting: labs of an old
// exam version, ready labs older than the sitting's warm_max_age, ready
// labs the runtime says a node of no longer runs (checkWarm, once every
// warm_check), making labs without progress, labs beyond the pool's size
// and every lab of a sitting whose window closed (or that is gone) are
// taken out of their pool and destroyed; then, inside the fill window
// (warm_lead before the window opens until it closes), each pool short of
// its size gets new labs while slots are free (store.NewWarmLab) and
// their provisions are queued. Several workers may run it at once: every step is atomic in
// Redis, and a pool never grows past its size.
func (h *Handlers) WarmRefillOnce(ctx context.Context) (WarmRefillReport, error) {
	rep := WarmRefillReport{Retired: map[string]string{}}
	all, err := h.o.Store.Sittings(ctx)
	if err != nil {
		return rep, fmt.Errorf("warm refill: %w", err)
	}
	var errs []error
	seen := map[string]bool{}
	for _, st := range all {
		seen[st.ID] = true
		errs = append(errs, h.refillSitting(ctx, st, &rep))
	}
	pools, err := h.o.Store.WarmSittings(ctx)
	if err != nil {
		errs = append(errs, err)
	}
	for _, id := range pools {
		if seen[id] {
			continue
		}
		// The sitting is gone: so is its pool.
		labs, err := h.o.Store.WarmPool(ctx, id)
		errs = append(errs, err)
		for _, w := range labs {
			errs = append(errs, h.retireWarm(ctx, w.ID, "", "the sitting is gone", &rep))
		}
	}
	if len(rep.Made) > 0 || len(rep.Retired) > 0 {
		h.log.Info("warm pools refilled", "made", rep.Made, "retired", rep.Retired)
	}
	return rep, errors.Join(errs...)
}

func (h *Handlers) refillSitting(ctx context.Context, st *sitting.Sitting, rep *WarmRefillReport) error {
	labs, err := h.o.Store.WarmPool(ctx, st.ID)
	if err != nil {
		return err
	}
	if st.Warm == 0 && len(labs) == 0 {
		return nil
	}
	now := h.o.Now()
	version := ""
	if ex, ok := h.o.Exams(st.ExamID); ok {
		version = ex.Fingerprint()
	}
	filling := st.WarmFilling(now) && version != ""
	var errs []error
	keep := 0
	for _, w := range labs {
		reason, why := "", ""
		switch {
		case !filling:
			why = "the sitting's pool is not filling (its window closed, or warm is 0)"
		case w.Version != version:
			reason, why = store.WarmReplacedOldVersion, "the exam changed (version "+w.Version+", now "+version+")"
		case w.State == store.WarmReady && now.Sub(w.ReadyAt) > st.WarmMaxAge():
			reason, why = store.WarmReplacedTooOld, "ready for longer than warm_max_age ("+st.WarmMaxAge().String()+")"
		case w.State == store.WarmMaking && now.Sub(w.TouchedAt) > h.warmStuckAfter():
			reason, why = store.WarmReplacedStuck, "its provision made no progress for "+h.warmStuckAfter().String()
		case keep >= st.Warm:
			why = "the pool is larger than warm"
		case w.State == store.WarmReady:
			broken, err := h.checkWarm(ctx, st, w, rep)
			errs = append(errs, err)
			if len(broken) > 0 {
				reason, why = store.WarmReplacedBroken, "a node stopped running while it waited: "+nodeStates(broken)
			}
		}
		if why != "" {
			err := h.retireWarm(ctx, w.ID, reason, why, rep)
			errs = append(errs, err)
			if reason == store.WarmReplacedBroken {
				if _, retired := rep.Retired[w.ID]; retired {
					h.auditBroken(ctx, st.ID, w.ID, why)
				} else if err == nil {
					// Claimed between the check and the removal: the
					// lost-lab sweep finds it in its session.
					h.log.Warn("a broken warm lab was claimed before it could be replaced", "lab", w.ID, "why", why)
				}
			}
			continue
		}
		keep++
		if w.State == store.WarmMaking {
			// Queued again in case the process that made it died before it
			// queued the provision; the task id makes it a no-op otherwise.
			errs = append(errs, h.queueWarm(ctx, w.ID))
		}
	}
	if !filling {
		return errors.Join(errs...)
	}
	for keep < st.Warm {
		id, made, err := h.o.Store.NewWarmLab(ctx, st.ID, st.ExamID, version, st.Capacity, st.Warm)
		if err != nil {
			errs = append(errs, err)
			break
		}
		if !made {
			break // the pool is full, or no slot is free: the pool fills up to what is free
		}
		keep++
		rep.Made = append(rep.Made, id)
		if err := h.queueWarm(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (h *Handlers) queueWarm(ctx context.Context, id string) error {
	q, ok := h.o.Enqueuer.(warmQueue)
	if !ok {
		return nil // a queue that runs no warm provisions (tests): the lab waits as making
	}
	if _, err := q.WarmProvision(ctx, id); err != nil {
		return fmt.Errorf("queue warm lab %s: %w", id, err)
	}
	return nil
}

// checkWarm asks the runtime whether every node of a ready warm lab
// still runs, once every warm_check across the deployment (the check is
// taken in Redis, so passes of several workers share it), and answers
// the nodes that do not: exited, missing, lost, or unknown (a host that
// stopped reporting: no lab to hand a candidate while it may not
// answer). Only the runtime's word that a node is not running counts: a
// Status call that fails or times out leaves the lab in the pool, logged,
// to be checked again at the next interval, and the pass asks about no
// further lab (the runtime is likely down for all of them).
func (h *Handlers) checkWarm(ctx context.Context, st *sitting.Sitting, w *store.WarmLab, rep *WarmRefillReport) ([]lab.NodeStatus, error) {
	if len(rep.Unchecked) > 0 {
		return nil, nil
	}
	ex, ok := h.o.Exams(w.ExamID)
	if !ok {
		return nil, nil
	}
	due, err := h.o.Store.TakeWarmCheck(ctx, w.ID, st.WarmCheck())
	if err != nil || !due {
		return nil, err
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: w.ID})
	if err != nil {
		return nil, fmt.Errorf("check warm lab %s: %w", w.ID, err)
	}
	sctx, cancel := context.WithTimeout(ctx, statusTimeout)
	nodes, err := h.o.Runtime.Status(sctx, spec)
	cancel()
	if err != nil {
		rep.Unchecked = append(rep.Unchecked, w.ID)
		h.log.Warn("warm lab check: the runtime gave no answer; the lab stays, checked again later",
			"lab", w.ID, "sitting", st.ID, "again_in", st.WarmCheck(), "err", err)
		return nil, nil
	}
	rep.Checked = append(rep.Checked, w.ID)
	if lab.AllRunning(nodes) {
		return nil, nil
	}
	var broken []lab.NodeStatus
	for _, n := range nodes {
		if n.State != lab.StateRunning {
			broken = append(broken, n)
		}
	}
	if len(broken) == 0 {
		// No node at all: nothing that runs.
		broken = []lab.NodeStatus{{Name: "every node", State: lab.StateMissing}}
	}
	return broken, nil
}

// nodeStates says which nodes are in which state, for logs and audits.
func nodeStates(nodes []lab.NodeStatus) string {
	parts := make([]string, len(nodes))
	for i, n := range nodes {
		parts[i] = n.Name + " " + string(n.State)
		if n.Detail != "" {
			parts[i] += " (" + n.Detail + ")"
		}
	}
	return strings.Join(parts, ", ")
}

// auditBroken records on the sitting's trail that a warm lab of its pool
// broke while it waited and was replaced.
func (h *Handlers) auditBroken(ctx context.Context, sittingID, labID, why string) {
	err := h.o.Store.AuditSitting(ctx, sittingID, store.AuditEntry{Actor: "worker", Action: "warm-lab-broken",
		Detail: map[string]any{"lab_id": labID, "why": why}})
	if err != nil {
		h.log.Warn("audit a broken warm lab", "lab", labID, "sitting", sittingID, "err", err)
	}
}

// retireWarm takes a warm lab out of its pool (atomically, so no claim can
// take it from then on), gives its slot back, destroys it and forgets it.
// A claimed lab is its session's and is left alone. reason (see
// store.WarmReplacedReasons; "" when nothing is replaced) is counted.
func (h *Handlers) retireWarm(ctx context.Context, id, reason, why string, rep *WarmRefillReport) error {
	removed, err := h.o.Store.RemoveWarm(ctx, id, "", reason)
	if err != nil || !removed {
		return err
	}
	if rep != nil {
		rep.Retired[id] = why
	}
	h.log.Info("warm lab retired", "lab", id, "reason", reason, "why", why)
	return h.destroyWarm(ctx, id)
}

// destroyWarm removes a warm lab taken out of its pool and, once nothing
// of it is left, its record; what the runtime keeps the reaper retries.
func (h *Handlers) destroyWarm(ctx context.Context, id string) error {
	kept, err := h.removeLab(ctx, id, "")
	if err != nil || kept > 0 {
		return err
	}
	return h.o.Store.DropWarm(ctx, id)
}

// WarmProvision brings a making warm lab up (scheduler.TypeWarmProvision):
// the exam's lab under the warm lab's id, for no candidate yet. Once every
// node runs it joins its sitting's READY set, and an admission pass runs
// for anyone waiting. A lab taken out of the pool meanwhile is destroyed
// instead. A provision that fails for good, or finds no room, retires the
// lab: its slot goes back and the refill makes another.
func (h *Handlers) WarmProvision(ctx context.Context, t *asynq.Task) error {
	p, err := scheduler.ParseWarmPayload(t)
	if err != nil {
		return err
	}
	w, err := h.o.Store.WarmLab(ctx, p.LabID)
	if errors.Is(err, store.ErrNoWarmLab) || errors.Is(err, store.ErrBadID) {
		return nil // retired and forgotten already
	}
	if err != nil {
		return fmt.Errorf("warm provision %s: %w", p.LabID, err)
	}
	if w.State != store.WarmMaking {
		return nil // ready already, or claimed, or retired
	}
	ex, ok := h.o.Exams(w.ExamID)
	if !ok || ex.Fingerprint() != w.Version {
		return h.retireWarm(ctx, w.ID, store.WarmReplacedOldVersion, "the exam changed before the lab was made", nil)
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: w.ID})
	if err != nil {
		_ = h.retireWarm(ctx, w.ID, store.WarmReplacedFailed, "the lab cannot be rendered: "+err.Error(), nil)
		return fmt.Errorf("warm provision %s: %w: %w", w.ID, err, asynq.SkipRetry)
	}
	if err := h.o.Store.TouchWarm(ctx, w.ID); err != nil {
		return err
	}
	start := h.o.Now()
	pctx, cancel := context.WithTimeout(ctx, h.o.ProvisionTimeout)
	perr := h.o.Runtime.Provision(pctx, spec)
	cancel()
	var nodes []lab.NodeStatus
	if perr == nil {
		if nodes, perr = h.o.Runtime.Status(ctx, spec); perr == nil && !lab.AllRunning(nodes) {
			perr = errors.New("not every node is running")
		}
	}
	if perr != nil {
		bg := context.WithoutCancel(ctx)
		switch {
		case parkReason(perr) != "":
			// No room or no runtime: the slot goes back now, and the
			// refill tries again when there is.
			h.log.Warn("warm lab cannot start now; retired", "lab", w.ID, "err", perr)
			return h.retireWarm(bg, w.ID, "", "the runtime had no room or did not answer", nil)
		case lastAttempt(ctx) || errors.Is(perr, asynq.SkipRetry):
			_ = h.retireWarm(bg, w.ID, store.WarmReplacedFailed, "its provision failed: "+perr.Error(), nil)
			return fmt.Errorf("warm provision %s: %w: %w", w.ID, perr, asynq.SkipRetry)
		}
		_ = h.o.Store.TouchWarm(bg, w.ID)
		return fmt.Errorf("warm provision %s: %w", w.ID, perr)
	}
	ready, err := h.o.Store.WarmReady(ctx, w.ID, nodes)
	if err != nil {
		return fmt.Errorf("warm provision %s: %w", w.ID, err)
	}
	if !ready {
		// Retired while it came up: what was made goes too.
		h.log.Info("warm lab retired while it came up; removed", "lab", w.ID)
		return h.destroyWarm(ctx, w.ID)
	}
	h.log.Info("warm lab ready", "lab", w.ID, "sitting", w.SittingID, "took", h.o.Now().Sub(start).Round(time.Millisecond))
	// Someone may wait in the sitting's line (the lab came up after a
	// start found the pool empty): they claim it now.
	if _, err := scheduler.Admit(ctx, h.o.Store, h.o.Enqueuer, h.o.Now()); err != nil {
		h.log.Warn("admission after a warm lab came up; the admission sweep will", "lab", w.ID, "err", err)
	}
	return nil
}

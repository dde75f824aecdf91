package workers

import (
	"context"
	"errors"
	"fmt"
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
// exam version, ready labs older than the sitting's warm_max_age, making
// labs without progress, labs beyond the pool's size and every lab of a
// sitting whose window closed (or that is gone) are taken out of their
// pool and destroyed; then, inside the fill window (warm_lead before the
// window opens until it closes), each pool short of its size gets new
// labs while slots are free (store.NewWarmLab) and their provisions are
// queued. Several workers may run it at once: every step is atomic in
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
			errs = append(errs, h.retireWarm(ctx, w.ID, "the sitting is gone", &rep))
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
		why := ""
		switch {
		case !filling:
			why = "the sitting's pool is not filling (its window closed, or warm is 0)"
		case w.Version != version:
			why = "the exam changed (version " + w.Version + ", now " + version + ")"
		case w.State == store.WarmReady && now.Sub(w.ReadyAt) > st.WarmMaxAge():
			why = "ready for longer than warm_max_age (" + st.WarmMaxAge().String() + ")"
		case w.State == store.WarmMaking && now.Sub(w.TouchedAt) > h.warmStuckAfter():
			why = "its provision made no progress for " + h.warmStuckAfter().String()
		case keep >= st.Warm:
			why = "the pool is larger than warm"
		}
		if why != "" {
			errs = append(errs, h.retireWarm(ctx, w.ID, why, rep))
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

// retireWarm takes a warm lab out of its pool (atomically, so no claim can
// take it from then on), gives its slot back, destroys it and forgets it.
// A claimed lab is its session's and is left alone.
func (h *Handlers) retireWarm(ctx context.Context, id, why string, rep *WarmRefillReport) error {
	removed, err := h.o.Store.RemoveWarm(ctx, id, "")
	if err != nil || !removed {
		return err
	}
	if rep != nil {
		rep.Retired[id] = why
	}
	h.log.Info("warm lab retired", "lab", id, "why", why)
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
		return h.retireWarm(ctx, w.ID, "the exam changed before the lab was made", nil)
	}
	spec, err := lab.NewSpec(ex, lab.Session{ID: w.ID})
	if err != nil {
		_ = h.retireWarm(ctx, w.ID, "the lab cannot be rendered: "+err.Error(), nil)
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
			return h.retireWarm(bg, w.ID, "the runtime had no room or did not answer", nil)
		case lastAttempt(ctx) || errors.Is(perr, asynq.SkipRetry):
			_ = h.retireWarm(bg, w.ID, "its provision failed: "+perr.Error(), nil)
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

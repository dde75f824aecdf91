package workers

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/examlab/examlab/scheduler"
	"github.com/examlab/examlab/session"
	"github.com/examlab/examlab/store"
)

// errSuperseded ends a run whose lease another run took over: the session
// is in a later round, which that run carries on.
var errSuperseded = errors.New("another run of the operation took over")

// holdLease takes the session's lease for op (scheduler.LeaseProvision,
// LeaseArchive, LeaseCleanup) in round and renews it until release, in
// the background. The context it returns is cancelled, with
// errSuperseded as its cause, when a renewal finds the lease taken over.
// A renewal that cannot reach Redis keeps the run going: should the lease
// run out meanwhile, the sweep restarts the operation and this run stops
// at its next renewal (or, for writes that must not interleave with the
// new run's, at its next fence). A later round's lease is not taken: the
// error is errSuperseded then, and the run has nothing to do.
func (h *Handlers) holdLease(ctx context.Context, op, id string, round int) (context.Context, *store.Lease, func(), error) {
	l, err := h.o.Store.TakeLease(ctx, op, id, round, h.o.LeaseTTL)
	if errors.Is(err, store.ErrLaterRound) {
		// The session moved on to a later round after this run read it.
		return nil, nil, nil, fmt.Errorf("%w: %w", errSuperseded, err)
	}
	if err != nil {
		return nil, nil, nil, err
	}
	wctx, stop := h.keepRenewed(ctx, h.o.LeaseRenew, l.Renew, "work lease "+op+" of "+id)
	return wctx, l, func() {
		stop()
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer rcancel()
		if err := l.Release(rctx); err != nil {
			// It runs out by itself; the sweep then finds the session
			// past this round, or done, and only drops it.
			h.log.Warn("release work lease", "op", op, "session", id, "err", err)
		}
	}, nil
}

// fence confirms, just before a write another run of the operation must
// not interleave with (a snapshot file, the results), that l is still
// this run's, and extends it: a run that was taken for gone (a worker
// stalled longer than the lease) learns so here rather than at its next
// renewal, and writes nothing. A nil l (an operation without a lease)
// always passes.
func fence(ctx context.Context, l *store.Lease) error {
	if l == nil {
		return nil
	}
	held, err := l.Renew(ctx)
	if err != nil {
		return err
	}
	if !held {
		return errSuperseded
	}
	return nil
}

// keepRenewed calls renew every every until stop, and cancels the context
// it returns, with errSuperseded as its cause, once renew reports the
// claim lost. A renewal that fails (Redis unreachable) is tried again at
// the next tick.
func (h *Handlers) keepRenewed(ctx context.Context, every time.Duration, renew func(context.Context) (bool, error), what string) (context.Context, func()) {
	wctx, cancel := context.WithCancelCause(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-tick.C:
			}
			rctx, rcancel := context.WithTimeout(wctx, every)
			held, err := renew(rctx)
			rcancel()
			switch {
			case err != nil && wctx.Err() == nil:
				h.log.Warn("renew", "what", what, "err", err)
			case !held:
				h.log.Warn("lost; stopping this run", "what", what)
				cancel(errSuperseded)
				return
			}
		}
	}()
	return wctx, func() {
		cancel(nil)
		<-done
	}
}

// superseded reports whether ctx ended because another run took over.
func superseded(ctx context.Context) bool {
	return errors.Is(context.Cause(ctx), errSuperseded)
}

// RestartOnce is one pass of the sweep for operations whose worker is
// gone: each run-out provision, archive or cleanup lease is claimed (one
// sweep acts on it) and its operation restarted in a new round
// (scheduler.RestartProvision, RestartArchive, RestartCleanup). It
// returns the sessions it restarted an operation of. A lease of a round
// the session has left — parked, submitted, restarted already, ended —
// is only dropped.
//
// It also restarts a provision the queue handed to a worker that never
// took the session's lease (restartUnleased).
func (h *Handlers) RestartOnce(ctx context.Context) ([]string, error) {
	var restarted []string
	var errs []error
	for _, op := range []string{scheduler.LeaseProvision, scheduler.LeaseArchive, scheduler.LeaseCleanup} {
		ids, err := h.restartOp(ctx, op)
		restarted = append(restarted, ids...)
		errs = append(errs, err)
	}
	ids, err := h.restartUnleased(ctx)
	restarted = append(restarted, ids...)
	errs = append(errs, err)
	return restarted, errors.Join(errs...)
}

// unleasedRun names one provision task: its session and round.
type unleasedRun struct {
	id    string
	round int
}

// restartUnleased restarts, in a new round, each provision the queue has
// handed to a worker (Options.ActiveProvisions) whose session is still in
// that round, provisioning, with no lease, UnleasedGrace after this sweep
// first saw it so. Such a worker died after the queue gave it the task
// and before it took the lease: with no lease to run out, the lease sweep
// cannot see it, and the queue gives the task up only after its own
// lease and a recoverer pass, over a minute. A live worker that is merely
// slow to take the lease loses nothing: the restart's round fences its
// writes (scheduler.RestartProvision, store.TakeLease), and the session's
// record decides which round acts, as for any restart.
func (h *Handlers) restartUnleased(ctx context.Context) ([]string, error) {
	if h.o.ActiveProvisions == nil {
		return nil, nil
	}
	active, err := h.o.ActiveProvisions(ctx)
	if err == nil {
		var leased []string
		if leased, err = h.o.Store.Leased(ctx, scheduler.LeaseProvision); err == nil {
			return h.restartUnleasedOf(ctx, active, leased)
		}
	}
	// A pass that could not look (Redis unreachable) starts every grace
	// again: the workers that were about to take their leases were held
	// up by the same outage.
	h.unleasedMu.Lock()
	clear(h.unleased)
	h.unleasedMu.Unlock()
	return nil, err
}

// restartUnleasedOf is restartUnleased's pass over the active provisions
// and the sessions holding a provision lease, as listed.
func (h *Handlers) restartUnleasedOf(ctx context.Context, active []scheduler.SessionPayload, leased []string) ([]string, error) {
	held := make(map[string]bool, len(leased))
	for _, id := range leased {
		held[id] = true
	}
	now := h.o.Now()
	var due []unleasedRun
	h.unleasedMu.Lock()
	seen := make(map[unleasedRun]bool, len(active))
	for _, p := range active {
		run := unleasedRun{p.SessionID, p.Round}
		if held[p.SessionID] {
			continue
		}
		seen[run] = true
		first, ok := h.unleased[run]
		switch {
		case !ok:
			h.unleased[run] = now
		case first.IsZero():
			// Of a round the session has left: nothing to restart.
		case now.Sub(first) >= h.o.UnleasedGrace:
			due = append(due, run)
		}
	}
	// Forget what is no longer active and unleased: leased, done, or given
	// up by the queue.
	for run := range h.unleased {
		if !seen[run] {
			delete(h.unleased, run)
		}
	}
	h.unleasedMu.Unlock()

	var restarted []string
	var errs []error
	for _, run := range due {
		did, err := h.restartUnleasedRun(ctx, run)
		if err != nil {
			errs = append(errs, err)
		}
		if did {
			restarted = append(restarted, run.id)
			h.log.Warn("the worker given a provision stopped before it began; provision restarted", "session", run.id, "from_round", run.round)
		}
	}
	return restarted, errors.Join(errs...)
}

// restartUnleasedRun restarts run's provision if its session is still
// provisioning in run's round. A task of a round the session has left —
// restarted already, parked, ready, ended — is only marked so, and not
// looked at again while the queue keeps it active: when the queue runs
// it again it finds nothing to do.
func (h *Handlers) restartUnleasedRun(ctx context.Context, run unleasedRun) (bool, error) {
	settle := func() {
		h.unleasedMu.Lock()
		h.unleased[run] = time.Time{}
		h.unleasedMu.Unlock()
	}
	// Read first: a restart writes the record, which a left round's
	// task must not cause every pass.
	sess, err := h.o.Store.Get(ctx, run.id)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrBadID) {
		// Not a session of this deployment: its handler fails it.
		settle()
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if sess.Status != session.StateProvisioning || sess.ProvisionRound() != run.round {
		settle()
		return false, nil
	}
	did, err := scheduler.RestartUnleasedProvision(ctx, h.o.Store, h.o.Enqueuer, run.id, run.round)
	if err == nil && did {
		settle()
	}
	return did, err
}

// restartOp is RestartOnce for the leases of op.
func (h *Handlers) restartOp(ctx context.Context, op string) ([]string, error) {
	leases, err := h.o.Store.ExpiredLeases(ctx, op, 100)
	if err != nil {
		return nil, err
	}
	var restarted []string
	var errs []error
	for _, e := range leases {
		claim, ok, err := h.o.Store.ClaimLease(ctx, e, scheduler.LeaseClaim)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !ok {
			continue // another sweep has it, or its holder came back
		}
		did, err := h.restart(ctx, e)
		if err != nil {
			// The claim runs out and a later pass tries again; the
			// admission sweep enqueues a recorded round's provision, the
			// expiry sweep a recorded round's archive or cleanup.
			errs = append(errs, err)
			if !did {
				continue
			}
		}
		if did {
			restarted = append(restarted, e.ID)
			h.log.Warn("the worker running an operation stopped; operation restarted", "op", op, "session", e.ID, "from_round", e.Round)
		}
		if err := claim.Release(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	return restarted, errors.Join(errs...)
}

// restart starts the operation of the run-out lease e again, whose claim
// the caller holds.
func (h *Handlers) restart(ctx context.Context, e store.ExpiredLease) (bool, error) {
	switch e.Op {
	case scheduler.LeaseArchive:
		// The dead run's snapshot lock would keep the next round out for
		// snapshotLockTTL: it is freed now, as its holder is gone.
		if freed, err := h.o.Store.FreeLockOf(ctx, snapshotLock, e); err != nil {
			return false, err
		} else if freed {
			h.log.Info("freed the snapshot lock of a stopped archive", "session", e.ID)
		}
		return scheduler.RestartArchive(ctx, h.o.Store, h.o.Enqueuer, e.ID, e.Round)
	case scheduler.LeaseCleanup:
		return scheduler.RestartCleanup(ctx, h.o.Store, h.o.Enqueuer, e.ID, e.Round)
	default:
		return scheduler.RestartProvision(ctx, h.o.Store, h.o.Enqueuer, e.ID, e.Round, scheduler.RestartLeaseRanOut)
	}
}

// RunRestarts runs RestartOnce now and every every until ctx ends: every
// worker process does, so that a provision, archive or cleanup left by a
// dead worker is restarted within seconds of any worker running.
func (h *Handlers) RunRestarts(ctx context.Context, every time.Duration) {
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, time.Minute)
		if _, err := h.RestartOnce(pctx); err != nil && ctx.Err() == nil {
			h.log.Warn("restart operations of stopped workers", "err", fmt.Errorf("sweep: %w", err))
		}
		cancel()
		t.Reset(every)
	}
}
